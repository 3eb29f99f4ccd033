"""Typed, validated recipes.

A recipe is one dataclass per concern. Every field is checked when the recipe is built, and an
error names the field (``train.lr``), never a line of our code.

Example::

    from finetunekit import Recipe
    recipe = Recipe.from_dict({"data": {"train": "photos/"}, "train": {"epochs": 3}})
    recipe = recipe.with_overrides(["train.lr=3e-4", "strategy.name=linear_probe"])
    recipe.to_dict()  # plain dict, ready for YAML

Fields left as ``None`` (``train.lr``, ``train.epochs``, ...) are filled per modality by
:func:`finetunekit.defaults.resolve`, and the resolved recipe is saved in the run directory.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from .errors import RecipeError, did_you_mean

Optimizer = Literal["sgd", "adam", "adamw"]
Scheduler = Literal["constant", "cosine", "linear"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Pooling = Literal["auto", "cls", "mean"]
Tracker = Literal["tensorboard", "mlflow"]


@dataclass
class ModelSpec:
    """Where the pretrained backbone comes from and what head goes on top."""

    backbone: str = "bundled:efficientnet_lite0"
    pretrained: bool = True
    pooling: Pooling = "auto"  # text backbones: how token states become one vector
    head_dropout: float = 0.0
    image_size: int | None = None  # override the backbone's input resolution

    def __post_init__(self) -> None:
        _check_range("model.head_dropout", self.head_dropout, 0.0, 1.0, high_open=True)
        if self.image_size is not None:
            _check_range("model.image_size", self.image_size, 8, 4096)
        if not self.backbone.strip():
            raise RecipeError("model.backbone: must name a backbone, e.g. 'bundled:efficientnet_lite0'")


@dataclass
class DataSpec:
    """Where the labelled examples are and how to read them."""

    train: str = ""  # image folder, or a .csv/.tsv/.jsonl file of texts
    val: str | None = None  # when absent, a seeded stratified split of `train`
    val_fraction: float = 0.2
    text_column: str | None = None  # None: 'text', 'sentence' or the first non-label column
    label_column: str = "label"
    max_length: int = 128  # tokens, text only
    max_train_samples: int | None = None  # keep the first N training rows (after shuffling by seed)
    augment: Literal["none", "light"] = "light"  # train-time image augmentation
    num_workers: int = 0
    # images that PIL cannot read (corrupt, truncated, not an image): "fail" stops before training
    # and lists them, "skip" leaves them out and reports how many
    bad_images: Literal["fail", "skip"] = "fail"

    def __post_init__(self) -> None:
        _check_range("data.val_fraction", self.val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        _check_range("data.max_length", self.max_length, 2, 100_000)
        _check_range("data.num_workers", self.num_workers, 0, 256)
        if self.max_train_samples is not None:
            _check_range("data.max_train_samples", self.max_train_samples, 1, 10**12)


@dataclass
class StrategySpec:
    """Which parameters train, and when.

    * ``full``: everything trains.
    * ``linear_probe``: backbone frozen (BatchNorm statistics too), only the head trains.
    * ``last_n``: the last ``last_n`` layer groups of the backbone and the head train.
    * ``freeze_then_unfreeze``: the head alone (at ``train.head_lr``) for ``freeze_epochs`` epochs,
      then everything at ``train.lr``, with the learning-rate schedule restarted.

    ``name: null`` picks the modality's default (finetunekit.defaults).
    """

    name: str | None = None
    last_n: int = 2
    freeze_epochs: int = 1
    # BatchNorm running statistics while training: "frozen" keeps the pretrained ones (small
    # batches of a small data set make poor estimates), "train" updates them, "auto" freezes them
    # for pretrained backbones and trains them from scratch. Frozen layers always keep theirs.
    batchnorm: Literal["auto", "frozen", "train"] = "auto"

    def __post_init__(self) -> None:
        from .strategies import STRATEGIES  # local import: strategies import torch

        if self.name is not None and self.name not in STRATEGIES:
            raise RecipeError(
                f"strategy.name: unknown strategy {self.name!r}{did_you_mean(self.name, STRATEGIES.names())}; "
                f"choose one of: {', '.join(STRATEGIES.names())}"
            )
        _check_range("strategy.last_n", self.last_n, 0, 10_000)
        _check_range("strategy.freeze_epochs", self.freeze_epochs, 0, 10_000)


@dataclass
class TrainSpec:
    """The optimisation loop. ``None`` means: the modality's default (see finetunekit.defaults)."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    head_lr: float | None = None  # learning rate of the new head; None: the modality's default
    optimizer: Optimizer = "adamw"
    momentum: float = 0.9  # sgd only
    weight_decay: float | None = None
    scheduler: Scheduler | None = None
    warmup_ratio: float | None = None
    label_smoothing: float = 0.0
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    precision: Precision = "fp32"
    early_stopping_patience: int | None = None  # epochs without improvement; None: off
    metric: Literal["accuracy", "macro_f1", "loss"] = "accuracy"  # chooses the best epoch
    restore_best: bool = True
    seed: int = 0
    # checkpoints (RUN_DIR/checkpoints) at every epoch's end and, when set, every N optimizer steps;
    # the newest keep_checkpoints are kept, and the best epoch's; removed once the run finishes
    # unless keep_checkpoints_when_done
    checkpoint_every_steps: int | None = None
    keep_checkpoints: int = 2
    keep_checkpoints_when_done: bool = False
    # experiment trackers, through Accelerate, written under the run directory; metrics.jsonl is
    # always written
    report_to: list[Tracker] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.epochs is not None:
            _check_range("train.epochs", self.epochs, 1, 100_000)
        if self.batch_size is not None:
            _check_range("train.batch_size", self.batch_size, 1, 1_000_000)
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if value is not None:
                _check_range(f"train.{name}", value, 0.0, 10.0, low_open=True)
        _check_range("train.momentum", self.momentum, 0.0, 1.0, high_open=True)
        if self.weight_decay is not None:
            _check_range("train.weight_decay", self.weight_decay, 0.0, 10.0)
        if self.warmup_ratio is not None:
            _check_range("train.warmup_ratio", self.warmup_ratio, 0.0, 1.0, high_open=True)
        _check_range("train.label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        _check_range("train.grad_accum_steps", self.grad_accum_steps, 1, 100_000)
        if self.max_grad_norm is not None:
            _check_range("train.max_grad_norm", self.max_grad_norm, 0.0, 1e9, low_open=True)
        if self.early_stopping_patience is not None:
            _check_range("train.early_stopping_patience", self.early_stopping_patience, 1, 100_000)
        if self.checkpoint_every_steps is not None:
            _check_range("train.checkpoint_every_steps", self.checkpoint_every_steps, 1, 10**9)
        _check_range("train.keep_checkpoints", self.keep_checkpoints, 1, 10_000)
        if len(set(self.report_to)) != len(self.report_to):
            raise RecipeError(f"train.report_to: {self.report_to} names a tracker twice")


@dataclass
class Recipe:
    """A whole fine-tuning run. Build it in Python, or load it from YAML with :meth:`from_yaml`."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    strategy: StrategySpec = field(default_factory=StrategySpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any, where: str = "recipe") -> Recipe:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise RecipeError(f"{where}: expected a mapping of sections, got {type(raw).__name__}")
        return _build(cls, raw, prefix="")

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise RecipeError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
        try:
            return cls.from_dict(raw)
        except RecipeError as exc:
            raise RecipeError(f"{path}: {exc}") from None

    def with_overrides(self, overrides: list[str]) -> Recipe:
        """Apply ``section.field=value`` strings (values parsed as YAML scalars)."""
        raw = self.to_dict()
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or "." not in key:
                raise RecipeError(f"override {item!r}: expected section.field=value, e.g. train.lr=3e-4")
            section, _, name = key.strip().partition(".")
            if section not in raw:
                raise RecipeError(f"override {item!r}: unknown section {section!r}{did_you_mean(section, raw)}")
            try:
                parsed = yaml.safe_load(value) if value.strip() else None
            except yaml.YAMLError:
                parsed = value
            raw[section][name] = parsed
        return Recipe.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **sections: Any) -> Recipe:
        """Copy with whole sections or ``section=dict(field=value)`` updates; the original is untouched."""
        raw = self.to_dict()
        for section, updates in sections.items():
            if section not in raw:
                raise RecipeError(f"unknown recipe section {section!r}{did_you_mean(section, raw)}")
            raw[section] = dataclasses.asdict(updates) if dataclasses.is_dataclass(updates) else {**raw[section], **updates}
        return Recipe.from_dict(raw)


# -- validation helpers ----------------------------------------------------------------------------


def _check_range(
    name: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"{name}: must be a finite number, got {value}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise RecipeError(f"{name}: {value} is out of range {lo}{low}, {high}{hi}")


def _build(cls: type, raw: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str) or key not in names:
            raise RecipeError(f"unknown field {full!r}{did_you_mean(str(key), names)}; known: {', '.join(names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise RecipeError(f"{full}: expected a mapping of fields, got {type(value).__name__}")
            kwargs[key] = _build(hint, value, prefix=f"{full}.")
        else:
            kwargs[key] = _coerce(full, value, hint)
    try:
        return cls(**kwargs)
    except RecipeError:
        raise
    except (TypeError, ValueError) as exc:  # defensive: should not happen after coercion
        raise RecipeError(f"{prefix.rstrip('.') or 'recipe'}: {exc}") from None


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(name, value, option)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(errors[0] if len(errors) == 1 else f"{name}: {value!r} is not valid ({'; '.join(errors)})")
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise RecipeError(
                f"{name}: {value!r} is not one of {', '.join(map(repr, choices))}{did_you_mean(str(value), map(str, choices))}"
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{name}: expected a list, got {type(value).__name__}")
        (item_hint,) = get_args(hint)
        return [_coerce(f"{name}[{i}]", v, item_hint) for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{name}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise RecipeError(f"{name}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise RecipeError(f"{name}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise RecipeError(f"{name}: expected a string, got {value!r}")
    raise RecipeError(f"{name}: unsupported value {value!r}")
