"""Defaults for the recipe fields left as ``None``: the modality's (its ``default_strategy``,
``train_defaults`` and ``strategy_train_defaults``, chosen with benchmarks/strategies.py,
docs/strategies.md), then the task type's where it has its own.
"""

from __future__ import annotations

from ..modalities import modality_of
from .recipe import Recipe


def resolve(recipe: Recipe, modality: str) -> Recipe:
    """A copy of ``recipe`` with every ``None`` train field filled for ``modality`` (and strategy,
    and the task type where it has defaults of its own: ``Task.strategy_defaults`` and
    ``Task.train_defaults``, e.g. detection's). The task type must be resolved first
    (finetunekit.run.plan.resolve does both); a recipe whose type is still unset gets the modality's."""
    task_strategy, task_train = _task_defaults(recipe)
    kind = modality_of(modality)
    strategy = recipe.strategy.name or task_strategy.get("name") or kind.default_strategy
    defaults = {**kind.train_defaults, **task_train, **kind.strategy_train_defaults.get(strategy, {})}
    filled = {k: v for k, v in defaults.items() if getattr(recipe.train, k) is None}
    if recipe.train.lr is not None and recipe.train.head_lr is None:
        filled["head_lr"] = recipe.train.lr  # a user-set lr applies to the whole model
    updates: dict = {"train": filled, "strategy": {}}
    if recipe.strategy.name is None:
        updates["strategy"] = {**task_strategy, "name": strategy}
    return recipe.replace(**updates)


def _task_defaults(recipe: Recipe) -> tuple[dict, dict]:
    """(strategy settings, train fields) of the recipe's task type (none for several tasks, or
    for a type not resolved yet)."""
    if recipe.tasks or recipe.task.type is None:
        return {}, {}
    from ..tasks import TASKS  # local import: tasks import torch

    cls = TASKS.get(recipe.task.type)
    return dict(cls.strategy_defaults), dict(cls.train_defaults)
