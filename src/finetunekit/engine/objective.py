"""What a training step minimises: the task loss (cross-entropy with label smoothing, class weights
and, for mixup/cutmix, soft targets) plus the strategy's extra terms (regularisers).

``Objective(model, batch)`` returns the total and every part by name (``task``, ``l2sp``,
``distill``, ...), each already weighted, so ``total == sum(parts.values())``; the loop logs both.

Example::

    objective = Objective(label_smoothing=0.1, class_weights=balanced_class_weights(train_ids, 3))
    total, parts = objective(model, batch)
    total.backward()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import RecipeError


def balanced_class_weights(label_ids: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``N / (num_classes * N_c)``: each class's examples weigh the same in
    total, and a balanced training set gets weight 1 everywhere (as scikit-learn's "balanced")."""
    counts = torch.bincount(torch.as_tensor(list(label_ids), dtype=torch.long), minlength=num_classes).double()
    return (counts.sum() / (num_classes * counts.clamp(min=1))).float()


class Mixer:
    """mixup (Zhang et al. 2018) and cutmix (Yun et al. 2019) on a batch of images.

    Returns the mixed batch and soft targets ``lam * onehot(y) + (1 - lam) * onehot(y[perm])``.
    With both alphas set, each batch uses one of the two, chosen with probability 1/2. The draws
    (which one, lam, the pairing, the box) come from torch's global generator, which the trainer
    seeds per epoch and checkpoints, so a resumed run mixes the same pairs.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> None:
        self.num_classes = num_classes
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
        onehot = F.one_hot(labels, self.num_classes).float()
        targets = lam * onehot + (1.0 - lam) * onehot[perm]
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

    def __init__(
        self,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
        mixer: Mixer | None = None,
        terms: Sequence[Any] = (),
    ) -> None:
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        self.mixer = mixer
        self.terms = list(terms)

    @property
    def names(self) -> list[str]:
        return ["task", *(t.name for t in self.terms)]

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
        weight = self.class_weights
        if weight is not None and weight.device != logits.device:
            weight = self.class_weights = weight.to(logits.device)
        task = F.cross_entropy(logits.float(), targets, weight=weight, label_smoothing=self.label_smoothing)
        parts = {"task": task}
        for term in self.terms:
            parts[term.name] = term(batch, features)
        total = task
        for name, value in parts.items():
            if name != "task":
                total = total + value
        return total, parts


def check_for_modality(recipe: Any, modality: str) -> None:
    """Fields that only make sense for images; raised once the backbone's modality is known."""
    t = recipe.train
    for name in ("mixup_alpha", "cutmix_alpha"):
        if modality != "image" and getattr(t, name):
            raise RecipeError(
                f"train.{name}: mixup and cutmix blend images, and {recipe.model.backbone} is a {modality} "
                f"backbone; set train.{name}=0"
            )


def build_objective(recipe: Any, num_classes: int, train_ids: Sequence[int], terms: Sequence[Any]) -> Objective:
    """The objective a recipe asks for, over the encoded training labels."""
    t = recipe.train
    weights = balanced_class_weights(train_ids, num_classes) if t.class_weights == "balanced" else None
    mixer = Mixer(num_classes, t.mixup_alpha, t.cutmix_alpha) if (t.mixup_alpha or t.cutmix_alpha) else None
    return Objective(t.label_smoothing, weights, mixer, terms)
