"""A retrieval run directory: what it holds, written atomically, and the model rebuilt from it alone.

    RUN_DIR/
      recipe.yaml          the resolved retrieval recipe
      finetunekit.json     kind "retrieval": both backbones' descriptions, embed_dim, weights SHA-256
      model.safetensors    both towers, both projections, the logit scale (LoRA adapters merged)
      image_backbone/, text_backbone/   each tower's assets (tokenizer and config for the text side)
      preprocessing.json   {"image_tower": the image backbone's, "text_tower": {"max_length": ...}}
      metrics.json         final validation metrics (test_* on data.test) with bootstrap intervals
      metrics.jsonl        one line per epoch
      ranks.json           every query's rank (compare's paired bootstrap, the report's recall curves)
      examples.json        the top images found for some test captions (the report)
      README.md            the model card

Example::

    model, info = load_run("runs/flickr8k")
    info["embed_dim"], info["preprocessing"]["text_tower"]["max_length"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import FinetuneError
from .model import DualEncoder

KIND = "retrieval"


def is_retrieval_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a retrieval run (its finetunekit.json says kind retrieval)."""
    import json

    marker = Path(run_dir) / "finetunekit.json"
    try:
        return marker.is_file() and json.loads(marker.read_text()).get("kind") == KIND
    except (OSError, ValueError):
        return False


def save_run(run_dir: Path, recipe: Any, model: DualEncoder, preprocessing: dict[str, Any], metrics: dict[str, Any],
             ranks: dict[str, Any], examples: list[dict[str, Any]] | None) -> None:
    from ..run import artifacts
    from ..version import __version__

    for name, tower in (("image_backbone", model.image), ("text_backbone", model.text)):
        if tower.saves_assets:
            artifacts.atomic_replace_dir(run_dir / name, tower.save_assets)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sha = artifacts.atomic_save_safetensors(run_dir / "model.safetensors", state, {"format": "pt"})
    artifacts.atomic_write_json(run_dir / "preprocessing.json", preprocessing)
    artifacts.atomic_write_json(run_dir / "ranks.json", ranks)
    if examples is not None:
        artifacts.atomic_write_json(run_dir / "examples.json", examples)
    artifacts.atomic_write_json(run_dir / "finetunekit.json", {
        "format_version": 1, "kind": KIND, "finetunekit_version": __version__, "task": {"type": KIND},
        "modality": "image_text", **model.describe(), "strategy": recipe.strategy.name, "weights_sha256": sha,
    })
    from .report import model_card, write_report

    artifacts.atomic_write_text(run_dir / "README.md", model_card(recipe, metrics))
    artifacts.atomic_write_json(run_dir / "metrics.json", metrics)  # last: it marks the run finished
    write_report(run_dir)


def load_run(run_dir: str | Path) -> tuple[DualEncoder, dict[str, Any]]:
    """The dual encoder of ``run_dir`` in eval mode (weights checked against finetunekit.json's
    SHA-256), and the run's description with ``preprocessing`` added."""
    from ..backbones import rebuild_backbone
    from ..run.artifacts import load_weights, read_json, read_weights, verify_weights

    run_dir = Path(run_dir)
    if not (run_dir / "finetunekit.json").is_file():
        raise FinetuneError(f"{run_dir}: not a finetunekit run directory (no finetunekit.json)")
    info = read_json(run_dir / "finetunekit.json")
    if info.get("kind") != KIND:
        raise FinetuneError(f"{run_dir}: not an image-text retrieval run")
    image = rebuild_backbone(info["image_backbone"], run_dir / "image_backbone")
    text = rebuild_backbone(info["text_backbone"], run_dir / "text_backbone")
    projection = info.get("image_projection") or {}
    model = DualEncoder(image, text, int(info["embed_dim"]), image_projection_hidden=int(projection.get("hidden", 0)),
                        image_projection_dropout=float(projection.get("dropout", 0.0)))
    verify_weights(run_dir)
    load_weights(model, read_weights(run_dir, verify=False), run_dir / "model.safetensors")
    model.eval()
    return model, {**info, "preprocessing": read_json(run_dir / "preprocessing.json")}


def weights_sha256(run_dir: str | Path) -> str:
    from ..run.artifacts import read_json

    return str(read_json(Path(run_dir) / "finetunekit.json")["weights_sha256"])


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
