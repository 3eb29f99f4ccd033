"""Why the model predicted what it did: Grad-CAM for images, integrated gradients for texts and
for the time-frequency patches of audio clips.

What is explained is one raw output of the model per input, chosen by the task
(``Task.explain_targets``): the predicted class (classification), the most probable label
(multi-label), the first target's value (regression), the first task's choice (several tasks).

* Images (convolutional backbones): Grad-CAM (Selvaraju et al. 2017) on the last feature map, the
  output of the backbone's last module that still has a spatial grid: the feature maps weighted
  by the mean gradient of the explained output, summed over channels, ReLU. Drawn as a heat map over
  the image as the model saw it (resized and centre-cropped). A backbone without feature maps
  (a vision transformer's tokens) gets no Grad-CAM, and the explanation says so.
* Texts: integrated gradients (Sundararajan et al. 2017) of the class's logit over the token
  embeddings, from a baseline where every token but the special ones ([CLS], [SEP]) is padding;
  one attribution per token, summed over the embedding dimensions, written as highlighted HTML
  (green pushes towards the class, red away from it).
* Audio clips (log-mel backbones: Whisper): integrated gradients of the class's logit over the
  log-mel features, from a baseline where every frame is the clip's own silence floor (its lowest
  log-mel value: Whisper's features floor 8 decades under the clip's loudest), summed over patches
  of mel bands x frames (8 bands x 10 frames = 0.1 s by default), drawn over the spectrogram: red
  where a patch pushed the class up, blue where it pushed it down. Removing a patch (for the
  deletion test) sets it to that same floor.

All come from captum (its layer attributions hook the chosen layer; no copy of the model). The
gradients flow through the backbone even when its weights are frozen (a linear probe): only the
inputs of the hooked layer need gradients, not the weights.

Example::

    explainer = Explainer(finetunekit.load("runs/ants"))
    [e] = explainer.explain_paths(["val/ants/1.jpg"])
    e.overlay().save("ant-gradcam.png")
    finetunekit explain runs/sst2 "a gripping film" --output explanations/
"""

from __future__ import annotations

import base64
import html as html_lib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import FinetuneError

MEL_METHOD = "mel-integrated-gradients"  # audio: integrated gradients over time-frequency patches of the log-mel features


def _captum():
    try:
        import captum.attr
    except ImportError:
        raise FinetuneError("explanations need captum (a finetunekit dependency): pip install captum") from None
    return captum.attr


def explanation_method(predictor) -> dict[str, Any]:
    """Which method explains this run's predictions, or why none does: the modality's choice
    (``Modality.explanation``; the methods are this module's)."""
    return predictor.kind.explanation(predictor.model.backbone)


@dataclass
class Explanation:
    method: str | None
    target: str  # the output explained: the predicted class unless asked otherwise (Task.output_names)
    tokens: list[str] | None = None  # texts: the model's tokens, special ones included
    attributions: list[float] | None = None  # texts: one per token, scaled so the largest |a| is 1
    grid: np.ndarray | None = None  # images: Grad-CAM at the feature map's resolution, in [0, 1]
    image: Any = None  # images: the input as the model saw it (PIL, resized and cropped)
    reason: str | None = None  # why there is no explanation
    spectrogram: np.ndarray | None = None  # audio: the log-mel features the model saw (n_mels, frames)
    patches: np.ndarray | None = None  # audio: one attribution per patch (bands, steps), scaled so the largest |a| is 1
    patch: tuple[int, int] = (1, 1)  # audio: a patch's mel bins and frames
    frame_seconds: float = 0.01  # audio: seconds per frame

    @property
    def has_picture(self) -> bool:
        """Whether the explanation is drawn (a Grad-CAM overlay, attributions over a spectrogram)."""
        return self.grid is not None or self.spectrogram is not None

    @property
    def thumbnail_size(self) -> int | None:
        """The report's thumbnail: a Grad-CAM overlay shrunk to 192 px, a spectrogram kept (its axes stay readable)."""
        return 192 if self.grid is not None else None

    @property
    def picture_suffix(self) -> str:
        return ".gradcam.png" if self.grid is not None else ".attribution.png"

    def heatmap(self) -> np.ndarray:
        """Grad-CAM upsampled to the model's view of the image, in [0, 1]."""
        from PIL import Image

        grid = Image.fromarray(np.asarray(self.grid, dtype=np.float32), mode="F")
        return np.asarray(grid.resize(self.image.size, Image.BILINEAR), dtype=np.float32).clip(0, 1)

    def overlay(self, alpha: float = 0.5):
        """The heat map blended over the image (PIL RGB): hot where the class's evidence is; for
        audio, the patches' attributions drawn over the spectrogram (:meth:`overlay_png`)."""
        from matplotlib import colormaps
        from PIL import Image

        if self.spectrogram is not None:
            return Image.open(io.BytesIO(self.overlay_png())).convert("RGB")

        colours = colormaps["jet"](self.heatmap())[..., :3]
        base = np.asarray(self.image.convert("RGB"), dtype=np.float32) / 255.0
        mixed = (1 - alpha) * base + alpha * colours
        return Image.fromarray((mixed * 255).round().astype(np.uint8))

    def overlay_png(self) -> bytes:
        if self.spectrogram is not None:
            from ..data.audio import spectrogram_png

            return spectrogram_png(self.spectrogram, self.frame_seconds, self.patches, self.patch, f"explained: {self.target}")
        buffer = io.BytesIO()
        self.overlay().save(buffer, format="PNG")
        return buffer.getvalue()

    def words(self) -> list[tuple[str, float]]:
        """(word, attribution) with word pieces joined back into words and special tokens left out;
        a word's attribution is the sum of its pieces'."""
        words: list[tuple[str, float]] = []
        for token, score in zip(self.tokens or [], self.attributions or [], strict=True):
            if token.startswith("[") and token.endswith("]") or token in ("<s>", "</s>", "<pad>"):
                continue
            if token.startswith("##") and words:
                words[-1] = (words[-1][0] + token[2:], words[-1][1] + score)
            else:
                words.append((token.lstrip("Ġ▁"), score))
        return words

    def html(self) -> str:
        """Texts: the words as spans, green for evidence for the class, red against it."""
        if self.tokens is None:
            return f'<p class="note">{html_lib.escape(self.reason or "no explanation")}</p>'
        spans = []
        for word, score in self.words():
            colour = "22,163,74" if score >= 0 else "220,38,38"
            alpha = min(1.0, abs(score)) * 0.75
            spans.append(f'<span class="attr" title="{score:+.3f}" style="background:rgba({colour},{alpha:.3f})">'
                         f"{html_lib.escape(word)}</span>")
        return " ".join(spans)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "target": self.target}
        if self.reason:
            out["reason"] = self.reason
        if self.tokens is not None:
            out["tokens"] = self.tokens
            out["attributions"] = [round(float(a), 4) for a in self.attributions or []]
        if self.patches is not None:
            out["patch"] = {"mel_bins": self.patch[0], "frames": self.patch[1], "seconds": round(self.patch[1] * self.frame_seconds, 4)}
            out["patches"] = np.round(np.asarray(self.patches, dtype=np.float64), 4).tolist()  # [band][time step]
        if self.grid is not None:
            out["grid"] = np.round(np.asarray(self.grid, dtype=np.float64), 4).tolist()
        if self.has_picture:
            out["overlay"] = "data:image/png;base64," + base64.b64encode(self.overlay_png()).decode("ascii")
        return out


class Explainer:
    """Explanations for a loaded :class:`finetunekit.use.predict.Predictor`, in full precision."""

    def __init__(self, predictor, ig_steps: int = 32) -> None:
        self.predictor = predictor
        self.model = predictor.model
        self.ig_steps = ig_steps
        self.method = explanation_method(predictor)
        self._layer: torch.nn.Module | None = None

    # -- public --------------------------------------------------------------------------------

    def explain_items(self, items: Sequence[Any], targets: Sequence[int] | None = None) -> list[Explanation]:
        """Explain in-memory inputs (texts or PIL images); ``targets`` are indices of the model's
        outputs (``Task.output_names``; for classification the class indices), by default the
        task's choice for each input (``Task.explain_targets``: the predicted class...)."""
        if len(items) == 0:
            return []
        task, names = self.predictor.task, self.predictor.task.output_names()
        if self.method["method"] is None:
            chosen = targets if targets is not None else task.explain_targets(self.predictor.predict_items(items))
            return [Explanation(None, names[int(t)], reason=self.method["reason"]) for t in chosen]
        batch = self.predictor.encode(items)
        if targets is None:
            targets = task.explain_targets(self.predictor.forward_proba(batch))
        targets = [int(t) for t in targets]
        if self.method["method"] == "integrated-gradients":
            return self._explain_texts(batch, targets, names)
        if self.method["method"] == MEL_METHOD:
            return self._explain_audio(batch, targets, names)
        return self._explain_images(items, batch, targets, names)

    def explain_paths(self, inputs: Sequence[str], targets: Sequence[int] | None = None) -> list[Explanation]:
        """Explain image paths or texts, as ``finetunekit predict`` takes them."""
        return self.explain_items([self.predictor.kind.load_item(p) for p in inputs], targets)

    def attributions(self, batch: dict[str, torch.Tensor], targets: Sequence[int]) -> torch.Tensor:
        """Raw attributions of an encoded batch: (B, T) per token, (B, h, w) Grad-CAM maps, or
        (B, bands, steps) per time-frequency patch of a clip."""
        if self.method["method"] == "integrated-gradients":
            return self._token_attributions(batch, targets)
        if self.method["method"] == MEL_METHOD:
            return self.patch_sums(self._mel_attributions(batch, targets))
        return self._gradcam(batch, targets)

    # -- images ----------------------------------------------------------------------------------

    def feature_layer(self) -> torch.nn.Module:
        """The backbone's last module whose output is a feature map (B, C, h, w) with h, w > 1."""
        if self._layer is None:
            size = int(self.predictor.preprocessing["input_size"])
            outputs: list[tuple[torch.nn.Module, tuple[int, ...]]] = []
            hooks = [m.register_forward_hook(lambda mod, _, out: outputs.append((mod, tuple(out.shape)))
                                             if isinstance(out, torch.Tensor) else None)
                     for m in self.model.backbone.modules() if m is not self.model.backbone]
            try:
                with torch.inference_mode():  # the path the head reads: pooled features, or feature maps (dense tasks)
                    self.model.features({"pixel_values": torch.zeros(1, 3, size, size, device=self.predictor.device)})
            finally:
                for hook in hooks:
                    hook.remove()
            maps = [m for m, shape in outputs if len(shape) == 4 and shape[2] > 1 and shape[3] > 1]
            if not maps:
                raise FinetuneError("Grad-CAM: the backbone has no feature maps")
            self._layer = maps[-1]
        return self._layer

    def _gradcam(self, batch: dict[str, torch.Tensor], targets: Sequence[int]) -> torch.Tensor:
        attr = _captum()
        pixels = batch["pixel_values"].to(self.predictor.device).float().requires_grad_(True)
        cam = attr.LayerGradCam(lambda x: _per_output(self.model({"pixel_values": x}).float()), self.feature_layer())
        self.model.eval()
        with torch.enable_grad(), torch.autocast(self.predictor.device.type, enabled=False):
            maps = cam.attribute(pixels, target=torch.tensor(list(targets), device=pixels.device), relu_attributions=True)
        maps = maps.detach().float()[:, 0]
        peak = maps.flatten(1).max(1).values.clamp(min=1e-12)[:, None, None]
        return (maps / peak).cpu()

    def _explain_images(self, images: Sequence[Any], batch: dict[str, torch.Tensor], targets: list[int], names: list[str]) -> list[Explanation]:
        from ..data.pipeline import _deterministic_prefix, image_transform

        view, _ = _deterministic_prefix(image_transform(self.predictor.preprocessing, train=False))
        if self.predictor.task.transform(self.predictor.preprocessing, False, "none") is not None:
            view = None  # a dense task's input is the whole image, resized: the map spans the image as it is
        maps = self._gradcam(batch, targets).numpy()
        return [Explanation("grad-cam", names[t], grid=m, image=view(img) if view else img)
                for img, m, t in zip(images, maps, targets, strict=True)]

    # -- texts -----------------------------------------------------------------------------------

    def special_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """True where a token is special ([CLS], [SEP], padding): kept in the baseline, never removed."""
        tokenizer = self.model.backbone.tokenizer
        special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype, device=input_ids.device)
        return torch.isin(input_ids, special)

    def _token_attributions(self, batch: dict[str, torch.Tensor], targets: Sequence[int]) -> torch.Tensor:
        attr = _captum()
        batch = {k: v.to(self.predictor.device) for k, v in batch.items()}
        input_ids = batch["input_ids"]
        baseline = torch.where(self.special_mask(input_ids), input_ids, torch.full_like(input_ids, self.model.backbone.pad_token_id))
        others = {k: v for k, v in batch.items() if k != "input_ids"}
        names = sorted(others)

        def forward(ids: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
            return self.model({"input_ids": ids, **dict(zip(names, extra, strict=True))}).float()

        ig = attr.LayerIntegratedGradients(forward, self.model.backbone.model.get_input_embeddings())
        self.model.eval()
        with torch.enable_grad(), torch.autocast(self.predictor.device.type, enabled=False):
            scores = ig.attribute(
                input_ids, baselines=baseline, additional_forward_args=tuple(others[n] for n in names),
                target=torch.tensor(list(targets), device=input_ids.device), n_steps=self.ig_steps,
                internal_batch_size=max(len(input_ids) * 8, 32),
            )
        scores = scores.detach().float().sum(-1) * batch["attention_mask"].float()
        return scores.cpu()

    def _explain_texts(self, batch: dict[str, torch.Tensor], targets: list[int], names: list[str]) -> list[Explanation]:
        scores = self._token_attributions(batch, targets)
        tokenizer = self.model.backbone.tokenizer
        out = []
        for ids, mask, row, target in zip(batch["input_ids"], batch["attention_mask"], scores, targets, strict=True):
            n = int(mask.sum())
            row = row[:n]
            row = row / row.abs().max().clamp(min=1e-12)
            out.append(Explanation("integrated-gradients", names[target],
                                   tokens=tokenizer.convert_ids_to_tokens(ids[:n].tolist()), attributions=row.tolist()))
        return out

    # -- audio -----------------------------------------------------------------------------------

    @property
    def patch(self) -> tuple[int, int]:
        """(mel bins, frames) of one time-frequency patch (the modality's choice)."""
        bins, frames = self.method.get("patch", (8, 10))
        return int(bins), int(frames)

    def _mel_attributions(self, batch: dict[str, torch.Tensor], targets: Sequence[int]) -> torch.Tensor:
        """Integrated gradients over ``input_features`` (B, n_mels, T), zero past each clip's frames."""
        attr = _captum()
        batch = {k: v.to(self.predictor.device) for k, v in batch.items()}
        features = batch["input_features"].float()
        mask = batch.get("frame_mask")
        others = {k: v for k, v in batch.items() if k != "input_features"}
        names = sorted(others)

        def forward(x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
            return self.model({"input_features": x, **dict(zip(names, extra, strict=True))}).float()

        ig = attr.IntegratedGradients(forward)
        self.model.eval()
        with torch.enable_grad(), torch.autocast(self.predictor.device.type, enabled=False):
            scores = ig.attribute(
                features, baselines=silence_floor(features, mask), additional_forward_args=tuple(others[n] for n in names),
                target=torch.tensor(list(targets), device=features.device), n_steps=self.ig_steps,
                internal_batch_size=max(len(features) * 8, 32),
            )
        scores = scores.detach().float()
        if mask is not None:
            scores = scores * mask[:, None, :].to(scores.dtype)
        return scores.cpu()

    def patch_sums(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-frame attributions (B, n_mels, T) summed over patches -> (B, bands, steps); the last
        band and step may be partial."""
        bins, frames = self.patch
        b, n, t = scores.shape
        padded = torch.nn.functional.pad(scores, (0, (-t) % frames, 0, (-n) % bins))
        return padded.reshape(b, padded.shape[1] // bins, bins, padded.shape[2] // frames, frames).sum((2, 4))

    def remove_patches(self, batch: dict[str, torch.Tensor], removed: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """A copy of ``batch`` with, per clip, the patches numbered in ``removed`` (row-major over
        (bands, steps)) set to the clip's silence floor: the deletion test's removal."""
        bins, frames = self.patch
        features = batch["input_features"].clone()
        floor = silence_floor(features, batch.get("frame_mask"))
        steps = -(-features.shape[2] // frames)
        for i, cells in enumerate(removed):
            for cell in cells:
                band, step = divmod(int(cell), steps)
                region = (i, slice(band * bins, (band + 1) * bins), slice(step * frames, (step + 1) * frames))
                features[region] = floor[region]
        return {**batch, "input_features": features}

    def _explain_audio(self, batch: dict[str, torch.Tensor], targets: list[int], names: list[str]) -> list[Explanation]:
        patches = self.patch_sums(self._mel_attributions(batch, targets))
        mask = batch.get("frame_mask")
        pre = self.predictor.preprocessing
        frame_seconds = float(pre.get("hop_length", 160)) / float(pre.get("sampling_rate", 16_000))
        out = []
        for i, target in enumerate(targets):
            frames = int(mask[i].sum()) if mask is not None else batch["input_features"].shape[2]
            steps = -(-frames // self.patch[1])
            row = patches[i, :, :steps]
            row = row / row.abs().max().clamp(min=1e-12)
            out.append(Explanation(MEL_METHOD, names[target], spectrogram=batch["input_features"][i, :, :frames].float().numpy(),
                                   patches=row.numpy(), patch=self.patch, frame_seconds=frame_seconds))
        return out


def silence_floor(features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Each clip's lowest log-mel value over its own frames, everywhere: the integrated-gradients
    baseline and what a removed patch becomes (Whisper floors its features 8 decades under the
    clip's loudest, so this is the clip's own silence)."""
    if mask is None:
        low = features.flatten(1).min(1).values
    else:
        valid = mask[:, None, :].to(torch.bool).expand_as(features)
        low = features.masked_fill(~valid, float("inf")).flatten(1).min(1).values
    return low[:, None, None].expand_as(features).clone()


def _per_output(outputs: torch.Tensor) -> torch.Tensor:
    """One number per output and example: a dense head's per-pixel logits (B, K, h, w) averaged
    over the pixels, so Grad-CAM explains a class over the whole image."""
    return outputs.flatten(2).mean(-1) if outputs.dim() > 2 else outputs


# -- the report's worst errors ---------------------------------------------------------------------



def error_explanations(run_dir: str | Path) -> dict[int, str]:
    """For the errors the run report shows: validation index -> a Grad-CAM overlay (a JPEG data
    URI) or the text as highlighted HTML, explaining the predicted (wrong) class. Never raises: a
    report without explanations is better than none (the reason goes to a warning)."""
    import warnings

    from ..modalities import modality_of
    from ..report import load_run
    from ..report.run_data import worst_errors

    try:
        run = load_run(run_dir)
        if not run.predictions or "confidence" not in run.predictions[0]:
            return {}  # explanations are of a predicted class (the report's other task views show no class errors)
        limit = modality_of(run.modality).explained_errors
        errors = worst_errors(run, limit)
        if not errors:
            return {}
        from .predict import load

        predictor = load(run_dir, precision="fp32")
        explainer = Explainer(predictor)
        if explainer.method["method"] is None:
            return {}
        rows = errors
        if predictor.kind.file_extensions:  # inputs that are files: only those still there
            rows = [r for r in errors if Path(r["input"]).is_file()]
        out: dict[int, str] = {}
        for start in range(0, len(rows), 8):
            chunk = rows[start : start + 8]
            inputs = [tuple(r["input"]) if isinstance(r["input"], list) else r["input"] for r in chunk]
            targets = [predictor.classes.index(r["predicted"]) for r in chunk]
            explained = explainer.explain_items([predictor.kind.load_item(p) for p in inputs], targets)
            for row, explanation in zip(chunk, explained, strict=True):
                out[int(row["index"])] = (_thumbnail_uri(explanation.overlay(), explanation.thumbnail_size) if explanation.has_picture
                                          else explanation.html())
        return out
    except Exception as exc:  # noqa: BLE001 - the report is still written, without explanations
        warnings.warn(f"{run_dir}: the report's errors are not explained ({type(exc).__name__}: {exc})", stacklevel=2)
        return {}


def _thumbnail_uri(image, size: int | None = 192) -> str:
    image = image.copy()
    if size:
        image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# -- files: finetunekit explain RUN_DIR INPUTS --output DIR ------------------------------------------


def write_explanations(run_dir: str | Path, inputs: Sequence[str], output: str | Path, batch_size: int = 8) -> Path:
    """Explain each input (image paths or texts) and write ``output/index.html`` (every input with
    its prediction and explanation), ``explanations.jsonl`` and, for images, one
    ``NNNN-<name>.gradcam.png`` overlay each. Returns the index page's path."""
    from ..run.artifacts import atomic_write_bytes, atomic_write_text
    from .predict import load

    predictor = load(run_dir)
    predictor.precision = "fp32"  # explanations are computed in fp32; the scores shown match them
    explainer = Explainer(predictor)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    predictor._examples(list(inputs))  # the predictor's own input checks (missing image, wrong modality)
    lines, blocks = [], []
    for start in range(0, len(inputs), batch_size):
        chunk = list(inputs[start : start + batch_size])
        items = [predictor.kind.load_item(p) for p in chunk]
        scores = predictor.predict_items(items)
        answers, shown = predictor.answers(scores), predictor.task.output_records(scores)
        for i, (item, answer, line, explanation) in enumerate(
            zip(chunk, answers, shown, explainer.explain_items(items, predictor.task.explain_targets(scores)), strict=True)
        ):
            record: dict[str, Any] = {"input": item, **answer, "explanation": explanation.to_json()}
            record["explanation"].pop("overlay", None)
            picture = ""
            if explanation.has_picture:
                name = f"{start + i:04d}-{Path(item).stem}{explanation.picture_suffix}"
                atomic_write_bytes(output / name, explanation.overlay_png())
                record["explanation"]["overlay_file"] = name
                what = "Grad-CAM" if explanation.grid is not None else "attributions"
                picture = f'<img src="{html_lib.escape(name)}" alt="{what} for {html_lib.escape(Path(item).name)}">'
            lines.append(_json_line(record))
            body = picture or explanation.html()
            if explanation.spectrogram is not None:  # a clip: playable beside its attributions
                from ..data.audio import audio_player

                body = audio_player(*items[i], title=Path(item).name) + "<br>" + body
            blocks.append(f'<div class="item"><div class="head"><b>{html_lib.escape(line["line"])}</b> '
                          f'&middot; explained: {html_lib.escape(explanation.target)} '
                          f'&middot; {html_lib.escape(Path(item).name if picture else "")}</div>'
                          f'<div class="body">{body}</div></div>')
    method = explainer.method.get("method") or "none"
    page = (f"<!doctype html><meta charset='utf-8'><title>explanations: {html_lib.escape(Path(run_dir).name)}</title>"
            f"<style>{EXPLAIN_CSS}</style><h1>{html_lib.escape(Path(run_dir).name)}: {html_lib.escape(method)}</h1>"
            f"<p class='note'>{html_lib.escape(LEGEND.get(method, ''))}</p>" + "".join(blocks))
    atomic_write_text(output / "explanations.jsonl", "".join(lines))
    atomic_write_text(output / "index.html", page)
    return output / "index.html"


LEGEND = {
    "grad-cam": "Grad-CAM of the explained output (the predicted class; for multi-label the most probable label, for "
                "regression the predicted value) over the image as the model saw it: red where its evidence is.",
    MEL_METHOD: "Integrated gradients of the explained output (the predicted class) over the clip's log-mel spectrogram, "
                "summed per patch of mel bands x frames: red patches pushed it up, blue ones down; stronger colour, larger "
                "share of the largest attribution. The baseline (and a removed patch) is the clip's own silence floor.",
    "integrated-gradients": "Integrated gradients of the explained output (the predicted class; for multi-label the most "
                            "probable label, for regression the predicted value) per word: green pushes it up, red down; "
                            "stronger colour, larger share of the largest attribution.",
}

EXPLAIN_CSS = (
    "body{font:15px/1.5 system-ui,sans-serif;margin:2em;color:#111}.note{color:#555}"
    ".item{margin:1em 0;padding:.6em;border:1px solid #ddd;border-radius:6px;max-width:60em}"
    ".item img{max-width:320px}.attr{padding:1px 2px;border-radius:3px}"
)


def _json_line(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record, ensure_ascii=False) + "\n"
