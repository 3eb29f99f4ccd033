"""Export a retrieval run's towers for use without finetunekit, each checked against the run.

* ``hf``: the text tower as a transformers directory (``AutoModel`` + ``AutoTokenizer``) with the
  text projection in ``projection.safetensors``; an embedding is the masked mean (or CLS) of the last
  hidden states, times the projection, normalised. The parity check runs exactly that with plain
  transformers and compares it with the run's own embeddings.
* ``onnx``: the image tower and its projection as one ONNX graph, ``pixel_values`` (N, 3, H, W,
  normalised as ``preprocessing.json`` says) -> unit-length embeddings, checked with onnxruntime.

Example::

    finetunekit export runs/f8k --format hf      # runs/f8k/export/hf/
    finetunekit export runs/f8k --format onnx    # runs/f8k/export/onnx/image_encoder.onnx
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import FinetuneError

SAMPLE_TEXTS = ["a dog running on the beach", "two children play in the snow", "a man rides a bike", "people"]


def export(run_dir: str | Path, fmt: str, output: str | Path | None = None, overwrite: bool = False, tolerance: float = 1e-4) -> dict[str, Any]:
    from ..run.artifacts import atomic_replace_dir
    from .api import RetrievalModel

    run_dir = Path(run_dir)
    output = Path(output) if output else run_dir / "export" / fmt
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FinetuneError(f"{output} exists; pass --overwrite to replace it")
    model = RetrievalModel(run_dir, device="cpu")
    result: dict[str, Any] = {}
    if fmt == "hf":
        atomic_replace_dir(output, lambda folder: _write_text(model, folder))
        result = {"output": str(output), "max_difference": _text_parity(model, output)}
    elif fmt == "onnx":
        atomic_replace_dir(output, lambda folder: _write_image(model, folder))
        result = {"output": str(output), "max_difference": _image_parity(model, output)}
    else:
        raise FinetuneError(f"--format: a retrieval run exports its text tower as hf and its image tower as onnx, not {fmt}")
    if result["max_difference"] > tolerance:
        raise FinetuneError(f"{output}: the exported model differs from the run by {result['max_difference']:.2e} (> {tolerance:g})")
    return result


def _write_text(model: Any, folder: Path) -> None:
    from safetensors.torch import save_file

    text = model.model.text
    if not hasattr(text, "tokenizer"):
        raise FinetuneError("--format hf: the text tower is not a transformers model")
    text.model.save_pretrained(folder)
    text.tokenizer.save_pretrained(folder)
    save_file({"weight": model.model.text_proj.weight.detach().cpu().contiguous()}, str(folder / "projection.safetensors"))
    (folder / "finetunekit_text_encoder.json").write_text(json.dumps(
        {"pooling": text.pooling, "max_length": model.max_length, "embed_dim": model.embed_dim,
         "embedding": "normalize(pool(last_hidden_state) @ projection.weight.T)"}, indent=2))


def _text_parity(model: Any, folder: Path) -> float:
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    plain = AutoModel.from_pretrained(folder).eval()
    weight = load_file(str(folder / "projection.safetensors"))["weight"]
    pooling = json.loads((folder / "finetunekit_text_encoder.json").read_text())["pooling"]
    inputs = tokenizer(SAMPLE_TEXTS, padding=True, truncation=True, max_length=model.max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = plain(**inputs).last_hidden_state
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        emb = torch.nn.functional.normalize(pooled @ weight.T, dim=-1).numpy()
    return float(np.abs(emb - model.embed_text(SAMPLE_TEXTS)).max())


class _ImageEncoder(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.image, self.proj = model.image, model.image_proj

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.proj(self.image.forward_features({"pixel_values": pixel_values})), dim=-1)


def _write_image(model: Any, folder: Path) -> None:
    size = int(model.preprocessing["image_tower"]["input_size"])
    encoder = _ImageEncoder(model.model).eval()
    torch.onnx.export(encoder, (torch.zeros(2, 3, size, size),), str(folder / "image_encoder.onnx"), input_names=["pixel_values"],
                      output_names=["embeddings"], dynamic_axes={"pixel_values": {0: "batch"}, "embeddings": {0: "batch"}},
                      opset_version=17, dynamo=False)
    (folder / "preprocessing.json").write_text(json.dumps(model.preprocessing["image_tower"], indent=2))


def _image_parity(model: Any, folder: Path) -> float:
    import onnxruntime

    size = int(model.preprocessing["image_tower"]["input_size"])
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(folder / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"pixel_values": pixels.numpy()})[0]
    with torch.no_grad():
        expected = _ImageEncoder(model.model).eval()(pixels).numpy()
    return float(np.abs(exported - expected).max())
