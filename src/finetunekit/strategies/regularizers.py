"""Regularisers towards the pretrained model: extra loss terms added to the task loss.

Fine-tuning a small data set minimises ``L_task + sum of terms``; each term here keeps the model
close to where it started, in weight space (L2-SP) or in feature space (distillation). A term is
called with the batch and the backbone features of the current forward pass and returns a scalar
tensor, already weighted, so the optimised total is exactly ``task + sum(terms)`` (that is what
``train_loss`` logs; ``train_loss_<name>`` logs each part).

Both are built once per run, in ``trainer._build``, from the model as the strategy has set it up and
before any checkpoint is restored: the reference (``w0``, the frozen copy) is the pretrained model
in a fresh run and in a resumed one alike, so neither needs to be saved in checkpoints.

Example::

    terms = build_regularizers(StrategySpec(l2sp_alpha=0.1, l2sp_beta=0.01), model, accelerator)
    logits, features = model(batch, return_features=True)
    loss = task_loss + sum(term(batch, features) for term in terms)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import check_range


@dataclass
class RegularizerOptions:
    """``strategy:`` options of the regularisers, for any strategy; each 0 = off.

    L2-SP (Li et al. 2018): ``l2sp_alpha/2 * ||w - w0||^2`` over the backbone parameters that train
    (w0: the pretrained weights) + ``l2sp_beta/2 * ||W_head||^2`` over the head's weight matrix.
    With l2sp_alpha > 0 the backbone groups get no weight decay (it would pull them to 0, not to
    w0). Li et al. use alpha 0.1, beta 0.01 (tune per task). Feature distillation from a frozen
    copy of the pretrained backbone (Learning without Forgetting at feature level):
    ``distill_weight`` * mean over examples and feature dimensions of ``(f(x) - f0(x))^2``; zero
    while the backbone is frozen.
    """

    l2sp_alpha: float = 0.0
    l2sp_beta: float = 0.0
    distill_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("l2sp_alpha", "l2sp_beta", "distill_weight"):
            check_range(f"strategy.{name}", getattr(self, name), 0.0, 1e6)


class LossTerm(Protocol):
    """An extra loss term: ``term(batch, features)`` is a weighted scalar; ``name`` labels its logs."""

    name: str

    def __call__(self, batch: dict[str, torch.Tensor], features: torch.Tensor | None) -> torch.Tensor: ...


class L2SP:
    """L2-SP (Li et al. 2018, "Explicit inductive bias for transfer learning with convolutional networks"):

        alpha/2 * ||w_S - w_S0||^2  over the backbone parameters that train now
      + beta/2  * ||W_head||^2      over the head's weight matrix (not its bias, as weight decay)

    ``w_S0`` is a copy of every backbone parameter taken at construction. A parameter counts only
    while it trains (``requires_grad``), so frozen layers, and layers a schedule has not unfrozen
    yet, add nothing.
    """

    name = "l2sp"

    def __init__(self, model: nn.Module, alpha: float, beta: float) -> None:
        self.model = model
        self.alpha = float(alpha)
        self.beta = float(beta)
        # Every parameter, not only those that train now: a gradual schedule unfreezes more later.
        self.reference = {n: p.detach().clone() for n, p in model.backbone.named_parameters()} if alpha else {}

    def __call__(self, batch: dict[str, torch.Tensor], features: torch.Tensor | None) -> torch.Tensor:
        total = torch.zeros((), device=next(self.model.head.parameters()).device)
        if self.alpha:
            drift = [
                (p.float() - self.reference[n].float()).pow(2).sum()
                for n, p in self.model.backbone.named_parameters()
                if p.requires_grad and n in self.reference
            ]
            if drift:
                total = total + self.alpha / 2 * torch.stack(drift).sum()
        if self.beta:
            weights = [p for p in self.model.head.parameters() if p.ndim > 1 and p.requires_grad]
            if weights:
                total = total + self.beta / 2 * torch.stack([p.float().pow(2).sum() for p in weights]).sum()
        return total


class FeatureDistillation:
    """``weight`` x mean squared difference (over examples and feature dimensions) between the
    backbone's features and those of a frozen copy of the pretrained backbone on the same batch
    (Learning without Forgetting, Li & Hoiem 2016, at feature level: the new head replaces the
    original classifier, so the old logits have nothing to be compared with).

    The copy runs in eval mode, without gradients, on the accelerator's device and in its autocast.
    While no backbone parameter trains, or when the batch carries cached features, the features
    cannot drift: the term is 0 and the copy does not run. The fine-tuned backbone in training mode
    (dropout, BatchNorm on batch statistics) differs from the copy even at step 0; with frozen
    BatchNorm statistics and no dropout the term starts at exactly 0.
    """

    name = "distill"

    def __init__(self, model: nn.Module, weight: float, accelerator: Any) -> None:
        self.model = model
        self.weight = float(weight)
        self.autocast = accelerator.autocast
        self.device = accelerator.device
        self.teacher = copy.deepcopy(model.backbone).to(accelerator.device).eval().requires_grad_(False)
        for module in self.teacher.modules():  # layers whose numerics differ in training (backbones' DepthwiseConv2d)
            if hasattr(module, "fp32_without_grad"):
                module.fp32_without_grad = True

    def __call__(self, batch: dict[str, torch.Tensor], features: torch.Tensor | None) -> torch.Tensor:
        if features is None or "features" in batch or not any(p.requires_grad for p in self.model.backbone.parameters()):
            return torch.zeros((), device=self.device)
        with torch.no_grad(), self.autocast():
            target = self.teacher.forward_features(batch)
        return self.weight * F.mse_loss(features.float(), target.float())


def build_regularizers(spec: Any, model: nn.Module, accelerator: Any, trains_backbone: bool = True) -> list[LossTerm]:
    """The terms a strategy spec asks for, built on ``model`` (the unwrapped FineTuneModel) as it is
    now. ``trains_backbone=False`` (no epoch trains the backbone) skips the backbone terms, which
    would always be 0, and in particular the frozen copy's memory."""
    from ..core.errors import warn

    terms: list[LossTerm] = []
    alpha = spec.l2sp_alpha if trains_backbone else 0.0
    if alpha or spec.l2sp_beta:
        terms.append(L2SP(model, alpha, spec.l2sp_beta))
    if spec.distill_weight and trains_backbone:
        terms.append(FeatureDistillation(model, spec.distill_weight, accelerator))
    unused = [f"strategy.{n}" for n in ("l2sp_alpha", "distill_weight") if getattr(spec, n) and not trains_backbone]
    if unused:
        warn(f"{' and '.join(unused)} have no effect: strategy {spec.name} never trains the backbone")
    return terms


def without_backbone_decay(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Optimizer groups with weight decay 0 for the backbone (``backbone``, ``backbone.<i>``): under
    L2-SP the backbone is pulled towards its pretrained weights, and decoupled weight decay would
    pull it towards 0 at the same time. The head keeps ``train.weight_decay``."""
    return [{**g, "weight_decay": 0.0} if str(g.get("name", "")).startswith("backbone") else g for g in groups]
