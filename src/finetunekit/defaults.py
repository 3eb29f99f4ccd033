"""Defaults for the recipe fields left as ``None``: the modality's (its ``default_strategy``,
``train_defaults`` and ``strategy_train_defaults``, chosen with benchmarks/strategies.py,
docs/strategies.md), then the task type's where it has its own.
"""

from __future__ import annotations

from .modalities import modality_of
from .recipe import Recipe

# Task types whose training differs from their modality's: (strategy settings used when the
# recipe names no strategy, train fields). Detection: the new pyramid and head start from random
# weights and the pretrained features were made for whole-image classes, so the backbone trains
# too, except its three highest-resolution stages (stem to stride 4: as torchvision's detection
# fine-tuning keeps the first stages of its backbones frozen; the most expensive layers to run
# backwards, and the most generic features), BatchNorm statistics frozen (batches of 8); the
# head 10x faster than the backbone, after a warmup (focal-loss heads diverge from a cold start
# at full rate). docs/detection-segmentation.md has the measurements.
TASK_DEFAULTS: dict[str, tuple[dict, dict]] = {
    "detection": ({"name": "last_n", "last_n": 5},
                  {"epochs": 6, "batch_size": 8, "lr": 2e-4, "head_lr": 2e-3, "weight_decay": 1e-4, "scheduler": "cosine", "warmup_ratio": 0.1}),
}


def resolve(recipe: Recipe, modality: str) -> Recipe:
    """A copy of ``recipe`` with every ``None`` train field filled for ``modality`` (and strategy,
    and the task type where it has defaults of its own)."""
    task_strategy, task_train = TASK_DEFAULTS.get(recipe.task.type or "", ({}, {}))
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
