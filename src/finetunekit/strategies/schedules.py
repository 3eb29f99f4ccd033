"""Strategies whose phase changes at epoch starts: what trains and at which rates is a function of
the epoch (:meth:`Strategy.trainable_at`, :meth:`Strategy.group_lrs`), so a checkpoint only needs
the epoch to put a resumed run back in its phase.

Three ways to go from a trained head to a trained backbone:

==========================  ==========================================  ===========================
strategy                    backbone                                    head after the switch
==========================  ==========================================  ===========================
``freeze_then_unfreeze``    all at once after ``freeze_epochs``         keeps ``train.head_lr``
``lp_ft``                   all at once after ``lp_epochs``             slows to ``train.lr``
``gradual_unfreeze``        one layer group at a time, output end first keeps ``train.head_lr``
==========================  ==========================================  ===========================

The two all-at-once switches restart the learning-rate schedule (warmup again); gradual unfreezing
keeps one schedule over the whole run.

Example::

    spec = StrategySpec(name="gradual_unfreeze", unfreeze_milestones=[1, 3])
    strategy = STRATEGIES.get("gradual_unfreeze")(spec)
    optimizer = torch.optim.AdamW(strategy.setup(model, lr=1e-5, head_lr=1e-2))
    strategy.on_epoch_start(1, model, optimizer)  # "epoch 2: unfroze backbone group 5; ..."
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..core.errors import RecipeError, check_range, shown
from . import STRATEGIES, Strategy


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def _all(model: nn.Module) -> set[int]:
    return set(range(len(model.backbone.layer_groups())))


def _backbone_rates(strategy: Strategy, model: nn.Module, epoch: int) -> str:
    """'1e-05', or the range under layer-wise decay: '3.2e-07 (input end) to 1e-05'."""
    rates = [r for name, r in strategy.group_lrs(len(model.backbone.layer_groups()), epoch).items() if name != "head"]
    low, high = min(rates), max(rates)
    return f"{high:.3g}" if low == high else f"{low:.3g} (input end) to {high:.3g}"


@STRATEGIES.register("freeze_then_unfreeze")
class FreezeThenUnfreeze(Strategy):
    """Head only for ``spec.freeze_epochs`` epochs, then the whole backbone joins at ``train.lr``
    while the head keeps ``train.head_lr`` (discriminative rates); the schedule restarts."""

    summary = "The head alone for strategy.freeze_epochs epochs, then the whole backbone at train.lr; the head keeps train.head_lr."

    @dataclass
    class Options:
        freeze_epochs: int = 1  # epochs of the head alone before the backbone joins

        def __post_init__(self) -> None:
            check_range("strategy.freeze_epochs", self.freeze_epochs, 0, 10_000)

    @classmethod
    def card_schedule(cls, spec: Any) -> str:
        if spec.freeze_epochs > 0:
            return f"the whole backbone joined after {_epochs(spec.freeze_epochs)} (the head kept its rate)"
        return ""

    def trainable_at(self, model: nn.Module, epoch: int) -> set[int]:
        return _all(model) if epoch >= self.spec.freeze_epochs else set()

    def describe_phase(self, model: nn.Module, epoch: int) -> str:
        return (f"epoch {epoch + 1}: backbone unfrozen, training at lr {_backbone_rates(self, model, epoch)}; "
                f"the head keeps lr {self.head_lr:.3g}; schedule restarted")

    def restarts_schedule(self, epoch: int) -> bool:
        return epoch == self.spec.freeze_epochs and epoch > 0

    def backbone_frozen_at(self, epoch: int) -> bool:
        return epoch < self.spec.freeze_epochs


@STRATEGIES.register("lp_ft")
class LinearProbeThenFineTune(Strategy):
    """LP-FT (Kumar et al. 2022): a linear probe for ``spec.lp_epochs`` epochs (head at
    ``train.head_lr``), then every parameter, the head included, at ``train.lr`` with the schedule
    restarted. Starting the fine-tuning from a good head keeps the early gradients small, so the
    pretrained features are distorted less than by fine-tuning under a random head."""

    summary = "LP-FT: a linear probe for strategy.lp_epochs epochs, then every parameter, the head too, at train.lr."

    @dataclass
    class Options:
        lp_epochs: int = 1  # linear-probe epochs, counted within train.epochs

        def __post_init__(self) -> None:
            check_range("strategy.lp_epochs", self.lp_epochs, 1, 10_000)

    @classmethod
    def check_epochs(cls, spec: Any, epochs: int) -> None:
        if spec.lp_epochs >= epochs:
            raise RecipeError(
                f"train.epochs: {epochs} leaves no fine-tuning epoch after strategy.lp_epochs={spec.lp_epochs} "
                "linear-probe epochs (strategy lp_ft); raise train.epochs or lower strategy.lp_epochs"
            )

    @classmethod
    def card_schedule(cls, spec: Any) -> str:
        return f"after {_epochs(spec.lp_epochs)} of linear probe, every parameter at the backbone's rate"

    def trainable_at(self, model: nn.Module, epoch: int) -> set[int]:
        return _all(model) if epoch >= self.spec.lp_epochs else set()

    def group_lrs(self, num_groups: int, epoch: int) -> dict[str, float]:
        rates = super().group_lrs(num_groups, epoch)
        if epoch >= self.spec.lp_epochs:
            rates["head"] = self.lr
        return rates

    def describe_phase(self, model: nn.Module, epoch: int) -> str:
        backbone = _backbone_rates(self, model, epoch)
        rates = f"lr {backbone}" if backbone == f"{self.lr:.3g}" else f"the backbone's rates (head {self.lr:.3g}, backbone {backbone})"
        return f"epoch {epoch + 1}: linear probe done; every parameter, the head included, now trains at {rates}; schedule restarted"

    def restarts_schedule(self, epoch: int) -> bool:
        return epoch == self.spec.lp_epochs

    def backbone_frozen_at(self, epoch: int) -> bool:
        return epoch < self.spec.lp_epochs


@STRATEGIES.register("gradual_unfreeze")
class GradualUnfreeze(Strategy):
    """ULMFiT's gradual unfreezing: the head alone, then one more backbone layer group, from the
    output end, every ``spec.unfreeze_every`` epochs, or after each epoch count in
    ``spec.unfreeze_milestones``. Every unfrozen group trains at its own rate (``train.lr``, or
    decayed by ``spec.layer_decay``); the head keeps ``train.head_lr``; one schedule throughout."""

    summary = "The head alone, then one more backbone layer group (output end first) every strategy.unfreeze_every epochs."

    @dataclass
    class Options:
        unfreeze_every: int = 1  # epochs between two unfreezings
        unfreeze_milestones: list[int] | None = None  # unfreeze after these epoch counts instead

        def __post_init__(self) -> None:
            check_range("strategy.unfreeze_every", self.unfreeze_every, 1, 10_000)
            milestones = self.unfreeze_milestones
            if milestones is not None:
                if not milestones:
                    raise RecipeError("strategy.unfreeze_milestones: give at least one epoch count, or null to use unfreeze_every")
                for i, m in enumerate(milestones):
                    check_range(f"strategy.unfreeze_milestones[{i}]", m, 1, 100_000)
                if any(b <= a for a, b in zip(milestones, milestones[1:], strict=False)):
                    raise RecipeError(f"strategy.unfreeze_milestones: {shown(milestones)} must be strictly increasing")

    @classmethod
    def check_epochs(cls, spec: Any, epochs: int) -> None:
        late = [m for m in spec.unfreeze_milestones or [spec.unfreeze_every] if m >= epochs]
        if late:
            field_name = "unfreeze_milestones" if spec.unfreeze_milestones else "unfreeze_every"
            raise RecipeError(
                f"train.epochs: {epochs} epochs end before strategy.{field_name} = {', '.join(map(str, late))}, "
                f"so no layer group would unfreeze then (strategy gradual_unfreeze); raise train.epochs or "
                f"use epoch counts below {epochs}"
            )

    @classmethod
    def card_schedule(cls, spec: Any) -> str:
        milestones, every = spec.unfreeze_milestones, spec.unfreeze_every
        when = f"after epochs {', '.join(map(str, milestones))}" if milestones else "every " + ("epoch" if every == 1 else f"{every} epochs")
        return f"one more backbone layer group, output end first, {when}"

    def unfrozen_count(self, epoch: int) -> int:
        """How many backbone layer groups (from the output end) train during ``epoch``."""
        milestones = self.spec.unfreeze_milestones
        if milestones is not None:
            return sum(m <= epoch for m in milestones)
        return epoch // self.spec.unfreeze_every

    def setup(self, model: nn.Module, lr: float, head_lr: float | None, pretrained: bool = True) -> list[dict[str, Any]]:
        milestones, n = self.spec.unfreeze_milestones, len(model.backbone.layer_groups())
        if milestones is not None and len(milestones) > n:
            raise RecipeError(
                f"strategy.unfreeze_milestones: {len(milestones)} milestones for a backbone with {n} layer groups; "
                f"give at most {n}"
            )
        return super().setup(model, lr, head_lr, pretrained)

    def trainable_at(self, model: nn.Module, epoch: int) -> set[int]:
        n = len(model.backbone.layer_groups())
        return set(range(n - min(n, self.unfrozen_count(epoch)), n))

    def describe_phase(self, model: nn.Module, epoch: int) -> str:
        n = len(model.backbone.layer_groups())
        now, before = self.trainable_at(model, epoch), self.trainable_at(model, epoch - 1)
        new = ", ".join(str(i) for i in sorted(now - before, reverse=True))
        return (f"epoch {epoch + 1}: unfroze backbone group {new} (0 is the input end); "
                f"{len(now)} of {n} backbone groups train now")

    def backbone_frozen_at(self, epoch: int) -> bool:
        return self.unfrozen_count(epoch) == 0
