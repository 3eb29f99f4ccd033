"""Tasks: what is predicted and how it is judged, one module per task type, found by name.

Example::

    from finetunekit.tasks import TASKS, build_task
    TASKS.names()                       # ['classification', 'multilabel', 'regression']
    task = build_task(recipe, train_examples)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..registry import Registry

TASKS: Registry = Registry("task")

from .base import Task  # noqa: E402
from . import classification, detection, multilabel, multitask, regression, segmentation  # noqa: E402, F401  (registers the task types)

__all__ = ["TASKS", "Task", "build_task", "fit_task", "infer_type", "label_columns", "task_from_state"]


def infer_type(labels: Sequence[Any]) -> tuple[str, str]:
    """(task type, why) for a label column left to inference: lists (JSONL) or ``a|b`` cells mean
    multi-label; numbers with a non-integer among them regression; anything else classification."""
    if any(isinstance(x, (list, tuple)) for x in labels):
        return "multilabel", "the label cells are lists"
    cells = [str(x) for x in labels]
    if any("|" in c for c in cells):
        return "multilabel", "label cells hold several '|'-separated labels"
    try:
        values = [float(c) for c in cells]
    except ValueError:
        return "classification", "the labels are names"
    if values and any(not v.is_integer() for v in values):
        return "regression", "the labels are numbers, not all integers"
    return "classification", "the labels are integers" if values else "no labels"


def task_class(name: str) -> type[Task]:
    return TASKS.get(name)


def build_task(options: dict[str, Any], train: Any, recipe: Any = None) -> Task:
    """The task of ``options`` (the recipe's resolved task section) fitted to the training examples."""
    return TASKS.get(options["type"]).from_data(options, train, recipe)


def task_from_state(state: Any, read: Callable[[str], Any] | None = None) -> Task:
    """The task a run directory stored (finetunekit.json's ``task``); ``read(name)`` reads one of
    the run directory's JSON files. Runs from before tasks were stored hold the string
    "classification" and their classes in labels.json."""
    if isinstance(state, str):
        state = {"type": state}
    return TASKS.get(state["type"]).from_state(state, read)


def label_columns(recipe: Any) -> str | list[str]:
    """The label column(s) to read: ``data.label_column``, or every column of ``tasks:`` in order."""
    if not recipe.tasks:
        return recipe.data.label_column
    columns: list[str] = []
    for spec in recipe.tasks:
        for column in [spec.label_column] if isinstance(spec.label_column, str) else spec.label_column:
            if column not in columns:
                columns.append(column)
    return columns


def fit_task(recipe: Any, train: Any, single_type: Callable[[list[Any]], str], say: Callable[[str], None]) -> tuple[Task, dict[str, Any]]:
    """The task the recipe asks for, fitted to the training examples, and the recipe's resolved
    task section(s) (``{"task": {...}}`` or ``{"tasks": [...]}``) with every type filled in.
    ``single_type(labels)`` gives the single task's type (inferring it when the recipe has none);
    each entry of ``tasks:`` without a type is inferred from its own column and reported by ``say``."""
    from .multitask import column_view

    if not recipe.tasks:
        kind = single_type(train.labels or [])
        cls = TASKS.get(kind)
        options = cls.check_options(recipe.task.check_type(kind).to_dict(), "task")
        return cls.from_data(options, train, recipe), {"task": options}
    specs = []
    for i, spec in enumerate(recipe.tasks):
        columns = [spec.label_column] if isinstance(spec.label_column, str) else list(spec.label_column)
        kind = spec.type
        if kind is None:
            kind, why = infer_type(column_view(train, columns).labels or [])
            say(f"task {spec.name}: {kind} ({why}; set its type to choose)")
        typed = spec.check_type(kind, f"tasks[{i}]")
        if TASKS.get(kind).dense:
            from ..errors import RecipeError

            raise RecipeError(f"tasks[{i}].type: a {kind} task has a head of its own on the feature maps; train it alone (task: type: {kind})")
        options = TASKS.get(kind).check_options(typed.to_dict(), f"tasks[{i}]")
        specs.append({**options, "weight": 1.0 if spec.weight is None else spec.weight})
    return TASKS.get("multitask").from_data({"type": "multitask", "tasks": specs}, train, recipe), {"tasks": specs}
