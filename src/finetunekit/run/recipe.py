"""Typed, validated recipes.

A recipe is one dataclass per concern. Every field is checked when the recipe is built, and an
error names the field (``train.lr``), never a line of our code.

Example::

    from finetunekit import Recipe
    recipe = Recipe.from_dict({"data": {"train": "photos/"}, "train": {"epochs": 3}})
    recipe = recipe.with_overrides(["train.lr=3e-4", "strategy.name=linear_probe"])
    recipe.to_dict()  # plain dict, ready for YAML

Fields left as ``None`` (``train.lr``, ``train.epochs``, ...) are filled per modality by
the resolve step (:func:`finetunekit.run.plan.resolve`), and the resolved recipe is saved in the run directory.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import yaml

from ..core.errors import RecipeError, did_you_mean, shown

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
    # "zero_shot:RUN_DIR": start a classification head from an image-text retrieval run's text
    # embeddings of the class names (finetunekit.retrieval.head_init); None: a new random head
    head_init: str | None = None

    def __post_init__(self) -> None:
        _check_range("model.head_dropout", self.head_dropout, 0.0, 1.0, high_open=True)
        if self.head_init is not None and (not isinstance(self.head_init, str) or not self.head_init.startswith("zero_shot:")
                                           or not self.head_init[len("zero_shot:"):].strip()):
            raise RecipeError(f"model.head_init: expected 'zero_shot:RUN_DIR' (an image-text retrieval run), got {self.head_init!r}")
        if self.image_size is not None:
            _check_range("model.image_size", self.image_size, 8, 4096)
        if not self.backbone.strip():
            raise RecipeError("model.backbone: must name a backbone, e.g. 'bundled:efficientnet_lite0'")


@dataclass
class DataSpec:
    """Where the labelled examples are and how to read them."""

    train: str = ""  # image folder, or a .csv/.tsv/.jsonl/.parquet table of texts or of image files
    val: str | None = None  # when absent, a seeded stratified split of `train`
    val_fraction: float = 0.2
    text_column: str | None = None  # None: 'text', 'sentence' or the first non-label column
    # sentence pairs: two columns, e.g. [sentence1, sentence2], encoded together the way the
    # tokenizer encodes pairs (segment ids; truncation cuts the longer text first); replaces text_column
    text_columns: list[str] | None = None
    # image tables: the column of image files, relative to the table's folder (None: 'file',
    # 'image', 'path', ... or the first non-label column)
    image_column: str | None = None
    # image tables: the folder their file paths are relative to (None: the table's own folder)
    image_root: str | None = None
    label_column: str | list[str] = "label"  # several columns: several regression targets
    # detection: text files naming the images (one file name a line) of the training and the
    # validation split, when both splits share one annotation file (Penn-Fudan's train.txt / val.txt)
    train_list: str | None = None
    val_list: str | None = None
    max_length: int = 128  # tokens, text only
    max_train_samples: int | None = None  # keep the first N training rows (after shuffling by seed)
    # few-shot: keep K training examples of each class, drawn with train.seed (a class with fewer
    # keeps all of them); the validation set is untouched
    shots_per_class: int | None = None
    # train-time image augmentation: "light" is a random resized crop and a horizontal flip;
    # "strong" adds TrivialAugmentWide (one random photometric or geometric operation per image)
    # and RandomErasing (p=0.25). Either is a function of (train.seed, epoch, example) alone.
    # (audio: "light" shifts and scales a clip, "strong" adds SpecAugment, "noise" is light plus
    # background noise from noise_dir mixed in; docs/audio.md)
    augment: Literal["none", "light", "strong", "noise"] = "light"
    # audio, augment "noise": a folder of recordings (any length) mixed into training clips
    noise_dir: str | None = None
    # the smallest share of an image's area the random resized crop keeps (light and strong, tasks
    # on whole images): 0.25 suits photos of objects; images whose subject fills a fixed frame
    # (aligned face crops, centred documents) lose what they are about below about 0.7
    crop_scale: float = 0.25
    # training batches: "shuffle" visits every example once per epoch; "balanced" draws the same
    # number of examples with replacement, each class equally likely (rare classes repeat, common
    # ones are subsampled). Either order is a function of (train.seed, epoch) and resumes exactly.
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    num_workers: int = 0
    # While the backbone is frozen (linear probe, head-only epochs), train the head on backbone
    # features computed once and cached on disk (cache_dir; default $FINETUNEKIT_CACHE_DIR or
    # ~/.cache/finetunekit/features). cache_views: 0 caches un-augmented images (one pass; no
    # augmentation in the frozen epochs); K > 0 caches K augmented views, epoch e using view e mod K
    # (K >= frozen epochs gives exactly the uncached run). See finetunekit.run.features.
    feature_cache: bool = True
    cache_views: int = 0
    cache_dir: str | None = None
    # images that PIL cannot read (corrupt, truncated, not an image): "fail" stops before training
    # and lists them, "skip" leaves them out and reports how many
    bad_images: Literal["fail", "skip"] = "fail"
    # images whose header promises more pixels are refused (or skipped, with bad_images: skip)
    # before they are decoded: a few-KB PNG can decode to gigabytes. The default is Pillow's own
    # refusal threshold; predict and evaluate apply the run's value (finetunekit.data.images).
    max_image_pixels: int = 178_956_970

    def __post_init__(self) -> None:
        _check_range("data.val_fraction", self.val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        _check_range("data.max_length", self.max_length, 2, 100_000)
        _check_range("data.num_workers", self.num_workers, 0, 256)
        _check_range("data.cache_views", self.cache_views, 0, 1000)
        _check_range("data.crop_scale", self.crop_scale, 0.0, 1.0, low_open=True)
        _check_range("data.max_image_pixels", self.max_image_pixels, 1, 10**12)
        if self.max_train_samples is not None:
            _check_range("data.max_train_samples", self.max_train_samples, 1, 10**12)
        if self.text_columns is not None:
            columns = self.text_columns
            if len(columns) != 2 or not all(c.strip() for c in columns):
                raise RecipeError(f"data.text_columns: give two column names (first and second text of each pair), got {columns}")
            if columns[0] == columns[1]:
                raise RecipeError(f"data.text_columns: names column {columns[0]!r} twice; a pair needs two columns")
            labels = [self.label_column] if isinstance(self.label_column, str) else self.label_column
            if set(labels) & set(columns):
                raise RecipeError(f"data.text_columns: {sorted(set(labels) & set(columns))[0]!r} is a label column (data.label_column)")
            if self.text_column is not None:
                raise RecipeError("data.text_column: excludes data.text_columns; give one text column, or two for pairs (data.text_columns)")
        if self.shots_per_class is not None:
            _check_range("data.shots_per_class", self.shots_per_class, 1, 10**9)


@dataclass
class TaskSpec:
    """What is predicted (finetunekit.tasks; docs/tasks.md).

    ``type: null`` infers it from the training labels (and prints what it chose): lists (JSONL) or
    ``a|b`` cells mean ``multilabel``; numbers with a non-integer among them ``regression``;
    anything else ``classification``. The run directory's recipe.yaml keeps the resolved type.

    Every other field of the section belongs to the task type, which declares it in its own
    options dataclass (``Task.Options``: ``RegressionOptions`` in finetunekit.tasks.regression, ...)
    and is written beside ``type`` (``task: {type: regression, loss: huber}``). Options of one type
    may not be set for another. Example::

        spec = Recipe.from_dict({"task": {"type": "regression", "loss": "huber"}}).task
        spec.options              # RegressionOptions(loss='huber', huber_delta=None, standardize=None)
        spec.option("loss")       # 'huber'
    """

    type: str | None = None
    # entries of `tasks:` only (several tasks on one backbone): the task's name, its label
    # column(s) and its weight in the summed loss
    name: str | None = None
    label_column: str | list[str] | None = None
    weight: float | None = None
    # the type's options dataclass; while the type is left to inference, a dict of the options
    # given (each checked by a task type that declares it), made typed by :meth:`check_type`
    options: Any = None

    SECTION: ClassVar[str] = "task"  # how its own checks name it; entries of tasks: are tasks[i]
    COMMON: ClassVar[tuple[str, ...]] = ("type", "name", "label_column", "weight")

    def __post_init__(self) -> None:
        from ..tasks import TASKS  # local import: tasks import torch

        if self.type is not None and self.type not in TASKS:
            raise RecipeError(
                f"task.type: unknown task type {self.type!r}{did_you_mean(self.type, TASKS.names())}; "
                f"choose one of: {', '.join(TASKS.names())}"
            )
        if self.type is not None and TASKS.get(self.type).composite:
            raise RecipeError(f"task.type: {self.type} is built from a `tasks:` list of named tasks; write that instead")
        if self.weight is not None:
            _check_range("task.weight", self.weight, 0.0, 1e6, low_open=True)
        if self.options == {}:
            self.options = None
        if self.type is not None and not dataclasses.is_dataclass(self.options):
            self.options = self._typed(self.type, dict(self.options or {}), "task.")

    @classmethod
    def from_raw(cls, raw: dict[str, Any], prefix: str) -> TaskSpec:
        """The section as YAML writes it (``{type: regression, loss: huber}``); ``prefix`` names
        it in errors (``task.``, ``tasks[1].``)."""
        hints = typing.get_type_hints(cls)
        common = {k: _coerce(f"{prefix}{k}", v, hints[k]) for k, v in raw.items() if k in cls.COMMON}
        given = {k: v for k, v in raw.items() if k not in cls.COMMON}
        try:
            spec = cls(**common)  # the type is checked before its options
            if spec.type is not None:
                return dataclasses.replace(spec, options=cls._typed(spec.type, given, prefix))
            return dataclasses.replace(spec, options=cls._untyped(given, prefix) or None)
        except RecipeError as exc:
            if prefix != "task." and str(exc).startswith("task."):
                raise RecipeError(prefix + str(exc)[len("task.") :]) from None
            raise

    @staticmethod
    def _owners() -> dict[str, list[str]]:
        """Each task option's name -> the task types that declare it."""
        from ..tasks import TASKS

        owners: dict[str, list[str]] = {}
        for kind in TASKS.names():
            for f in dataclasses.fields(TASKS.get(kind).Options):
                owners.setdefault(f.name, []).append(kind)
        return owners

    @classmethod
    def _unknown(cls, key: Any, prefix: str, names: list[str]) -> RecipeError:
        return RecipeError(f"unknown field {shown(f'{prefix}{key}')}{did_you_mean(str(key), names)}; known: {', '.join(names)}")

    @classmethod
    def _typed(cls, kind: str, given: dict[str, Any], prefix: str) -> Any:
        """``given`` read by task type ``kind``'s options dataclass; another type's option is an
        error naming the field, unless it is null (recipe.yaml files of older runs list every
        type's options, null)."""
        from ..tasks import TASKS

        options_cls = TASKS.get(kind).Options
        own = [f.name for f in dataclasses.fields(options_cls)]
        owners = cls._owners()
        kept = {}
        for key, value in given.items():
            if key in own:
                kept[key] = value
            elif key in owners:
                if value is not None:
                    raise RecipeError(f"{prefix}{key}: applies to {owners[key][0]} tasks only, and this task is {kind}; remove it")
            else:
                raise cls._unknown(key, prefix, [*cls.COMMON, *own])
        return _build(options_cls, kept, prefix)

    @classmethod
    def _untyped(cls, given: dict[str, Any], prefix: str) -> dict[str, Any]:
        """Options given while the type is left to inference, each checked by a type declaring it."""
        from ..tasks import TASKS

        owners = cls._owners()
        kept = {}
        for key, value in given.items():
            if key not in owners:
                raise cls._unknown(key, prefix, [*cls.COMMON, *owners])
            if value is not None:
                kept[key] = getattr(_build(TASKS.get(owners[key][0]).Options, {key: value}, prefix), key)
        return kept

    def check_type(self, type_: str, where: str = "task") -> TaskSpec:
        """This section for task type ``type_`` (inferred, or written): its options read by the
        type's own dataclass; options of another type are an error naming the field (``where``:
        ``task``, or ``tasks[i]`` for an entry of several tasks)."""
        given = dataclasses.asdict(self.options) if dataclasses.is_dataclass(self.options) else dict(self.options or {})
        return dataclasses.replace(self, type=type_, options=self._typed(type_, given, f"{where}."))

    def option(self, name: str) -> Any:
        """One option's value (None: not set, or not an option of this type)."""
        if isinstance(self.options, dict):
            return self.options.get(name)
        return getattr(self.options, name, None)

    def to_dict(self) -> dict[str, Any]:
        """The section as YAML writes it: the common fields, then the type's options."""
        given = dataclasses.asdict(self.options) if dataclasses.is_dataclass(self.options) else dict(self.options or {})
        return {"type": self.type, "name": self.name, "label_column": self.label_column, "weight": self.weight, **given}


@dataclass
class _StrategyName:
    """The field the recipe itself reads: which strategy. ``name: null`` picks the modality's default
    (finetunekit.run.defaults)."""

    name: str | None = None

    def __post_init__(self) -> None:
        from ..strategies import STRATEGIES, check_options

        if self.name is not None and self.name not in STRATEGIES:
            raise RecipeError(
                f"strategy.name: unknown strategy {shown(self.name)}{did_you_mean(self.name, STRATEGIES.names())}; "
                f"choose one of: {', '.join(STRATEGIES.names())}"
            )
        check_options(self)

    @property
    def strategy_class(self) -> Any:
        """The registered :class:`finetunekit.strategies.Strategy` subclass ``name`` picks (None
        while ``name`` is null): what it declares about itself (``sets_linear_head``, ...)."""
        from ..strategies import STRATEGIES

        return STRATEGIES.get(self.name) if self.name is not None else None

    def check_epochs(self, epochs: int) -> None:
        """Cross-field check, run once ``train.epochs`` is known (at parse or resolve time), by the
        named strategy (:meth:`finetunekit.strategies.Strategy.check_epochs`). The error names
        ``train.epochs`` (removing it defers the check to the modality's default)."""
        if self.name is not None:
            self.strategy_class.check_epochs(self, epochs)


def _strategy_spec() -> type:
    from ..strategies import option_fields

    return dataclasses.make_dataclass(
        "StrategySpec", option_fields(), bases=(_StrategyName,),
        namespace={"__module__": __name__, "__doc__": _STRATEGY_DOC},
    )


_STRATEGY_DOC = """Which parameters train, and when: ``name`` (a registered strategy; ``finetunekit list``
    shows them) and every strategy's options, one flat section (``strategy: {name: last_n, last_n:
    4}``). Each strategy declares its options as a dataclass in its own module
    (finetunekit.strategies: ``Strategy.Options``, with ``CommonOptions`` and ``RegularizerOptions``
    for every strategy) and checks them there, naming the field; this class is their union, so a
    saved recipe holds every field and loads whatever strategy it names.

    Example::

        StrategySpec(name="last_n", last_n=4).last_n  # 4
    """

# Built from the registered strategies' options when the recipe module is imported (this imports
# the strategies, and with them torch; building any recipe did so already).
StrategySpec = _strategy_spec()


@dataclass
class TrainSpec:
    """The optimisation loop. ``None`` means: the modality's default (see finetunekit.run.defaults)."""

    epochs: int | None = None
    batch_size: int | None = None
    # "auto": a learning-rate range test picks it before training (finetunekit lr-find)
    lr: float | Literal["auto"] | None = None
    head_lr: float | Literal["auto"] | None = None  # learning rate of the new head; None: the modality's default
    optimizer: Optimizer = "adamw"
    momentum: float = 0.9  # sgd only
    weight_decay: float | None = None
    scheduler: Scheduler | None = None
    warmup_ratio: float | None = None
    label_smoothing: float = 0.0
    # inverse-frequency class weights in the cross-entropy: "balanced" weighs class c by
    # N / (classes * N_c) over the training set, so every class carries the same total weight
    class_weights: Literal["none", "balanced"] = "none"
    # images only: mix pairs of training images (mixup: a convex blend with ratio ~ Beta(a, a);
    # cutmix: a pasted box of area ratio ~ Beta(a, a)) and their one-hot labels, trained with a
    # soft-label cross-entropy; 0 = off. With both set, each batch picks one at random.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    # exponential moving average of the weights, updated after every optimizer step with decay
    # min(ema_decay, (1 + t) / (10 + t)) at update t (short runs are not stuck near the start);
    # validation, the best epoch and the saved model use the averaged weights. None = off;
    # typical 0.99 (hundreds of steps) to 0.9999 (tens of thousands).
    ema_decay: float | None = None
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    # "auto": bf16 autocast where the hardware runs it fast (CUDA with bf16, CPUs with AMX or
    # AVX512-BF16), fp16 on older GPUs, fp32 otherwise; see finetunekit.core.runtime.resolve_precision
    precision: Precision = "auto"
    early_stopping_patience: int | None = None  # epochs without improvement; None: off
    # chooses the best epoch: "loss" or one of the task's metrics (classification: accuracy,
    # macro_f1...; regression: rmse, mae, r2, pearson, spearman; multilabel: micro_f1, macro_f1,
    # map...); None: the task's primary metric (accuracy, spearman, macro_f1)
    metric: str | None = None
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
    # torch.compile the model (TorchInductor, dynamic shapes). Pays off on long runs with fixed
    # shapes; compiling costs tens of seconds up front (docs/performance.md has measurements)
    compile: bool = False
    # images: progressive resizing. Training epoch e of E crops its images to the input size times
    # s + (1 - s) * e / (E - 1), rounded to a multiple of 16, with s = progressive_resize: early
    # epochs see smaller images and cost less; the last epoch and every evaluation use the full
    # size. 1.0 turns it off; null takes the modality's default (finetunekit.run.defaults).
    progressive_resize: float | None = None

    def __post_init__(self) -> None:
        if self.epochs is not None:
            _check_range("train.epochs", self.epochs, 1, 100_000)
        if self.batch_size is not None:
            _check_range("train.batch_size", self.batch_size, 1, 1_000_000)
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and value != "auto":
                _check_range(f"train.{name}", value, 0.0, 10.0, low_open=True)
        _check_range("train.momentum", self.momentum, 0.0, 1.0, high_open=True)
        if self.weight_decay is not None:
            _check_range("train.weight_decay", self.weight_decay, 0.0, 10.0)
        if self.warmup_ratio is not None:
            _check_range("train.warmup_ratio", self.warmup_ratio, 0.0, 1.0, high_open=True)
        _check_range("train.label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        _check_range("train.mixup_alpha", self.mixup_alpha, 0.0, 100.0)
        if self.progressive_resize is not None:
            _check_range("train.progressive_resize", self.progressive_resize, 0.25, 1.0)
        _check_range("train.cutmix_alpha", self.cutmix_alpha, 0.0, 100.0)
        if self.ema_decay is not None:
            _check_range("train.ema_decay", self.ema_decay, 0.0, 1.0, low_open=True, high_open=True)
        _check_range("train.grad_accum_steps", self.grad_accum_steps, 1, 100_000)
        if self.max_grad_norm is not None:
            _check_range("train.max_grad_norm", self.max_grad_norm, 0.0, 1e9, low_open=True)
        if self.early_stopping_patience is not None:
            _check_range("train.early_stopping_patience", self.early_stopping_patience, 1, 100_000)
        if self.checkpoint_every_steps is not None:
            _check_range("train.checkpoint_every_steps", self.checkpoint_every_steps, 1, 10**9)
        _check_range("train.keep_checkpoints", self.keep_checkpoints, 1, 10_000)
        if len(set(self.report_to)) != len(self.report_to):
            raise RecipeError(f"train.report_to: {shown(self.report_to)} names a tracker twice")


SEARCH_KINDS = ("log_uniform", "uniform", "int", "log_int", "choice")
Pruner = Literal["median", "asha", "hyperband", "none"]


@dataclass
class SearchSpec:
    """What ``finetunekit tune`` searches (``finetunekit train`` ignores this section).

    ``space`` maps a recipe field to a distribution, one of ``log_uniform: [low, high]``,
    ``uniform: [low, high]``, ``int: [low, high]``, ``log_int: [low, high]`` or
    ``choice: [a, b, ...]``; null: the modality's default space (finetunekit.choose.tune). ``pruner`` stops
    trials whose per-epoch validation metric lags: ``median`` (below the median of earlier trials at
    the same epoch), ``asha`` (successive halving), ``hyperband``, or ``none``.

        search:
          space:
            train.head_lr: {log_uniform: [1.0e-3, 1.0e-1]}
            train.epochs: {int: [3, 15]}
            strategy.name: {choice: [linear_probe, lp_ft]}
          pruner: median
    """

    space: dict[str, Any] | None = None
    pruner: Pruner = "median"
    prune_warmup_epochs: int = 1  # epochs every trial runs before it may be pruned
    prune_startup_trials: int = 5  # median: trials that finish before any is pruned
    sampler_seed: int = 0  # TPE sampler seed

    def __post_init__(self) -> None:
        _check_range("search.prune_warmup_epochs", self.prune_warmup_epochs, 0, 100_000)
        _check_range("search.prune_startup_trials", self.prune_startup_trials, 0, 100_000)
        for name, dist in (self.space or {}).items():
            _check_search_param(name, dist)


def _check_search_param(name: str, dist: Any) -> None:
    where = f"search.space.{name}"
    section, _, field_name = name.partition(".")
    sections = {"model": ModelSpec, "data": DataSpec, "strategy": StrategySpec, "train": TrainSpec}
    if section not in sections:
        raise RecipeError(f"{where}: expected section.field with section one of {', '.join(sections)}")
    known = [f.name for f in dataclasses.fields(sections[section])]
    if field_name not in known:
        raise RecipeError(f"{where}: unknown field {field_name!r} of {section}{did_you_mean(field_name, known)}")
    if not isinstance(dist, dict) or len(dist) != 1:
        raise RecipeError(f"{where}: expected one of {', '.join(SEARCH_KINDS)} with its values, e.g. {{log_uniform: [1.0e-4, 1.0e-2]}}")
    ((kind, values),) = dist.items()
    if kind not in SEARCH_KINDS:
        raise RecipeError(f"{where}: unknown distribution {kind!r}{did_you_mean(str(kind), SEARCH_KINDS)}; known: {', '.join(SEARCH_KINDS)}")
    if not isinstance(values, list) or not values:
        raise RecipeError(f"{where}.{kind}: expected a list of values")
    if kind == "choice":
        return
    if len(values) != 2:
        raise RecipeError(f"{where}.{kind}: expected [low, high], got {values!r}")
    try:
        low, high = (float(v) for v in values)  # YAML 1.1 reads 1e-3 as a string
    except (TypeError, ValueError):
        raise RecipeError(f"{where}.{kind}: expected two numbers, got {values!r}") from None
    if not low < high:
        raise RecipeError(f"{where}.{kind}: low {low:g} must be below high {high:g}")
    if kind.startswith("log") and low <= 0:
        raise RecipeError(f"{where}.{kind}: a log scale needs low > 0, got {low:g}")
    if kind.endswith("int") and not all(float(v).is_integer() for v in values):
        raise RecipeError(f"{where}.{kind}: expected integers, got {values!r}")


@dataclass
class Recipe:
    """A whole fine-tuning run. Build it in Python, or load it from YAML with :meth:`from_yaml`."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    task: TaskSpec = field(default_factory=TaskSpec)
    # several named tasks sharing the backbone (finetunekit.tasks.multitask); replaces `task`
    tasks: list[TaskSpec] | None = None
    strategy: StrategySpec = field(default_factory=StrategySpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    search: SearchSpec = field(default_factory=SearchSpec)

    def __post_init__(self) -> None:
        if self.train.epochs is not None:
            self.strategy.check_epochs(self.train.epochs)
        for name in ("name", "label_column", "weight"):
            if getattr(self.task, name) is not None:
                raise RecipeError(f"task.{name}: only entries of `tasks:` (several tasks) have one; the single task reads data.label_column")
        if self.tasks is not None:
            self._check_tasks()

    def _check_tasks(self) -> None:
        import re

        if self.task != TaskSpec():
            raise RecipeError("tasks: give either `task:` (one task) or `tasks:` (several), not both")
        if not self.tasks:
            raise RecipeError("tasks: give at least one task, or leave `tasks` out")
        seen: set[str] = set()
        for i, spec in enumerate(self.tasks):
            if not spec.name or not re.fullmatch(r"[A-Za-z0-9_-]+", spec.name):
                raise RecipeError(f"tasks[{i}].name: {spec.name!r}: each task needs a name of letters, digits, '_' or '-'")
            if spec.name in seen:
                raise RecipeError(f"tasks[{i}].name: {spec.name!r} is used by another task")
            seen.add(spec.name)
            if not spec.label_column:
                raise RecipeError(f"tasks[{i}].label_column: task {spec.name!r} needs its label column(s)")

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
        from ..core.safe_yaml import read_yaml_file

        path = Path(path)
        raw = read_yaml_file(path)  # duplicate keys, alias bombs and oversized files refused
        try:
            return cls.from_dict(raw)
        except RecipeError as exc:
            raise RecipeError(f"{path}: {exc}") from None

    def with_overrides(self, overrides: list[str]) -> Recipe:
        """Apply ``section.field=value`` strings (values parsed as YAML scalars)."""
        raw = self.to_dict()
        from ..core.safe_yaml import parse_override_value

        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or "." not in key:
                raise RecipeError(f"override {shown(item)}: expected section.field=value, e.g. train.lr=3e-4")
            section, _, name = key.strip().partition(".")
            if section not in raw:
                raise RecipeError(f"override {shown(item)}: unknown section {shown(section)}{did_you_mean(section, raw)}")
            parsed = parse_override_value(value, f"override {shown(item)}") if value.strip() else None
            raw[section][name] = parsed
        return Recipe.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        raw["task"] = self.task.to_dict()  # a task's options sit beside its type, as YAML writes them
        raw["tasks"] = None if self.tasks is None else [spec.to_dict() for spec in self.tasks]
        return raw

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **sections: Any) -> Recipe:
        """Copy with whole sections or ``section=dict(field=value)`` updates; the original is untouched."""
        raw = self.to_dict()
        for section, updates in sections.items():
            if section not in raw:
                raise RecipeError(f"unknown recipe section {section!r}{did_you_mean(section, raw)}")
            if isinstance(updates, TaskSpec):
                raw[section] = updates.to_dict()
            else:
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
    if hasattr(cls, "from_raw"):  # a section that reads its own fields (task: its type's options)
        return cls.from_raw(raw, prefix)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str) or key not in names:
            raise RecipeError(f"unknown field {shown(full)}{did_you_mean(str(key), names)}; known: {', '.join(names)}")
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
    except RecipeError as exc:
        # a section checks itself under its usual name ("task."); an entry of a list of such
        # sections (tasks[1]) is named by its place in the list instead
        section = getattr(cls, "SECTION", None)
        if section and prefix and prefix != f"{section}." and str(exc).startswith(f"{section}."):
            raise RecipeError(prefix + str(exc)[len(section) + 1 :]) from None
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
        raise RecipeError(errors[0] if len(errors) == 1 else f"{name}: {shown(value)} is not valid ({'; '.join(errors)})")
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise RecipeError(
                f"{name}: {shown(value)} is not one of {', '.join(map(repr, choices))}{did_you_mean(shown(value, 200), map(str, choices))}"
            )
        return value
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise RecipeError(f"{name}: expected a mapping with string keys, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise RecipeError(f"{name}: expected a mapping of fields, got {type(value).__name__}")
        return _build(hint, value, prefix=f"{name}.")
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{name}: expected a list, got {type(value).__name__}")
        (item_hint,) = get_args(hint)
        return [_coerce(f"{name}[{i}]", v, item_hint) for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{name}: expected true or false, got {shown(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise RecipeError(f"{name}: expected an integer, got {shown(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise RecipeError(f"{name}: expected a number, got {shown(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise RecipeError(f"{name}: expected a string, got {shown(value)}")
    raise RecipeError(f"{name}: unsupported value {shown(value)}")
