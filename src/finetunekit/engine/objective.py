"""What a training step minimises: the task's loss (``task.loss``, finetunekit.tasks; on mixed
targets for mixup/cutmix) plus the strategy's extra terms (regularisers).

``Objective(model, batch)`` returns the total and every part by name (``task``, or one per task of
a multi-task run, then ``l2sp``, ``distill``, ...), each already weighted, so
``total == sum(parts.values())``; the loop logs both.

Example::

    objective = Objective(task)
    total, parts = objective(model, batch)
    total.backward()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class Mixer:
    """mixup (Zhang et al. 2018) and cutmix (Yun et al. 2019) on a batch of images.

    Returns the mixed batch and mixed targets ``lam * t(y) + (1 - lam) * t(y[perm])``, where ``t``
    is the task's dense form of its targets (one-hot vectors for classification).
    With both alphas set, each batch uses one of the two, chosen with probability 1/2. The draws
    (which one, lam, the pairing, the box) come from torch's global generator, which the trainer
    seeds per epoch and checkpoints, so a resumed run mixes the same pairs.
    """

    def __init__(self, task: Any, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> None:
        self.task = task
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x, labels = batch["pixel_values"], batch["labels"]
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or bool(torch.rand(()) < 0.5))
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha)).sample())
        perm = torch.randperm(x.shape[0]).to(x.device)
        if cutmix:
            x, lam = self._paste_box(x, perm, lam)
        else:
            x = lam * x + (1.0 - lam) * x[perm]
        dense = self.task.mixable(labels)
        targets = lam * dense + (1.0 - lam) * dense[perm]
        return {**batch, "pixel_values": x}, targets

    @staticmethod
    def _paste_box(x: torch.Tensor, perm: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
        """Paste a box of about ``1 - lam`` of the area from the paired image; the returned ratio
        is the area actually kept (the box is clipped at the borders)."""
        h, w = x.shape[-2:]
        ratio = (1.0 - lam) ** 0.5
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        bh, bw = int(h * ratio), int(w * ratio)
        y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
        x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        return x, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


class Objective:
    """Task loss plus extra terms; see the module docstring."""

    def __init__(self, task: Any, mixer: Mixer | None = None, terms: Sequence[Any] = ()) -> None:
        self.task = task
        self.mixer = mixer
        self.terms = list(terms)

    @property
    def names(self) -> list[str]:
        return [*self.task.loss_names(), *(t.name for t in self.terms)]

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        targets = batch["labels"]
        if self.mixer is not None:
            batch, targets = self.mixer(batch)
        features = None
        if self.terms:
            # Through the (possibly distributed) wrapper's forward, so gradients sync; the model
            # takes the features from model.features(batch), cached ones included.
            logits, features = model(batch, return_features=True)
        else:
            logits = model(batch)
        parts = dict(self.task.loss(logits, targets))
        for term in self.terms:
            parts[term.name] = term(batch, features)
        values = iter(parts.values())
        total = next(values)
        for value in values:
            total = total + value
        return total, parts


def build_objective(recipe: Any, task: Any, terms: Sequence[Any]) -> Objective:
    """The objective a recipe asks for: ``task``'s loss, mixing and the strategy's terms."""
    t = recipe.train
    mixer = Mixer(task, t.mixup_alpha, t.cutmix_alpha) if (t.mixup_alpha or t.cutmix_alpha) else None
    return Objective(task, mixer, terms)
