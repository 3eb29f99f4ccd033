"""Fine-tuning strategies: which parameters train, in which groups, at which learning rates.

A strategy never runs a loop. It sets ``requires_grad``, builds the optimizer's parameter groups,
and may change them at epoch boundaries (unfreezing). Its schedule state is part of every
checkpoint so a resumed run continues the same schedule.

Example::

    strategy = STRATEGIES.get("linear_probe")(StrategySpec(name="linear_probe"))
    groups = strategy.setup(model, lr=1e-3, head_lr=None)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import Registry

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


class Strategy:
    """Base: everything trains in two groups, backbone and head."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.epoch = 0

    # -- what trains ---------------------------------------------------------------------------
    def trainable_groups(self, model: nn.Module) -> set[int]:
        """Indices of backbone layer groups that train from the start."""
        return set(range(len(model.backbone.layer_groups())))

    def setup(self, model: nn.Module, lr: float, head_lr: float | None, pretrained: bool = True) -> list[dict[str, Any]]:
        """Freeze/unfreeze parameters and return optimizer parameter groups.

        Every parameter goes into the optimizer, frozen ones too: a parameter without a gradient is
        skipped by torch optimizers (so it stays bitwise unchanged), and unfreezing later needs no
        new optimizer, which keeps optimizer state and checkpoints simple.
        """
        groups = model.backbone.layer_groups()
        self._apply_trainable(model, self.trainable_groups(model))
        mode = getattr(self.spec, "batchnorm", "auto")
        model.freeze_batchnorm_stats = mode == "frozen" or (mode == "auto" and pretrained)
        params = dict(model.named_parameters())
        backbone = [params[f"backbone.{n}"] for group in groups for n in group]
        return [
            {"name": "backbone", "params": backbone, "base_lr": lr, "lr": lr},
            {"name": "head", "params": list(model.head.parameters()), "base_lr": head_lr or lr, "lr": head_lr or lr},
        ]

    def _apply_trainable(self, model: nn.Module, trainable: set[int]) -> None:
        named = dict(model.backbone.named_parameters())
        for index, group in enumerate(model.backbone.layer_groups()):
            for name in group:
                named[name].requires_grad_(index in trainable)
        for p in model.head.parameters():
            p.requires_grad_(True)

    # -- schedule ------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: Any) -> str | None:
        """Called before each epoch; returns a message when the set of trainable parameters changes."""
        self.epoch = epoch
        return None

    def restarts_schedule(self, epoch: int) -> bool:
        """True when the learning-rate schedule starts a new phase at this epoch."""
        return False

    def backbone_frozen_at(self, epoch: int) -> bool:
        """True when no backbone parameter trains during ``epoch``: the trainer may then train the
        head on cached backbone features (finetunekit.features) instead of running the backbone.

        Strategies whose trainable set changes over epochs override it with ``on_epoch_start``."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module, optimizer: Any) -> None:
        self.epoch = int(state["epoch"])


@STRATEGIES.register("full")
class Full(Strategy):
    """Every parameter trains."""


@STRATEGIES.register("linear_probe")
class LinearProbe(Strategy):
    """The backbone is a frozen feature extractor (BatchNorm statistics included)."""

    def trainable_groups(self, model: nn.Module) -> set[int]:
        return set()

    def backbone_frozen_at(self, epoch: int) -> bool:
        return True


@STRATEGIES.register("last_n")
class LastN(Strategy):
    """The last ``spec.last_n`` backbone layer groups and the head train."""

    def trainable_groups(self, model: nn.Module) -> set[int]:
        n = len(model.backbone.layer_groups())
        return set(range(max(0, n - self.spec.last_n), n))


@STRATEGIES.register("freeze_then_unfreeze")
class FreezeThenUnfreeze(Strategy):
    """Head only for ``spec.freeze_epochs`` epochs, then everything at the backbone's rate."""

    def trainable_groups(self, model: nn.Module) -> set[int]:
        return set() if self.spec.freeze_epochs > 0 else set(range(len(model.backbone.layer_groups())))

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: Any) -> str | None:
        self.epoch = epoch
        if epoch == self.spec.freeze_epochs and epoch > 0:
            self._unfreeze(model, optimizer)
            return f"epoch {epoch + 1}: backbone unfrozen; every group now trains at lr {optimizer.param_groups[0]['base_lr']:g}"
        return None

    def _unfreeze(self, model: nn.Module, optimizer: Any) -> None:
        self._apply_trainable(model, set(range(len(model.backbone.layer_groups()))))
        backbone_lr = next(g["base_lr"] for g in optimizer.param_groups if g.get("name") == "backbone")
        for group in optimizer.param_groups:
            group["base_lr"] = backbone_lr

    def restarts_schedule(self, epoch: int) -> bool:
        return epoch == self.spec.freeze_epochs and epoch > 0

    def backbone_frozen_at(self, epoch: int) -> bool:
        return epoch < self.spec.freeze_epochs

    def load_state_dict(self, state: dict[str, Any], model: nn.Module, optimizer: Any) -> None:
        # The optimizer state already holds the new base_lr; only requires_grad needs redoing.
        super().load_state_dict(state, model, optimizer)
        if self.epoch >= self.spec.freeze_epochs:
            self._apply_trainable(model, set(range(len(model.backbone.layer_groups()))))
