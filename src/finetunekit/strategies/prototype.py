"""``prototype``: nearest class mean on normalised frozen features, no gradient steps.

Each class's prototype is the mean of its L2-normalised training features, normalised again; an
example goes to the class whose prototype is most cosine-similar (the nearest-centroid baseline of
few-shot learning: Snell et al. 2017, SimpleShot, Wang et al. 2019). Because ||f|| is the same for
every class, ``argmax_c cos(f, p_c) = argmax_c f . p_c``: the classifier is exactly the linear head
``W = s * P``, ``b = 0``, so the run is saved, reloaded, predicted and exported like any other. The
scale ``s = temperature / mean ||f||`` makes the logits about ``temperature * cos`` (10, as cosine
classifiers use) for calibrated-looking probabilities; it never changes a prediction.

The backbone is frozen for the whole run, so the trainer feeds cached features (one pass over the
training set) and calls :meth:`Prototype.fit_epoch` instead of its gradient loop.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from . import STRATEGIES, Strategy

TEMPERATURE = 10.0


@torch.no_grad()
def collect_features(model: nn.Module, loader: Any, accelerator: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of every training batch, gathered over processes, in float32."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for batch in loader:
            f = model.features(batch).float()
            f, y = accelerator.gather_for_metrics((f, batch["labels"]))
            feats.append(f.cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(classes, D): the normalised mean of each class's normalised features (zeros for a class
    without examples: it then never wins against a class that has some)."""
    normed = nn.functional.normalize(features.double(), dim=1)
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64).index_add_(0, labels, normed)
    return nn.functional.normalize(sums, dim=1).float()


@STRATEGIES.register("prototype")
class Prototype(Strategy):
    """Nearest class mean on normalised frozen features: no gradient steps (few-shot images)."""

    sets_linear_head = True  # the head is the class means of pooled features
    needs_single_class = True  # one mean per class

    def trainable_groups(self, model: nn.Module) -> set[int]:
        return set()

    def backbone_frozen_at(self, epoch: int) -> bool:
        return True

    def fit_epoch(self, model: nn.Module, loader: Any, accelerator: Any, **context: Any) -> dict[str, Any]:
        """Set the head from the class means of the training features; returns the epoch's stats
        (the loss is the task's loss, ``context["task"].loss``, of the fitted head on the training
        features)."""
        started = time.perf_counter()
        feats, labels = collect_features(model, loader, accelerator)
        fc = model.head.fc
        protos = prototypes(feats, labels, fc.out_features)
        scale = TEMPERATURE / feats.norm(dim=1).mean().clamp_min(1e-12)
        with torch.no_grad():
            fc.weight.copy_(protos * scale)
            fc.bias.zero_()
            logits = feats @ fc.weight.T.float() + fc.bias.float()
            loss = sum(context["task"].loss(logits, labels).values()).item()
        return {"loss": loss, "samples": len(labels), "seconds": time.perf_counter() - started, "steps": 0}
