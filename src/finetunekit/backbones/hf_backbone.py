"""Text backbones from Hugging Face transformers (``AutoModel`` + ``AutoTokenizer``)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import FinetuneError
from .base import Backbone, weights_follow_now


def _load_quietly(fn, *args, **kwargs):
    import transformers

    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars would break one-line errors
    try:
        return fn(*args, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def load_hf_checkpoint(preprocessor_class, model_class, name_or_path: str, pretrained: bool, what: str,
                       load_model=None):
    """``(preprocessor, model)`` of a Hugging Face checkpoint (hub id or local folder): the model with its
    pretrained weights, or built from its config alone when ``pretrained`` is false; a checkpoint that
    cannot be read, or whose pickled weights hold more than tensors, is a one-line
    :class:`FinetuneError` naming ``what`` it was to be. ``load_model(fn, *args)`` calls the model's
    constructor (default: quietly)."""
    from transformers import AutoConfig

    load_model = load_model or _load_quietly
    try:
        preprocessor = _load_quietly(preprocessor_class.from_pretrained, name_or_path)
        if pretrained:
            model = load_model(model_class.from_pretrained, name_or_path)
        else:
            model = load_model(model_class.from_config, AutoConfig.from_pretrained(name_or_path))
    except pickle.UnpicklingError:
        # transformers loads .bin weights with torch.load(weights_only=True), which refuses a
        # pickle that asks for anything but tensors (code): report it, never run it.
        raise FinetuneError(
            f"could not load Hugging Face {what} {name_or_path!r}: refused its pickled weights, which hold objects "
            "other than tensors and could run code when loaded; use a model with safetensors weights"
        ) from None
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise FinetuneError(f"could not load Hugging Face {what} {name_or_path!r}: {first}") from None
    return preprocessor, model


class HFTextBackbone(Backbone):
    modality = "text"
    kind = "hf"
    saves_assets = True  # the tokenizer and the config: the run directory's backbone/

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: str, max_length: int = 512) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise FinetuneError(f"model.pooling: {pooling!r} is not 'cls' or 'mean'")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.num_features = int(model.config.hidden_size)
        self.max_positions = int(getattr(model.config, "max_position_embeddings", max_length))
        self.pretrained = True  # False: built from the config alone (model.pretrained: false)

    @classmethod
    def from_pretrained(cls, name_or_path: str, pooling: str, pretrained: bool = True) -> HFTextBackbone:
        from transformers import AutoModel, AutoTokenizer

        tokenizer, model = load_hf_checkpoint(AutoTokenizer, AutoModel, name_or_path, pretrained, "model", _load_model)
        backbone = cls(model, tokenizer, pooling)
        backbone.pretrained = pretrained
        return backbone

    def as_seq2seq(self) -> Backbone:
        """This BERT-architecture encoder in an encoder-decoder for tasks that write text: a decoder
        of its shape with new cross-attention, warm-started from its weights when they are
        pretrained (BERT2BERT; finetunekit.backbones.encdec). Other architectures: refused."""
        from .encdec import TextEncDecBackbone

        return TextEncDecBackbone.from_encoder(self.model, self.tokenizer, warm_decoder=self.pretrained)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.model(**inputs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        # Sum then divide in the hidden dtype; clamp guards all-padding rows.
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def layer_groups(self) -> list[list[str]]:
        return hf_layer_groups(self)

    def token_embedding_names(self) -> list[str]:
        table = self.model.get_input_embeddings()
        weight = getattr(table, "weight", None)
        return [n for n, p in self.named_parameters() if weight is not None and p is weight]

    def tokenize(self, texts: list[str] | list[tuple[str, str]], max_length: int) -> dict[str, list[list[int]]]:
        """Token ids of texts, or of sentence pairs ``(first, second)`` encoded the way the tokenizer
        encodes pairs: both texts with the separator between them, segment ids (``token_type_ids``)
        0 then 1 where the model has them, and the longer text truncated first."""
        max_length = min(max_length, self.max_positions)
        if texts and not isinstance(texts[0], str):
            first, second = [a for a, _ in texts], [b for _, b in texts]
            encoded = self.tokenizer(first, second, truncation="longest_first", max_length=max_length, padding=False)
        else:
            encoded = self.tokenizer(texts, truncation=True, max_length=max_length, padding=False)
        return {k: list(v) for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    def preprocessing(self) -> dict[str, Any]:
        return {"modality": "text", "pooling": self.pooling}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "pooling": self.pooling}

    def save_assets(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    @classmethod
    def from_description(cls, description: dict[str, Any], assets: Path) -> HFTextBackbone:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        config = AutoConfig.from_pretrained(assets)
        if weights_follow_now():  # the run's weights replace every parameter next: no random draws (a third of a second)
            from transformers.initialization import no_init_weights

            with no_init_weights():
                model = _load_model(AutoModel.from_config, config)
        else:
            model = _load_model(AutoModel.from_config, config)
        tokenizer = _load_quietly(AutoTokenizer.from_pretrained, assets)
        return cls(model, tokenizer, description["pooling"])


def _load_model(fn, *args):
    # The pooler of BERT-like models is unused (we pool ourselves); leaving it out keeps every
    # parameter trainable and the frozen/unfrozen bookkeeping exact.
    try:
        return _load_quietly(fn, *args, add_pooling_layer=False)
    except TypeError:
        return _load_quietly(fn, *args)


def hf_layer_groups(backbone: nn.Module) -> list[list[str]]:
    """Parameter names of a backbone wrapping a transformers model as ``backbone.model``, grouped
    embeddings first, then one group per block of its longest ``ModuleList``, then what follows."""
    names = [n for n, _ in backbone.named_parameters()]
    layers = _find_layer_list(backbone.model)
    if layers is None:
        return [names]
    prefix, count = layers
    groups: list[list[str]] = [[] for _ in range(count + 2)]  # embeddings, layers..., after
    for name in names:
        inner = name[len("model.") :]
        if inner.startswith(prefix + "."):
            index = int(inner[len(prefix) + 1 :].split(".", 1)[0])
            groups[index + 1].append(name)
        elif _after_layers(inner, prefix):
            groups[-1].append(name)
        else:
            groups[0].append(name)
    return [g for g in groups if g]


def _find_layer_list(model: nn.Module) -> tuple[str, int] | None:
    """The longest nn.ModuleList (the transformer blocks) and its qualified name."""
    best: tuple[str, int] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > best[1]):
            best = (name, len(module))
    return best


def _after_layers(name: str, prefix: str) -> bool:
    """Parameters that live after the blocks (final norms, poolers) rather than before them."""
    parent = prefix.rsplit(".", 1)[0] if "." in prefix else ""
    leaf = name.rsplit(".", 2)[0]
    return bool(parent) and name.startswith(parent + ".") and not name.startswith(prefix) and "embed" not in leaf
