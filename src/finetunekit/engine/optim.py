"""Optimizers over a strategy's parameter groups, and a step-based learning-rate schedule.

The schedule writes ``group["lr"] = group["base_lr"] * multiplier(step)`` for every group. Strategies
change ``base_lr`` (unfreezing, per-layer rates) and the optimizer's state dict carries it, so a
resumed run gets the same rates without any scheduler object to rebuild.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..recipe import TrainSpec


def build_optimizer(spec: TrainSpec, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW. No weight decay on biases and norm weights."""
    split: list[dict[str, Any]] = []
    for group in groups:
        decay = [p for p in group["params"] if p.ndim > 1]
        no_decay = [p for p in group["params"] if p.ndim <= 1]
        extra = {k: v for k, v in group.items() if k != "params"}
        if decay:
            split.append({**extra, "params": decay, "weight_decay": spec.weight_decay})
        if no_decay:
            split.append({**extra, "params": no_decay, "weight_decay": 0.0})
    if spec.optimizer == "sgd":
        return torch.optim.SGD(split, lr=spec.lr, momentum=spec.momentum, nesterov=spec.momentum > 0)
    if spec.optimizer == "adam":
        # Adam's weight_decay is L2 added to the gradient (not decoupled); AdamW decouples it.
        return torch.optim.Adam(split, lr=spec.lr)
    return torch.optim.AdamW(split, lr=spec.lr)


class LRSchedule:
    """constant / cosine / linear decay with linear warmup, restartable per training phase."""

    def __init__(self, kind: str, total_steps: int, warmup_ratio: float = 0.0) -> None:
        self.kind = kind
        self.warmup_ratio = warmup_ratio
        self.phase_start = 0
        self.phase_steps = max(1, total_steps)

    def restart(self, step: int, remaining_steps: int) -> None:
        self.phase_start = step
        self.phase_steps = max(1, remaining_steps)

    def multiplier(self, step: int) -> float:
        t = step - self.phase_start
        warmup = int(self.warmup_ratio * self.phase_steps)
        if t < warmup:
            return (t + 1) / (warmup + 1)
        progress = min(1.0, (t - warmup) / max(1, self.phase_steps - warmup))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "linear":
            return 1.0 - progress
        return 1.0

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        factor = self.multiplier(step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def state_dict(self) -> dict[str, Any]:
        return {"phase_start": self.phase_start, "phase_steps": self.phase_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase_start = int(state["phase_start"])
        self.phase_steps = int(state["phase_steps"])
