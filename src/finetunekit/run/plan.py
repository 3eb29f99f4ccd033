"""The resolve step: a recipe and its data become one :class:`Plan` before anything else reads them.

Everything a run needs to know is fixed here, once and in this order:

1. the training and validation examples are read: by the task type's own reader when the recipe
   names a type with data formats of its own (detection, segmentation), else by the modality's
   generic readers; a held-out split is stratified the way the task type asks;
2. the task type(s): written in the recipe, or inferred from the training labels (and said);
   the task section's options are read by the type's own options dataclass and filled;
3. every default (finetunekit.run.defaults: the modality's, the task type's, the strategy's);
4. the checks that need the type and the defaults (the modality's fields, the task type's
   ``check_recipe``; a written type is checked before any data is read, an inferred one once
   it is known), then the inputs themselves (images opened, bad ones refused or skipped);
5. the task, fitted to the training examples, and the metric that ranks epochs and trials
   (``train.metric``, else the task's primary metric) with its direction.

The trainer, ``tune``, ``lr-find`` and zero-config read the plan and never a raw recipe field;
``plan.recipe`` is what the run directory saves as recipe.yaml, and resolving it again gives the
same plan.

Example::

    plan = resolve(recipe, backbone.modality)
    plan.recipe.task.type, plan.recipe.train.epochs   # 'regression', 3
    plan.metric, plan.direction                        # 'rmse', 'minimize'
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.errors import RecipeError, did_you_mean, warn
from ..data import Examples, resolve_splits
from ..data.memory import pin_hf_sources
from ..data.readers import sample_per_class
from ..modalities import modality_of
from ..strategies import STRATEGIES
from ..tasks import TASKS, Task, fit_task, infer_type, label_columns, resolve_types, task_reader
from .defaults import resolve as fill_defaults
from .recipe import Recipe


@dataclass
class Plan:
    """A resolved run: the recipe with every type, option and default fixed, the data read, and
    the task fitted to it."""

    recipe: Recipe
    modality: str
    task: Task
    train: Examples
    val: Examples

    @property
    def metric(self) -> str:
        """The validation metric that picks the best epoch (and ranks trials)."""
        return str(self.recipe.train.metric)

    @property
    def higher_is_better(self) -> bool:
        return self.task.higher_is_better(self.metric)

    @property
    def direction(self) -> str:
        """``"maximize"`` or ``"minimize"``, as Optuna names it."""
        return self.task.direction(self.metric)


def resolve(recipe: Recipe, modality: str, say: Callable[[str], None] | None = None) -> Plan:
    """The plan of ``recipe`` for a backbone of ``modality``; ``say`` prints what was inferred."""
    say = say or (lambda message: None)
    d, seed = recipe.data, recipe.train.seed
    if not d.train:
        raise RecipeError("data.train: no training data given (a folder of images or a .csv/.tsv/.jsonl file)")
    pinned = pin_hf_sources(d.train, d.val)  # hf: datasets: their split and content, as recipe.yaml records them
    if pinned != {"train": d.train, "val": d.val}:
        recipe = recipe.replace(data=pinned)
        d = recipe.data
    written = "multitask" if recipe.tasks else recipe.task.type
    # refusals that need no data come first: the minutes spent reading are not wasted on them
    _check(fill_defaults(recipe, modality), modality, written)
    train_ex, val_ex, kind = _read(recipe, modality, say)
    if d.max_train_samples is not None and d.max_train_samples < len(train_ex):
        keep = list(range(len(train_ex)))
        random.Random(seed).shuffle(keep)
        train_ex = train_ex.subset(sorted(keep[: d.max_train_samples]))
    if d.shots_per_class is not None:
        classes = TASKS.get(kind).strata_for(train_ex, recipe.task)  # each example's class (None: a task without classes)
        if classes is None:
            raise RecipeError(f"data.shots_per_class: draws examples per class; a {kind} task has no classes")
        train_ex = train_ex.subset(sample_per_class([str(c) for c in classes], d.shots_per_class, seed),
                                   f"{train_ex.source} ({d.shots_per_class} per class, seed {seed})")
    raw = recipe.to_dict()
    raw.update(resolve_types(recipe, train_ex, kind, say))
    recipe = fill_defaults(Recipe.from_dict(raw), modality)  # the resolved type's own defaults included
    if kind != written:  # an inferred type is checked against the recipe as well
        _check(recipe, modality, kind)
    train_ex, val_ex = (modality_of(modality).check_examples(ex, d) for ex in (train_ex, val_ex))  # images: opened up front
    for note in dict.fromkeys((*train_ex.notes, *val_ex.notes)):  # a held-out split shares its file's notes
        warn(note)
    task = fit_task(recipe, train_ex)
    metric = recipe.train.metric or task.primary_metric
    if metric not in task.metric_names():
        raise RecipeError(
            f"train.metric: {metric!r} is not a metric of a {task.type} task{did_you_mean(metric, task.metric_names())}; "
            f"choose one of: {', '.join(task.metric_names())}"
        )
    return Plan(recipe.replace(train={"metric": metric}), modality, task, train_ex, val_ex)


def _check(recipe: Recipe, modality: str, kind: str | None) -> None:
    """Refuse what the backbone's modality or the task type cannot honour (``kind``: the type, or
    None while it is left to inference)."""
    modality_of(modality).check_recipe(recipe)
    if kind is not None:
        check_combination(modality, kind, recipe.strategy.name, recipe.model.backbone)
        TASKS.get(kind).check_recipe(recipe, modality)  # dense tasks refuse mixup, balanced sampling


def combination_refusal(modality: str, kind: str, strategy: str, backbone: str = "the backbone") -> str | None:
    """Why the components' declarations rule a modality x task type x strategy combination out,
    as one line naming the field (``task.type: ...`` or ``strategy.name: ...``), or None when they
    allow it: the modality must feed the task type (``Modality.task_refusal``: its input form,
    feature maps for a dense task, encoder-decoders for one that writes text), and the task type
    must train with the strategy (``Task.strategy_refusal``: a task type with strategies of its own
    takes only those; ``Strategy.modality_refusal`` and ``Strategy.task_refusal`` for the registry's)."""
    task = TASKS.get(kind)
    why = modality_of(modality).task_refusal(task, backbone)
    if why:
        return f"task.type: {why}"
    if task.own_strategies is not None:
        why = task.strategy_refusal(strategy)
        return f"strategy.name: {why}" if why else None
    cls = STRATEGIES.get(strategy)
    why = cls.modality_refusal(strategy, modality) or cls.task_refusal(strategy, task)
    return f"strategy.name: {why}" if why else None


def check_combination(modality: str, kind: str, strategy: str, backbone: str = "the backbone") -> None:
    """Refuse a modality x task type x strategy combination that the components' declarations
    rule out (one RecipeError naming the field, :func:`combination_refusal`). Needs no data, so
    it runs before any is read when the recipe names the task type."""
    why = combination_refusal(modality, kind, strategy, backbone)
    if why:
        raise RecipeError(why)


def _read(recipe: Recipe, modality: str, say: Callable[[str], None]) -> tuple[Examples, Examples, str]:
    """(train, val, task type): the type is fixed from the training file's labels as soon as they
    are read, since a held-out split is stratified the way that type asks (classes kept in their
    shares; other tasks at random)."""
    d = recipe.data
    single = None if recipe.tasks else recipe.task
    chosen: dict[str, str] = {}

    def fix_type(examples: Examples) -> str:
        if "type" not in chosen:
            if single is None:
                chosen["type"] = "multitask"
            elif single.type is not None:
                chosen["type"] = single.type
            else:
                chosen["type"], why = infer_type(examples.labels or [])
                say(f"task: {chosen['type']} ({why}; set task.type to choose)")
        return chosen["type"]

    def strata(examples: Examples) -> list[Any] | None:
        return TASKS.get(fix_type(examples)).strata_for(examples, recipe.task)

    # a task type with data formats of its own reads them itself (detection: COCO, VOC or box
    # tables under data.image_root; segmentation: image/mask lists); a type left to inference
    # reads the generic formats, so only a written type can choose a reader
    options = single.to_dict() if single is not None else {}
    # in-memory tables: the image column, and segmentation's mask column (data.label_column when set)
    columns = {"image_column": d.image_column, "mask_column": d.label_column if isinstance(d.label_column, str) and d.label_column != "label" else None}
    reader = task_reader(single.type if single is not None else None, d.image_root, **options, **columns)
    train_ex, val_ex = resolve_splits(
        d.train, d.val, modality_of(modality), d.val_fraction, recipe.train.seed, d.text_column, label_columns(recipe), d.text_columns,
        d.image_column, strata, d.image_root, reader, (d.train_list, d.val_list),
    )
    return train_ex, val_ex, fix_type(train_ex)  # an explicit validation set: no split, the training labels decide
