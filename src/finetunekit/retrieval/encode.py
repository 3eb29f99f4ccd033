"""Running the towers over many inputs: image features through the feature cache, text features
and embeddings in batches.

Example::

    feats = image_features(model.image, paths, preprocessing["image"], device)   # cached on disk
    emb = embed_texts(model, ["a dog on a beach"], max_length=64, device=device)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

FEATURES_VERSION = "retrieval-1"


def _bar(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    from ..engine.loop import _interactive

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=quiet or not _interactive())


def pixel_batches(paths: Sequence[Any], preprocessing: dict[str, Any], batch_size: int):
    """(indices, pixel_values) batches of ``paths`` (files or PIL images) under the evaluation
    transform of the image preprocessing; files are read in a background thread."""
    from ..data.pipeline import image_transform, open_image
    from ..run.features import background

    transform = image_transform(preprocessing, train=False)
    limit = preprocessing.get("max_image_pixels")

    def batches():
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            images = [item if hasattr(item, "convert") else open_image(str(item), limit) for item in chunk]
            yield start, torch.stack([transform(image.convert("RGB")) for image in images])

    return background(batches())


@torch.no_grad()
def run_image_tower(backbone: torch.nn.Module, paths: Sequence[Any], preprocessing: dict[str, Any], device: Any,
                    batch_size: int = 64, quiet: bool = False, desc: str = "image features") -> torch.Tensor:
    """Pooled image features (float32, in order) of every input; the backbone in eval mode."""
    was = backbone.training
    backbone.eval()
    out = torch.empty(len(paths), backbone.num_features)
    bar = _bar(len(paths), desc, quiet)
    try:
        for start, pixels in pixel_batches(paths, preprocessing, batch_size):
            out[start : start + len(pixels)] = backbone.forward_features({"pixel_values": pixels.to(device)}).float().cpu()
            bar.update(len(pixels))
    finally:
        bar.close()
        backbone.train(was)
    return out


def image_features(backbone: torch.nn.Module, paths: Sequence[str], preprocessing: dict[str, Any], device: Any,
                   cache_dir: str | None = None, quiet: bool = False, desc: str = "image features") -> tuple[torch.Tensor, bool]:
    """``(features, hit)``: the locked image tower's features of the files ``paths``, read from the
    feature cache when the same weights, preprocessing and image bytes were seen before."""
    from ..data.images import file_sha256
    from ..run.features import FeatureCache, cache_key, weights_digest

    h = hashlib.sha256(b"retrieval images\0")
    for path in paths:
        h.update(file_sha256(str(path)))
    key = cache_key({"version": FEATURES_VERSION, "backbone": backbone.describe(), "weights": weights_digest(backbone),
                     "preprocessing": preprocessing, "data": h.hexdigest()})
    cache = FeatureCache.default(cache_dir)
    return cache.load_or_compute(key, lambda: run_image_tower(backbone, paths, preprocessing, device, quiet=quiet, desc=desc),
                                 rows=len(paths))


def token_batch(encodings: dict[str, list[list[int]]], rows: Sequence[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A padded batch of the tokenised rows ``rows``."""
    from ..data.pipeline import TextCollator

    items = [{**{k: v[i] for k, v in encodings.items()}, "index": i} for i in rows]
    batch = TextCollator(pad_token_id)(items)
    batch.pop("index")
    return batch


@torch.no_grad()
def run_text_tower(backbone: torch.nn.Module, encodings: dict[str, list[list[int]]], device: Any, batch_size: int = 256,
                   quiet: bool = False, desc: str = "text features") -> torch.Tensor:
    """Pooled text features of every tokenised row, longest first (less padding), in row order."""
    was = backbone.training
    backbone.eval()
    n = len(encodings["input_ids"])
    order = sorted(range(n), key=lambda i: -len(encodings["input_ids"][i]))
    out = torch.empty(n, backbone.num_features)
    bar = _bar(n, desc, quiet)
    try:
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in token_batch(encodings, rows, backbone.pad_token_id).items()}
            out[torch.tensor(rows)] = backbone.forward_features(batch).float().cpu()
            bar.update(len(rows))
    finally:
        bar.close()
        backbone.train(was)
    return out


def text_features(backbone: torch.nn.Module, encodings: dict[str, list[list[int]]], device: Any, cache_dir: str | None = None,
                  quiet: bool = False) -> tuple[torch.Tensor, bool]:
    """The locked text tower's features of tokenised rows, through the feature cache."""
    import json

    from ..run.features import FeatureCache, cache_key, weights_digest

    data = hashlib.sha256(json.dumps(encodings, separators=(",", ":")).encode()).hexdigest()
    key = cache_key({"version": FEATURES_VERSION, "backbone": backbone.describe(), "weights": weights_digest(backbone), "tokens": data})
    n = len(encodings["input_ids"])
    return FeatureCache.default(cache_dir).load_or_compute(key, lambda: run_text_tower(backbone, encodings, device, quiet=quiet), rows=n)


def text_layers(backbone: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer layers of a BERT-style text tower (``model.encoder.layer``), input side first."""
    from ..core.errors import RecipeError

    layers = getattr(getattr(getattr(backbone, "model", None), "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList) or not hasattr(backbone.model, "config"):
        raise RecipeError("strategy.unlocked_text_layers: needs a BERT-style Hugging Face text tower (model.encoder.layer), "
                          f"not {type(getattr(backbone, 'model', backbone)).__name__}")
    return layers


class TokenStates:
    """The token states of every caption at one depth of the text tower, packed without padding:
    row ``offsets[i]`` to ``offsets[i + 1]`` of ``states`` are caption i's tokens."""

    def __init__(self, states: torch.Tensor, lengths: Sequence[int]) -> None:
        self.states = states
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])

    def batch(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """``{"text_states": (B, T, H), "attention_mask": (B, T)}`` of ``rows``, right-padded with zeros."""
        lengths = self.lengths[list(rows)]
        width = int(lengths.max())
        states = self.states.new_zeros(len(rows), width, self.states.shape[1])
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for j, row in enumerate(rows):
            n = int(self.lengths[row])
            states[j, :n] = self.states[self.offsets[row] : self.offsets[row] + n]
            mask[j, :n] = 1
        return {"text_states": states, "attention_mask": mask}


@torch.no_grad()
def run_lower_text_layers(backbone: torch.nn.Module, encodings: dict[str, list[list[int]]], depth: int, device: Any,
                          batch_size: int = 256, quiet: bool = False) -> torch.Tensor:
    """The packed token states (float32, caption after caption, padding left out) after the token
    embeddings and the first ``depth`` layers of the text tower, in eval mode."""
    was = backbone.training
    backbone.eval()
    n = len(encodings["input_ids"])
    parts: list[torch.Tensor] = []
    bar = _bar(n, f"text token states (layer {depth})", quiet)
    encoder = backbone.model.encoder
    layers = encoder.layer
    encoder.layer = layers[:depth]  # the layers above are not run (their output is not needed)
    try:
        for start in range(0, n, batch_size):
            rows = list(range(start, min(n, start + batch_size)))
            batch = {k: v.to(device) for k, v in token_batch(encodings, rows, backbone.pad_token_id).items()}
            hidden = backbone.model(**batch, output_hidden_states=True).hidden_states[depth]
            parts.append(hidden[batch["attention_mask"].bool()].float().cpu())
            bar.update(len(rows))
    finally:
        encoder.layer = layers
        bar.close()
        backbone.train(was)
    return torch.cat(parts)


def lower_text_states(backbone: torch.nn.Module, encodings: dict[str, list[list[int]]], depth: int, device: Any,
                      cache_dir: str | None = None, quiet: bool = False) -> tuple[TokenStates, bool]:
    """The locked lower part of the text tower (embeddings and ``depth`` layers) run once over
    every caption, through the feature cache (keyed by the tower's weights, the tokens and the depth)."""
    import json

    from ..run.features import FeatureCache, cache_key, weights_digest

    lengths = [len(ids) for ids in encodings["input_ids"]]
    data = hashlib.sha256(json.dumps(encodings, separators=(",", ":")).encode()).hexdigest()
    key = cache_key({"version": FEATURES_VERSION, "kind": "token states", "backbone": backbone.describe(),
                     "weights": weights_digest(backbone), "tokens": data, "depth": depth})
    states, hit = FeatureCache.default(cache_dir).load_or_compute(
        key, lambda: run_lower_text_layers(backbone, encodings, depth, device, quiet=quiet), rows=sum(lengths))
    return TokenStates(states, lengths), hit
