"""Fine-tuning strategies: which parameters train, in which groups, at which learning rates.

A strategy never runs a loop. It sets ``requires_grad``, builds the optimizer's parameter groups,
and may change them at epoch boundaries (unfreezing). Its schedule state is part of every
checkpoint so a resumed run continues the same schedule.

A strategy's *phase* at an epoch is what trains (:meth:`Strategy.trainable_at`) and at which base
rates (:meth:`Strategy.group_lrs`); both are functions of the epoch alone, so a resumed run
re-enters exactly the phase it was in. Strategies whose phase changes (freeze_then_unfreeze, lp_ft,
gradual_unfreeze) live in :mod:`finetunekit.strategies.schedules`.

A strategy owns its whole surface, in its own module:

* its options: ``Options``, a dataclass whose fields sit in the recipe's ``strategy:`` section
  (``strategy: {name: lora, lora_rank: 4}``) and whose ``__post_init__`` checks them, naming the
  field; :meth:`Strategy.check` and :meth:`Strategy.check_epochs` hold the checks that need
  ``strategy.name`` or ``train.epochs``. The options every strategy reads are :class:`CommonOptions`
  and :class:`finetunekit.strategies.regularizers.RegularizerOptions`. The recipe's
  ``StrategySpec`` is the union of these dataclasses (:func:`option_fields`);
* what it declares about itself: :attr:`Strategy.sets_linear_head` (the head is computed from
  pooled features, so a task whose head reads feature maps cannot use it),
  :attr:`Strategy.supports_layer_decay`;
* what it adds to the model (adapters): ``model.adapter`` describes it as ``{"kind": <strategy
  name>, ...}``, saved in ``finetunekit.json``; :meth:`Strategy.save_extra`,
  :meth:`Strategy.restore` and :meth:`Strategy.merge` write, re-insert and fold it, reached
  through :func:`saved_extras`, :func:`restore_added` and :func:`merge_added` by the run
  directory, the loader, the ``run:`` backbone source and export, which never name a strategy;
* how the model card describes it: :meth:`Strategy.card_schedule`, :meth:`Strategy.card_lines`.

Example::

    strategy = STRATEGIES.get("linear_probe")(StrategySpec(name="linear_probe"))
    groups = strategy.setup(model, lr=1e-3, head_lr=None)
    [g["name"] for g in groups]  # ["backbone", "head"]; with spec.layer_decay: "backbone.0", ...
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from torch import nn

from ..core.errors import FinetuneError, RecipeError, check_range
from ..core.registry import Registry

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


@dataclass
class CommonOptions:
    """``strategy:`` options that every strategy reads (the base :class:`Strategy` applies them)."""

    # BatchNorm running statistics while training: "frozen" keeps the pretrained ones (small
    # batches of a small data set make poor estimates), "train" updates them, "auto" freezes them
    # for pretrained backbones and trains them from scratch. Frozen layers always keep theirs.
    batchnorm: Literal["auto", "frozen", "train"] = "auto"
    # backbone layer group i of n (0 is the input end) trains at train.lr * layer_decay ** (n - 1 - i),
    # the head at train.head_lr; the optimizer then has one group per layer group
    # (backbone.0 ... backbone.{n-1}, head). Strategies with Strategy.supports_layer_decay False refuse it.
    layer_decay: float | None = None
    # text backbones: whether the pretrained input token-embedding table trains when its layer group
    # does. false (the default) keeps it frozen: its dense update every step was a fifth of a
    # MiniLM-L6 training step, and SST-2 accuracy was the same without it (docs/performance.md).
    # A backbone trained from scratch (model.pretrained: false) always trains it.
    train_token_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.layer_decay is not None:
            check_range("strategy.layer_decay", self.layer_decay, 0.0, 1.0, low_open=True)


class Strategy:
    """Base: everything trains in two groups, backbone and head."""

    summary: str = ""  # one line for `finetunekit list`; empty: the docstring's first line
    # this strategy's own options: a dataclass whose fields join the recipe's strategy: section
    Options: ClassVar[type | None] = None
    # True: the strategy computes a linear classifier head from pooled backbone features itself
    # (prototype, setfit), so a task whose head reads feature maps (segmentation, detection) cannot use it
    sets_linear_head: ClassVar[bool] = False
    # False: strategy.layer_decay has no effect (the original layers do not train in groups)
    supports_layer_decay: ClassVar[bool] = True
    # True: the head is fitted from one class per example (class means, a logistic regression on
    # contrastive pairs), so only task types with Task.single_class can use it
    needs_single_class: ClassVar[bool] = False
    # the modalities (by registered name) whose backbones it can train; None: every modality
    modalities: ClassVar[frozenset[str] | None] = None
    # True: it works on the encoder/decoder split of an encoder-decoder backbone, so only task
    # types that train one (Task.needs_decoder) can use it
    needs_decoder: ClassVar[bool] = False
    # True: no backbone parameter ever trains; a task type that writes text (Task.needs_decoder)
    # cannot use it, since its decoder is part of the backbone
    frozen_backbone: ClassVar[bool] = False

    # -- options -------------------------------------------------------------------------------
    @classmethod
    def check(cls, spec: Any) -> None:
        """Checks of the whole ``strategy:`` section once ``strategy.name`` is this strategy (each
        options dataclass has already checked its own fields). Raises RecipeError naming a field."""
        if not cls.supports_layer_decay and spec.layer_decay is not None:
            raise RecipeError(f"strategy.layer_decay: has no effect with strategy {spec.name}; leave it null")

    @classmethod
    def check_plan(cls, name: str, modality: str, task: Any) -> None:
        """Refuse a modality or a task type this strategy cannot train, from its declarations
        (:attr:`modalities`, :attr:`needs_single_class`); ``task`` is the task type's class. The
        resolve step calls it once both are known, before any training. Raises RecipeError naming
        ``strategy.name``."""
        why = cls.modality_refusal(name, modality) or cls.task_refusal(name, task)
        if why:
            raise RecipeError(f"strategy.name: {why}")

    @classmethod
    def modality_refusal(cls, name: str, modality: str) -> str | None:
        """Why this strategy cannot train a backbone of ``modality`` (after ``strategy.name: ``), or None."""
        if cls.modalities is not None and modality not in cls.modalities:
            return (f"{name}: is for {' or '.join(sorted(cls.modalities))} backbones, and this is a "
                    f"{modality} backbone; choose another strategy")
        return None

    @classmethod
    def task_refusal(cls, name: str, task: Any) -> str | None:
        """Why this strategy cannot train a task of type ``task`` (its class), from both sides'
        declarations (after ``strategy.name: ``), or None."""
        why = task.strategy_refusal(name)
        if why:
            return why
        if cls.needs_decoder and not getattr(task, "needs_decoder", False):
            return (f"{name} splits an encoder-decoder into its encoder and decoder, and a {task.type} task "
                    "trains an encoder; choose another strategy")
        if cls.frozen_backbone and getattr(task, "needs_decoder", False):
            return (f"{name} freezes the whole backbone, and a {task.type} model's decoder is part of it; "
                    "choose full, frozen_encoder or lora")
        if cls.needs_single_class and not task.single_class:
            return (f"{name} fits its head from one class per example, and a {task.type} task has "
                    "no single class per example; choose another strategy")
        return None

    @classmethod
    def check_epochs(cls, spec: Any, epochs: int) -> None:
        """Cross-field check once ``train.epochs`` is known: a schedule whose change falls after the
        last epoch would silently be another strategy. The error names ``train.epochs``."""

    @classmethod
    def card_schedule(cls, spec: Any) -> str:
        """How the trainable set changed during training, for the model card ('' when it did not)."""
        return ""

    @classmethod
    def card_lines(cls, spec: Any) -> list[str]:
        """Extra '- ...' lines of the model card's details (what the strategy added, how it is saved)."""
        return []

    # -- what the strategy adds to the model (adapters), saved with the run ---------------------
    @classmethod
    def save_extra(cls, model: nn.Module) -> dict[str, Callable[[Path], None]]:
        """Folders of the run directory, beside ``model.safetensors``, for what this strategy added
        to ``model`` (described by ``model.adapter``): folder name -> a function that fills a fresh
        folder (the run directory writes each atomically). Default: none."""
        return {}

    @classmethod
    def restore(cls, backbone: nn.Module, description: dict[str, Any]) -> None:
        """Re-insert what ``description`` (a saved ``model.adapter``) describes into a freshly
        built ``backbone``, in place, so the run's saved weights fit it."""
        raise FinetuneError(f"strategy {description.get('kind')!r} adds nothing to the model that a run directory could restore")

    @classmethod
    def merge(cls, backbone: nn.Module) -> None:
        """Fold what the strategy added into ``backbone``'s plain layers (same function, plain weights)."""

    @classmethod
    def describe(cls) -> str:
        return cls.summary or (cls.__doc__ or "").strip().splitlines()[0].replace("``", "").replace("spec.", "strategy.")

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.epoch = 0
        self.lr = 0.0  # train.lr and train.head_lr, kept by setup for the rates of later phases
        self.head_lr = 0.0
        self.pretrained = True  # set by setup: a backbone trained from scratch trains its token embeddings

    # -- what trains ---------------------------------------------------------------------------
    def trainable_groups(self, model: nn.Module) -> set[int]:
        """Indices of backbone layer groups that train from the start."""
        return set(range(len(model.backbone.layer_groups())))

    def trainable_at(self, model: nn.Module, epoch: int) -> set[int]:
        """Indices of backbone layer groups that train during ``epoch`` (0-based)."""
        return self.trainable_groups(model)

    def group_lrs(self, num_groups: int, epoch: int) -> dict[str, float]:
        """Base learning rate of each optimizer group, by name, during ``epoch``.

        With ``spec.layer_decay`` = d, backbone layer group i of n trains at ``lr * d**(n-1-i)``
        (the input end slowest: its features are the most general); the head at ``head_lr``.
        """
        decay = getattr(self.spec, "layer_decay", None)
        if decay is None:
            rates = {"backbone": self.lr}
        else:
            rates = {f"backbone.{i}": self.lr * decay ** (num_groups - 1 - i) for i in range(num_groups)}
        return {**rates, "head": self.head_lr}

    def setup(self, model: nn.Module, lr: float, head_lr: float | None, pretrained: bool = True) -> list[dict[str, Any]]:
        """Freeze/unfreeze parameters and return optimizer parameter groups.

        Every parameter goes into the optimizer, frozen ones too: a parameter without a gradient is
        skipped by torch optimizers (so it stays bitwise unchanged), and unfreezing later needs no
        new optimizer, which keeps optimizer state and checkpoints simple.
        """
        self.lr, self.head_lr = lr, head_lr or lr
        self.pretrained = pretrained
        groups = model.backbone.layer_groups()
        self._apply_trainable(model, self.trainable_at(model, 0))
        mode = getattr(self.spec, "batchnorm", "auto")
        model.freeze_batchnorm_stats = mode == "frozen" or (mode == "auto" and pretrained)
        params = dict(model.named_parameters())
        if getattr(self.spec, "layer_decay", None) is None:
            named = [("backbone", [params[f"backbone.{n}"] for group in groups for n in group])]
        else:
            named = [(f"backbone.{i}", [params[f"backbone.{n}"] for n in group]) for i, group in enumerate(groups)]
        named.append(("head", list(model.head.parameters())))
        rates = self.group_lrs(len(groups), 0)
        return [{"name": name, "params": ps, "base_lr": rates[name], "lr": rates[name]} for name, ps in named]

    def _apply_trainable(self, model: nn.Module, trainable: set[int]) -> None:
        named = dict(model.backbone.named_parameters())
        for index, group in enumerate(model.backbone.layer_groups()):
            for name in group:
                named[name].requires_grad_(index in trainable)
        if self.pretrained and not getattr(self.spec, "train_token_embeddings", True):
            # A pretrained token-embedding table (half of MiniLM-L6's 22.7M parameters) gets a dense
            # gradient, a zero fill and an optimizer update every step, for the few rows a batch
            # uses; freezing it made SST-2 training faster at the same accuracy (docs/performance.md).
            for name in model.backbone.token_embedding_names():
                named[name].requires_grad_(False)
        for p in model.head.parameters():
            p.requires_grad_(True)

    # -- schedule ------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: Any) -> str | None:
        """Called before each epoch; enters the epoch's phase and returns a message when it changes."""
        self.epoch = epoch
        if epoch == 0 or self._phase(model, epoch) == self._phase(model, epoch - 1):
            return None
        self._enter_phase(model, optimizer, epoch)
        return self.describe_phase(model, epoch)

    def describe_phase(self, model: nn.Module, epoch: int) -> str:
        """The log line for a phase change at ``epoch``."""
        n = len(model.backbone.layer_groups())
        return f"epoch {epoch + 1}: {len(self.trainable_at(model, epoch))} of {n} backbone layer groups train now"

    def _phase(self, model: nn.Module, epoch: int) -> tuple[set[int], dict[str, float]]:
        return self.trainable_at(model, epoch), self.group_lrs(len(model.backbone.layer_groups()), epoch)

    def _enter_phase(self, model: nn.Module, optimizer: Any, epoch: int) -> None:
        """requires_grad and base rates of ``epoch``; at an epoch start and when resuming."""
        trainable, rates = self._phase(model, epoch)
        self._apply_trainable(model, trainable)
        for group in optimizer.param_groups:  # weight-decay splits share their group's name
            if group.get("name") in rates:
                group["base_lr"] = rates[group["name"]]

    def restarts_schedule(self, epoch: int) -> bool:
        """True when the learning-rate schedule starts a new phase at this epoch."""
        return False

    def backbone_frozen_at(self, epoch: int) -> bool:
        """True when no backbone parameter trains during ``epoch``: the trainer may then train the
        head on cached backbone features (finetunekit.run.features) instead of running the backbone.

        Strategies whose trainable set changes over epochs override it with ``on_epoch_start``."""
        return False

    def fit_epoch(self, model: nn.Module, loader: Any, accelerator: Any, **context: Any) -> dict[str, Any] | None:
        """A strategy that trains without the shared gradient loop (prototype: class means;
        setfit: contrastive pairs, then the head) does its epoch here and returns
        ``{"loss", "samples", "seconds", "steps"}`` (optionally ``"trace"``); None (the default)
        means the trainer's loop runs. ``context``: epoch, seed, batch_size, quiet, and task (the
        run's :class:`finetunekit.tasks.Task`: a strategy that reports a loss asks ``task.loss``)."""
        return None

    def finalize(self, model: nn.Module) -> bool:
        """Called once after training (best epoch restored), before the final evaluation and the
        save: turn training-time structure into the saved model (LoRA merges its adapters).
        Returns True when the model's outputs may have changed, so the trainer re-evaluates."""
        return False

    # -- extra loss terms ----------------------------------------------------------------------
    def loss_terms(self, model: nn.Module, accelerator: Any, epochs: int) -> list[Any]:
        """Regularisers towards the pretrained model (L2-SP, feature distillation) from the spec,
        built on the set-up model before any checkpoint is restored (see .regularizers)."""
        from .regularizers import build_regularizers

        trains_backbone = not all(self.backbone_frozen_at(e) for e in range(epochs))
        return build_regularizers(self.spec, model, accelerator, trains_backbone)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module, optimizer: Any) -> None:
        """Called after the model and optimizer states are loaded into a freshly set-up run (which
        is in epoch 0's phase): re-enter the saved epoch's phase, or a resumed run would silently
        train with the layers of epoch 0 frozen again."""
        self.epoch = int(state["epoch"])
        if self.epoch > 0 and self._phase(model, self.epoch) != self._phase(model, 0):
            self._enter_phase(model, optimizer, self.epoch)


@STRATEGIES.register("full")
class Full(Strategy):
    """Every parameter trains."""


@STRATEGIES.register("linear_probe")
class LinearProbe(Strategy):
    """The backbone is a frozen feature extractor (BatchNorm statistics included)."""

    frozen_backbone = True

    def trainable_groups(self, model: nn.Module) -> set[int]:
        return set()

    def backbone_frozen_at(self, epoch: int) -> bool:
        return True


@STRATEGIES.register("last_n")
class LastN(Strategy):
    """The last ``spec.last_n`` backbone layer groups and the head train."""

    @dataclass
    class Options:
        last_n: int = 2  # backbone layer groups that train, counted from the output end

        def __post_init__(self) -> None:
            check_range("strategy.last_n", self.last_n, 0, 10_000)

    def trainable_groups(self, model: nn.Module) -> set[int]:
        n = len(model.backbone.layer_groups())
        return set(range(max(0, n - self.spec.last_n), n))


@STRATEGIES.register("frozen_encoder")
class FrozenEncoder(Strategy):
    """An encoder-decoder's encoder stays as pretrained; the decoder trains (a common Whisper recipe)."""

    needs_decoder = True

    def trainable_groups(self, model: nn.Module) -> set[int]:
        n = len(model.backbone.layer_groups())
        return set(range(model.backbone.encoder_groups(), n))


# -- the recipe's strategy: section, from every strategy's options ---------------------------------


def option_classes() -> list[type]:
    """The options dataclasses behind the ``strategy:`` section: the common ones, then each
    registered strategy's own, by strategy name."""
    from .regularizers import RegularizerOptions

    own = [STRATEGIES.get(n).Options for n in STRATEGIES.names()]
    return list(dict.fromkeys([CommonOptions, RegularizerOptions, *(o for o in own if o is not None)]))  # each once


def option_fields() -> list[tuple[str, Any, Any]]:
    """``(name, type, dataclasses.field)`` of every option, for ``dataclasses.make_dataclass``.

    Every field is accepted whatever ``strategy.name`` says (a search space may set
    ``strategy.lp_epochs`` while it chooses the strategy, ``name: null`` is resolved later, and
    saved recipes hold every field), so two strategies may share a field only with one type and
    default."""
    fields: dict[str, tuple[str, Any, Any]] = {}
    for options in option_classes():
        hints = typing.get_type_hints(options)
        for f in dataclasses.fields(options):
            entry = (f.name, hints[f.name], dataclasses.field(default=f.default, default_factory=f.default_factory))
            if f.name in fields and (fields[f.name][1], fields[f.name][2].default) != (entry[1], f.default):
                raise TypeError(f"strategy option {f.name!r} is declared twice with different types or defaults ({options.__qualname__})")
            fields.setdefault(f.name, entry)
    return list(fields.values())


def check_options(spec: Any) -> None:
    """Every options dataclass checks its fields' values in ``spec``; then the named strategy
    checks the section as a whole. Raises RecipeError naming the field."""
    for options in option_classes():
        names = [f.name for f in dataclasses.fields(options)]
        if not all(hasattr(spec, n) for n in names):
            # the recipe's section was built before this strategy registered (a plug-in imported
            # after finetunekit.run.recipe): its options cannot be recipe fields in this process
            if spec.name is not None and STRATEGIES.get(spec.name).Options is options:
                raise RecipeError(
                    f"strategy.name: strategy {spec.name!r} was registered after finetunekit.run.recipe was imported, so its "
                    f"options ({', '.join(names)}) are not recipe fields; import the module that registers it first"
                )
            continue
        options(**{n: getattr(spec, n) for n in names})
    if spec.name is not None:
        STRATEGIES.get(spec.name).check(spec)


# -- what a strategy added to a model, through the run directory -----------------------------------


def adding_strategy(description: dict[str, Any]) -> type[Strategy]:
    """The strategy that added what ``description`` (``model.adapter``; ``finetunekit.json``'s
    ``adapter``) describes: its ``kind`` is the strategy's name."""
    kind = description.get("kind") if isinstance(description, dict) else None
    if not isinstance(kind, str) or kind not in STRATEGIES:
        raise FinetuneError(f"unknown adapter kind {kind!r} in the run directory")
    return STRATEGIES.get(kind)


def saved_extras(model: nn.Module) -> dict[str, Callable[[Path], None]]:
    """Folders the run directory gets for what a strategy added to ``model`` (none for a plain model)."""
    added = getattr(model, "adapter", None)
    return adding_strategy(added).save_extra(model) if added is not None else {}


def restore_added(model: nn.Module, description: dict[str, Any]) -> None:
    """Re-insert the described additions into ``model.backbone`` and record them on the model."""
    adding_strategy(description).restore(model.backbone, description)
    model.adapter = dict(description)


def merge_added(model: nn.Module) -> bool:
    """Fold what a strategy added into ``model.backbone``'s plain layers; True when there was any."""
    added = getattr(model, "adapter", None)
    if added is None:
        return False
    adding_strategy(added).merge(model.backbone)
    model.adapter = None
    return True


# Registers the strategies defined in submodules, once Strategy exists: LoRA through peft (peft
# itself is imported lazily), and those whose phase changes over epochs.
from . import lora, prototype, schedules, setfit  # noqa: E402,F401


def supported_strategies(task: Any, modality: str | None = None) -> list[str]:
    """The strategies a task type (its class) trains with: its own when it declares them
    (``Task.own_strategies``), else the registry's whose declarations allow it (and ``modality``,
    when given).

    Example::

        supported_strategies(TASKS.get("regression"))     # no prototype, no setfit
        supported_strategies(TASKS.get("retrieval"))      # ['lit', 'full', 'lora_text', 'projections']
    """
    if task.own_strategies is not None:
        return list(task.own_strategies)
    return [n for n in STRATEGIES.names()
            if STRATEGIES.get(n).task_refusal(n, task) is None
            and (modality is None or STRATEGIES.get(n).modality_refusal(n, modality) is None)]
