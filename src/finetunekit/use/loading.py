"""Rebuild a fine-tuned model from its run directory alone (weights from safetensors only).

Loading sits above the model it builds: it imports the backbones and the model, and nothing below
it imports this module (``artifacts`` only reads and writes the run directory's files).

Example::

    model, info = load_model(Path("runs/ants"))
    info["task"].classes, info["preprocessing"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..run.artifacts import load_weights, read_json, read_run_info, read_weights, verify_weights
from ..core.errors import FinetuneError
from ..backbones import rebuild_backbone
from ..backbones.base import weights_follow
from ..run.model import FineTuneModel
from ..tasks import task_from_state


def load_model(run_dir: Path, seconds: dict[str, float] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of ``run_dir`` in eval mode, and the run's description (``finetunekit.json``,
    with ``task`` the rebuilt :class:`finetunekit.tasks.Task`, plus ``preprocessing``).
    ``seconds``, when given, receives the wall seconds of each step (the cold-start breakdown)."""
    clock = _Clock(seconds)
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    read = lambda name: read_json(run_dir / name)  # noqa: E731
    task = task_from_state(info.get("task", "classification"), read)
    task.check_run_files(run_dir, info, read)  # its files (labels.json) come from this run
    preprocessing = read_json(run_dir / "preprocessing.json")
    clock.lap("read the run's files")
    with weights_follow():  # every weight is loaded below: no random initialisation to pay for
        backbone = rebuild_backbone(info["backbone"], run_dir / "backbone")
    clock.lap("import the backbone library, build the architecture")
    model = FineTuneModel(backbone, task.head_for(backbone, float(info["head"].get("dropout", 0.0))))
    if info.get("adapter"):  # adapters saved unmerged: re-insert the layers the weights belong to
        from ..strategies import restore_added

        restore_added(model, info["adapter"])
    state = read_weights(run_dir, verify=False)  # the shapes first: they say more than a checksum
    _check_weights(run_dir, model, state)
    load_weights(model, state, run_dir / "model.safetensors")
    model.eval()
    clock.lap("read, check and load the weights")
    return model, {**info, "task": task, "preprocessing": preprocessing}


class _Clock:
    """Wall seconds between laps, into a dict (or nowhere)."""

    def __init__(self, into: dict[str, float] | None) -> None:
        import time

        self.into, self.now = into, time.perf_counter
        self.last = self.now()

    def lap(self, name: str) -> None:
        if self.into is not None:
            now = self.now()
            self.into[name] = self.into.get(name, 0.0) + now - self.last
            self.last = now


# -- the parts of a run directory must come from one run ----------------------------------------------


def _check_weights(run_dir: Path, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The weights fit the architecture finetunekit.json describes and are the ones this run saved
    (their SHA-256 is in finetunekit.json); weights copied from another run are named rather than loaded."""
    path = run_dir / "model.safetensors"
    expected = model.state_dict()
    wrong = next(((k, v.shape, expected[k].shape) for k, v in state.items() if k in expected and v.shape != expected[k].shape), None)
    if wrong is not None:
        key, got, shape = wrong
        raise FinetuneError(
            f"{path}: {key} has shape {list(got)}, but the model finetunekit.json describes needs {list(shape)}; "
            "the weights come from another run"
        )
    verify_weights(run_dir)
