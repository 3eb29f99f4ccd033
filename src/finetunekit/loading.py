"""Rebuild a fine-tuned model from its run directory alone (weights from safetensors only).

Loading sits above the model it builds: it imports the backbones and the model, and nothing below
it imports this module (``artifacts`` only reads and writes the run directory's files).

Example::

    model, info = load_model(Path("runs/ants"))
    info["classes"], info["preprocessing"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .artifacts import load_weights, read_json, read_run_info, read_weights
from .backbones import rebuild_backbone
from .model import FineTuneModel


def load_model(run_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of ``run_dir`` in eval mode, and the run's description (``finetunekit.json``
    plus ``classes`` and ``preprocessing``)."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    classes = read_json(run_dir / "labels.json")["classes"]
    preprocessing = read_json(run_dir / "preprocessing.json")
    backbone = rebuild_backbone(info["backbone"], run_dir / "backbone")
    model = FineTuneModel(backbone, len(classes), float(info["head"].get("dropout", 0.0)))
    if info.get("adapter"):  # adapters saved unmerged: re-insert the layers the weights belong to
        from .strategies.lora import apply_adapter

        apply_adapter(model, info["adapter"])
    load_weights(model, read_weights(run_dir), run_dir / "model.safetensors")
    model.eval()
    return model, {**info, "classes": classes, "preprocessing": preprocessing}
