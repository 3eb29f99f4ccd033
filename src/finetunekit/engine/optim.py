"""Optimizers over a strategy's parameter groups, and a step-based learning-rate schedule.

The schedule writes ``group["lr"] = group["base_lr"] * multiplier(step)`` for every group. Strategies
change ``base_lr`` (unfreezing, per-layer rates) and the optimizer's state dict carries it, so a
resumed run gets the same rates without any scheduler object to rebuild.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..run.recipe import TrainSpec


def build_optimizer(spec: TrainSpec, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW. No weight decay on biases and norm weights; a group
    may set its own ``weight_decay`` (L2-SP sets 0 for the backbone)."""
    split: list[dict[str, Any]] = []
    for group in groups:
        decay = [p for p in group["params"] if p.ndim > 1]
        no_decay = [p for p in group["params"] if p.ndim <= 1]
        extra = {k: v for k, v in group.items() if k != "params"}
        if decay:
            split.append({**extra, "params": decay, "weight_decay": group.get("weight_decay", spec.weight_decay)})
        if no_decay:
            split.append({**extra, "params": no_decay, "weight_decay": 0.0})
    # The fused kernels update every tensor of a group in one pass: on CPU the step of a 22M-parameter
    # model drops from ~70 ms (foreach) to ~20 ms, which matters at small batch sizes.
    fused = {"fused": True} if _fused_supported(split) else {}
    if spec.optimizer == "sgd":
        return torch.optim.SGD(split, lr=spec.lr, momentum=spec.momentum, nesterov=spec.momentum > 0, **fused)
    if spec.optimizer == "adam":
        # Adam's weight_decay is L2 added to the gradient (not decoupled); AdamW decouples it.
        return torch.optim.Adam(split, lr=spec.lr, **fused)
    return torch.optim.AdamW(split, lr=spec.lr, **fused)


def _fused_supported(groups: list[dict[str, Any]]) -> bool:
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    floating = all(p.is_floating_point() for p in params)
    # fused CPU kernels arrived in torch 2.4; CUDA has had them longer
    version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    return bool(params) and floating and devices <= {"cpu", "cuda"} and version >= (2, 4)


def param_group_rows(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """One row per named parameter group (the weight-decay splits of a group merged): name,
    parameter count, trainable count and base learning rate."""
    rows: dict[str, dict[str, Any]] = {}
    for i, group in enumerate(optimizer.param_groups):
        name = str(group.get("name", i))
        row = rows.setdefault(name, {"name": name, "params": 0, "trainable": 0, "lr": group.get("base_lr", group["lr"])})
        row["params"] += sum(p.numel() for p in group["params"])
        row["trainable"] += sum(p.numel() for p in group["params"] if p.requires_grad)
    return list(rows.values())


def format_param_groups(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`param_group_rows` as a small aligned table."""
    table = [("param group", "params", "trainable", "base lr")]
    table += [(r["name"], f"{r['params']:,}", f"{r['trainable']:,}", f"{r['lr']:.3g}") for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    return "\n".join(
        "  " + line[0].ljust(widths[0]) + "".join("  " + cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True))
        for line in table
    )


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
