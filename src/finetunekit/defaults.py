"""Per-modality defaults for the recipe fields left as ``None``.

Chosen with benchmarks/strategies.py (docs/strategies.md): on small image sets a linear probe (head
at 1e-2, AdamW) beats every strategy that moves the backbone (ants/bees over seeds: 0.967 against
0.930 for full fine-tuning, 0.951 for LoRA), so images default to it; the backbone rate (1e-5)
applies when another strategy trains the backbone. Text
fine-tunes everything at lr 1e-4 with the new head at 1e-3, batch 16, warmup then linear decay:
those three values were chosen on held-out SST-2 *training* rows (never dev); the strategy itself
(full, against layer-wise decay, L2-SP, LP-FT, gradual unfreezing, LoRA) by benchmarks/strategies.py
over three seeds on dev, which the text of the task allows (docs/strategies.md).
"""

from __future__ import annotations

from .recipe import Recipe

STRATEGY_DEFAULTS = {"image": "linear_probe", "text": "full"}


DEFAULTS = {
    "image": {"epochs": 5, "batch_size": 16, "lr": 1e-5, "head_lr": 1e-2, "weight_decay": 0.01, "scheduler": "cosine", "warmup_ratio": 0.0,
              "progressive_resize": 1.0},
    "text": {"epochs": 3, "batch_size": 16, "lr": 1e-4, "head_lr": 1e-3, "weight_decay": 0.01, "scheduler": "linear", "warmup_ratio": 0.1,
             "progressive_resize": 1.0},
}

# Per-strategy changes to those defaults. LoRA adapters start as a zero update scaled by
# alpha/rank and need a larger rate than full fine-tuning (the LoRA paper: RoBERTa-base on GLUE at
# 4e-4 to 5e-4 for 30-80 epochs; these defaults run 3 to 5). SST-2 at 1e-3: 0.831 dev accuracy vs
# 0.834 for full fine-tuning (docs/strategies.md); the image head keeps the linear probe's 1e-2.
STRATEGY_DEFAULTS_OVERRIDES = {
    "lora": {"image": {"lr": 1e-3, "head_lr": 1e-2}, "text": {"lr": 1e-3, "head_lr": 1e-3}},
    # class means are computed once: a second epoch would compute the same ones
    "prototype": {"image": {"epochs": 1}, "text": {"epochs": 1}},
    # the SetFit paper: one epoch over 2 x 20 x N pairs at 2e-5, batch 16
    "setfit": {"text": {"epochs": 1, "lr": 2e-5, "batch_size": 16}},
}


def resolve(recipe: Recipe, modality: str) -> Recipe:
    """A copy of ``recipe`` with every ``None`` train field filled for ``modality`` (and strategy,
    and the task type where it has defaults of its own: ``Task.strategy_defaults`` and
    ``Task.train_defaults``, e.g. detection's). The task type must be resolved first
    (finetunekit.plan.resolve does both); a recipe whose type is still unset gets the modality's."""
    task_strategy, task_train = _task_defaults(recipe)
    strategy = recipe.strategy.name or task_strategy.get("name") or STRATEGY_DEFAULTS[modality]
    defaults = {**DEFAULTS[modality], **task_train, **STRATEGY_DEFAULTS_OVERRIDES.get(strategy, {}).get(modality, {})}
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
    from .tasks import TASKS  # local import: tasks import torch

    cls = TASKS.get(recipe.task.type)
    return dict(cls.strategy_defaults), dict(cls.train_defaults)
