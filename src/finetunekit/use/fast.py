"""``finetunekit predict`` without torch: the run's model as ONNX, run by onnxruntime.

Importing torch alone takes seconds, transformers' BERT modules or timm several more, while
onnxruntime imports in a fraction of a second. So a run directory can hold a fast-predict model,
``RUN_DIR/fast/``:

* ``model.onnx``: the run's model, inputs as a batch holds them, output the task's scores
  (class probabilities; values in target units for regression);
* ``tokenizer.json`` (text runs): the run's tokenizer, for the ``tokenizers`` library;
* ``fast.json``: what preprocessing needs (the text length, or the image size, crop, interpolation
  and normalisation), the task (classes, thresholds or targets), which run it is for (the SHA-256
  of the weights, the finetunekit version) and the parity check it passed when it was written.

It is written by :func:`finetunekit.use.export.write_fast_model` (at the end of ``finetunekit
train``, by the first ``predict`` otherwise) only after it gave the torch path's answers on the
run's validation inputs. This module reads and runs it, importing numpy, PIL, onnxruntime and
``tokenizers`` only: never torch, transformers or timm.

Example::

    model = FastModel.open(Path("runs/ants"))     # None: no valid fast model (predict uses torch)
    model.records(["val/ants/1.jpg"])             # as Predictor.records
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core.answers import FORMS, task_records
from ..core.errors import DataError
from ..version import __version__

FOLDER = "fast"
FORMAT = 2
def input_form(modality: str) -> str | None:
    """How the fast path prepares a modality's inputs (``Modality.fast_input``): "pixels",
    "tokens", or None for a modality it does not cover (or one not registered here)."""
    from ..modalities import MODALITIES, modality_of

    return modality_of(modality).fast_input if modality in MODALITIES.names() else None
PRECISIONS = ("fp32",)  # the runs whose torch answers fp32 ONNX reproduces (bf16/fp16 ones differ by their rounding)
# PIL's resampling filters by torchvision's interpolation names (torchvision.transforms.functional.pil_modes_mapping)
PIL_FILTERS = {"nearest": 0, "nearest-exact": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def installed() -> bool:
    """Whether onnxruntime and tokenizers can be imported (without importing them)."""
    from importlib.util import find_spec

    return find_spec("onnxruntime") is not None and find_spec("tokenizers") is not None


def why_not(info: dict[str, Any], task: dict[str, Any], preprocessing: dict[str, Any], answer_form: str | None) -> str | None:
    """Why a run (its finetunekit.json, task state and preprocessing.json) gets no fast model,
    or None when it can have one."""
    from importlib.util import find_spec

    if not installed() or find_spec("onnx") is None:  # onnx: torch's ONNX exporter writes with it
        return "onnx, onnxruntime or tokenizers is not installed (pip install onnx onnxruntime tokenizers)"
    modality = info.get("modality", "image")
    form = input_form(modality)
    if form is None:
        return f"{modality} runs are predicted with torch"
    if answer_form not in FORMS:  # the task's declared Task.answer_form
        return f"{task.get('type')} runs are predicted with torch"
    if info.get("precision", "fp32") not in PRECISIONS:
        return f"the run validated in {info.get('precision')}, which the fp32 ONNX model would not reproduce to 1e-4"
    if form == "pixels" and preprocessing.get("input_size") is None:
        return "no image input size in preprocessing.json"
    return None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def status(run_dir: Path) -> tuple[dict[str, Any] | None, str, bool]:
    """``(spec, reason, stale)``: the fast model's description (its fast.json) when ``run_dir``
    holds a usable one, else None and why; ``stale``: no fast model was tried for these weights
    with this finetunekit version (writing one is worth a try)."""
    folder = Path(run_dir) / FOLDER
    spec = _read(folder / "fast.json")
    if not installed():
        return None, "onnxruntime or tokenizers is not installed", False
    if spec is None:
        return None, f"no fast-predict model ({folder / 'fast.json'})", True
    info = _read(Path(run_dir) / "finetunekit.json") or {}
    if spec.get("format") != FORMAT or spec.get("finetunekit") != __version__:
        return None, f"the fast-predict model was written by finetunekit {spec.get('finetunekit')}, this is {__version__}", True
    if not info.get("weights_sha256") or spec.get("weights_sha256") != info.get("weights_sha256"):
        return None, "the fast-predict model was made from other weights than the run's", True
    if spec.get("unusable"):  # tried for these weights, and it did not answer as torch does
        return None, f"no fast-predict model: {spec['unusable']}", False
    model = folder / "model.onnx"
    if not model.is_file() or model.stat().st_size != spec.get("onnx_bytes"):
        return None, f"{model} is missing or not the one fast.json describes", True
    return spec, "ok", False


class FastModel:
    """A run's fast-predict model: :meth:`records` answers as ``Predictor.records`` does."""

    def __init__(self, folder: Path, spec: dict[str, Any]) -> None:
        """``folder``: the fast model's files (``RUN_DIR/fast``); ``spec``: its fast.json."""
        import onnxruntime

        self.spec = spec
        self.modality: str = spec["modality"]
        self.form = input_form(self.modality)  # "pixels" or "tokens"
        self.task: dict[str, Any] = spec["task"]
        self.answer_form: str = spec["answer_form"]
        self.inputs: list[str] = list(spec["inputs"])
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.tokenizer = None
        if self.form == "tokens":
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            self.tokenizer.no_padding()
            self.tokenizer.enable_truncation(int(spec["text"]["max_length"]), strategy="longest_first")

    @classmethod
    def open(cls, run_dir: str | Path) -> FastModel | None:
        """The run's fast model, or None when it has no valid one."""
        spec = status(Path(run_dir))[0]
        return None if spec is None else cls(Path(run_dir) / FOLDER, spec)

    @property
    def pairs(self) -> bool:
        return bool(self.form == "tokens" and self.spec["text"].get("text_columns"))

    # -- preprocessing ------------------------------------------------------------------------------

    def encode_texts(self, texts: list[Any]) -> list[Any]:
        """The run's tokenizer on texts or ``(first, second)`` pairs: truncated to its length (the
        longer text of a pair first), special tokens added, no padding."""
        assert self.tokenizer is not None
        if texts and not isinstance(texts[0], str):
            return self.tokenizer.encode_batch([(a, b) for a, b in texts])
        return self.tokenizer.encode_batch(list(texts))

    def text_batch(self, encodings: list[Any]) -> dict[str, np.ndarray]:
        """The model's inputs for encoded texts, padded to the longest row (as TextCollator pads)."""
        width = max(len(e.ids) for e in encodings)
        pad = int(self.spec["text"]["pad_token_id"])
        columns = {"input_ids": ("ids", pad), "attention_mask": ("attention_mask", 0), "token_type_ids": ("type_ids", 0)}
        batch = {}
        for name in self.inputs:
            field, fill = columns[name]
            rows = np.full((len(encodings), width), fill, dtype=np.int64)
            for i, e in enumerate(encodings):
                values = getattr(e, field)
                rows[i, : len(values)] = values
            batch[name] = rows
        return batch

    def image_array(self, path: str) -> np.ndarray:
        """One image as the run's evaluation transform makes it (torchvision's Resize of the short
        side to input_size / crop_pct, CenterCrop, ToTensor, Normalize), in PIL and numpy."""
        from PIL import Image, UnidentifiedImageError

        from ..data.images import open_bounded

        pre = self.spec["image"]
        try:
            with open_bounded(path, pre.get("max_image_pixels")) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DataError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None
        size = int(pre["input_size"])
        resize = int(round(size / float(pre.get("crop_pct", 1.0))))
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = resize, int(resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), PIL_FILTERS[pre.get("interpolation", "bilinear")])
        if size > new_w or size > new_h:  # torchvision pads with black first
            left, top = (size - new_w) // 2 if size > new_w else 0, (size - new_h) // 2 if size > new_h else 0
            padded = Image.new("RGB", (new_w + left + ((size - new_w + 1) // 2 if size > new_w else 0),
                                       new_h + top + ((size - new_h + 1) // 2 if size > new_h else 0)))
            padded.paste(image, (left, top))
            image, (new_w, new_h) = padded, padded.size
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        if (new_w, new_h) != (size, size):
            image = image.crop((left, top, left + size, top + size))
        pixels = np.asarray(image, dtype=np.uint8).astype(np.float32).transpose(2, 0, 1) / np.float32(255)
        mean = np.asarray(pre["mean"], dtype=np.float32)[:, None, None]
        std = np.asarray(pre["std"], dtype=np.float32)[:, None, None]
        return (pixels - mean) / std

    # -- answers ------------------------------------------------------------------------------------

    def scores(self, inputs: list[Any], batch_size: int = 64) -> np.ndarray:
        """The task's scores, one row per input, in input order (texts are batched by length, as
        the torch path batches them: less padding)."""
        order = list(range(len(inputs)))
        encodings: list[Any] = []
        if self.form == "tokens":
            encodings = self.encode_texts(list(inputs))
            order.sort(key=lambda i: len(encodings[i].ids))
        out: np.ndarray | None = None
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            if self.form == "tokens":
                batch = self.text_batch([encodings[i] for i in rows])
            else:
                batch = {"pixel_values": np.stack([self.image_array(str(inputs[i])) for i in rows])}
            scores = self.session.run(["scores"], batch)[0]
            if out is None:
                out = np.zeros((len(inputs), *scores.shape[1:]), dtype=np.float32)
            out[rows] = scores
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)

    def records(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """Per input ``{"json": ..., "line": ...}``, as ``Predictor.records``."""
        if not inputs:
            return []
        return task_records(self.answer_form, self.task, self.scores(inputs))
