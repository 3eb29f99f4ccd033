"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates"; fastai's ``lr_find``).

Train for a few hundred steps while the rate grows exponentially from ``start`` to ``end``, record
the loss, smooth it (exponential moving average with bias correction; beta 0.9, a window of about
ten steps: fastai's 0.98 over 200 steps lags the raw loss by two decades of rate), stop once it has clearly
diverged, and suggest a rate by a named rule:

* ``min/10`` (the default): a tenth of the rate at which the smoothed loss is lowest: the loss is
  still falling fast there, and a tenth leaves a margin below the edge of divergence.
* ``steepest``: where the smoothed loss falls fastest against log(rate), before its minimum.

Both are reported; the weights the sweep trains are thrown away. Example::

    result = lr_sweep(accelerator, model, loader, optimizer, objective, scale={"head": 1.0},
                      start=1e-7, end=10.0, steps=200)
    result.suggestion, result.rule
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.errors import FinetuneError

RULES = ("min/10", "steepest")


@dataclass
class LRFindResult:
    lrs: list[float]  # the swept rate of each step (the rate being found)
    losses: list[float]  # raw training loss of each step
    smoothed: list[float]  # bias-corrected exponential moving average of the loss
    suggestion: float
    rule: str
    suggestions: dict[str, float] = field(default_factory=dict)  # every rule's value
    stopped_early: bool = False  # the loss diverged before the last step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def suggest(lrs: list[float], smoothed: list[float]) -> dict[str, float]:
    """Every rule's rate from a sweep's smoothed loss."""
    y = np.asarray(smoothed, dtype=float)
    x = np.log10(np.asarray(lrs, dtype=float))
    low = int(np.argmin(y))
    out = {"min/10": float(lrs[low]) / 10.0}
    # the first tenth of the sweep is dominated by the average's start-up; look after it
    skip = max(1, len(y) // 10)
    if low - skip >= 2:
        slope = np.gradient(y[skip : low + 1], x[skip : low + 1])
        out["steepest"] = float(lrs[skip + int(np.argmin(slope))])
    else:
        out["steepest"] = out["min/10"]
    return out


def lr_sweep(
    accelerator: Any, model: torch.nn.Module, loader: Any, optimizer: torch.optim.Optimizer, objective: Any,
    scale: dict[str, float], start: float = 1e-7, end: float = 10.0, steps: int = 200, beta: float = 0.9,
    diverge: float = 4.0, rule: str = "min/10", max_grad_norm: float | None = 1.0,
) -> LRFindResult:
    """Sweep the rate of the optimizer groups named in ``scale`` from ``start`` to ``end``.

    ``scale[name]`` is that group's rate relative to the swept one (1.0 for the rate being found;
    another group swept along keeps its ratio); groups not named keep their own ``lr``. Stops when
    the smoothed loss exceeds ``diverge`` times its minimum, or the loss is not finite.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {', '.join(RULES)}")
    model.train()
    lrs, losses, smoothed = [], [], []
    average, best = 0.0, math.inf
    stopped = False
    batches = _forever(loader)
    for i in range(steps):
        lr = start * (end / start) ** (i / max(1, steps - 1))
        for group in optimizer.param_groups:
            if group.get("name") in scale:
                group["lr"] = lr * scale[group["name"]]
        loss, _ = objective(model, next(batches))
        if not torch.isfinite(loss):
            stopped = True
            break
        accelerator.backward(loss)
        if max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        average = beta * average + (1 - beta) * value
        smooth = average / (1 - beta ** (i + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(smooth)
        best = min(best, smooth)
        if i > steps // 10 and smooth > diverge * best:
            stopped = True
            break
    if len(lrs) < 10:
        raise FinetuneError(f"lr-find: the loss diverged after {len(lrs)} steps, from a rate of {start:g}: lower --start")
    suggestions = suggest(lrs, smoothed)
    return LRFindResult(lrs, losses, smoothed, suggestions[rule], rule, suggestions, stopped)


def _forever(loader: Any):
    """Batches from ``loader``, epoch after epoch (reshuffled) for as long as asked."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        sampler = getattr(loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise FinetuneError("lr-find: the training loader is empty")
        epoch += 1
