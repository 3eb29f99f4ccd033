"""Tasks: what is predicted and how it is judged, one module per task type, found by name.

Example::

    from finetunekit.tasks import TASKS, build_task
    TASKS.names()                       # ['classification', 'multilabel', 'regression']
    task = build_task(recipe, train_examples)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..core.registry import Registry

TASKS: Registry = Registry("task")

from .base import Task  # noqa: E402
from . import classification, detection, multilabel, multitask, regression, retrieval, segmentation, seq2seq  # noqa: E402, F401  (registers the task types)

__all__ = ["TASKS", "Task", "build_task", "infer_type", "label_columns", "fit_task", "resolve_types", "task_from_state", "task_reader"]


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


def task_reader(task_type: str | None, image_root: str | None = None, **options: Any) -> Callable[[Any], Any] | None:
    """The reader of ``task_type``'s own data formats (``path -> Examples``: detection's COCO, VOC
    and box tables, segmentation's image/mask lists), or None when the generic readers (class
    folders, tables) apply: a task type without formats of its own, or none given.

    Example::

        val = task_reader("detection", image_root="raccoon/images")("raccoon/val.csv")
    """
    if task_type is None:
        return None
    return TASKS.get(task_type).reader(options, image_root)


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


def resolve_types(recipe: Any, train: Any, single_type: str, say: Callable[[str], None]) -> dict[str, Any]:
    """The recipe's task section(s) with every type fixed and every option filled
    (``{"task": {...}}`` or ``{"tasks": [...]}``, as recipe.yaml writes them). ``single_type``: the
    single task's type (written, or inferred from the training labels); each entry of ``tasks:``
    without a type is inferred from its own column and reported by ``say``."""
    from .multitask import column_view

    if not recipe.tasks:
        return {"task": TASKS.get(single_type).check_options(recipe.task.check_type(single_type).to_dict(), "task")}
    specs = []
    for i, spec in enumerate(recipe.tasks):
        columns = [spec.label_column] if isinstance(spec.label_column, str) else list(spec.label_column)
        kind = spec.type
        if kind is None:
            kind, why = infer_type(column_view(train, columns).labels or [])
            say(f"task {spec.name}: {kind} ({why}; set its type to choose)")
        typed = spec.check_type(kind, f"tasks[{i}]")
        if TASKS.get(kind).dense:
            from ..core.errors import RecipeError

            raise RecipeError(f"tasks[{i}].type: a {kind} task has a head of its own on the feature maps; train it alone (task: type: {kind})")
        options = TASKS.get(kind).check_options(typed.to_dict(), f"tasks[{i}]")
        specs.append({**options, "weight": 1.0 if spec.weight is None else spec.weight})
    return {"tasks": specs}


def fit_task(recipe: Any, train: Any) -> Task:
    """The task of a resolved recipe (every type fixed: :func:`resolve_types`), fitted to the
    training examples."""
    if not recipe.tasks:
        options = recipe.task.to_dict()
        return TASKS.get(options["type"]).from_data(TASKS.get(options["type"]).check_options(options, "task"), train, recipe)
    specs = [spec.to_dict() for spec in recipe.tasks]
    return TASKS.get("multitask").from_data({"type": "multitask", "tasks": specs}, train, recipe)
