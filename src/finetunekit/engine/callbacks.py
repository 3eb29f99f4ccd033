"""Hooks around the loop: early stopping with a best-state snapshot, and user callbacks.

A callback sees every epoch's record (the line written to metrics.jsonl) and may end the run by
raising; ``finetunekit.choose.tune`` uses one to report to Optuna and prune::

    class Print(Callback):
        def on_epoch_end(self, epoch, record):
            print(epoch, record["val_loss"])

    train(recipe, output="runs/x", callbacks=[Print()])
"""

from __future__ import annotations

from typing import Any

import torch


class Callback:
    """Base class of the trainer's callbacks; override the hooks you need. An exception raised in a
    hook ends the run there and propagates out of ``train`` (checkpoints stay, nothing else is written)."""

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        """After validation of epoch ``epoch`` (0-based) and its checkpoint; ``record`` is its
        metrics.jsonl line (``val_loss``, ``val_accuracy``, ... ``lr``)."""


class EarlyStopping:
    """Track the best value of a validation metric; ``patience=None`` never stops but still keeps
    the best weights so they can be restored at the end."""

    def __init__(self, metric: str, patience: int | None, higher_is_better: bool) -> None:
        """``higher_is_better``: the task's direction for ``metric`` (``Task.higher_is_better``)."""
        self.metric = metric
        self.mode = "max" if higher_is_better else "min"
        self.patience = patience
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None

        self.best_loss: float | None = None

    def improved(self, value: float, loss: float | None = None) -> bool:
        if self.best is None:
            return True
        if value == self.best and loss is not None and self.best_loss is not None:
            return loss < self.best_loss  # ties (common for accuracy on small sets) go to the lower loss
        return value < self.best if self.mode == "min" else value > self.best

    def update(self, value: float, epoch: int, model: torch.nn.Module, loss: float | None = None) -> bool:
        """Record an epoch; returns True when training should stop."""
        if self.improved(value, loss):
            self.best, self.best_epoch, self.bad_epochs, self.best_loss = value, epoch, 0, loss
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "best_loss": self.best_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.best_loss = state.get("best_loss")
