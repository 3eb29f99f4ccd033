"""A task type's own recipe options, as a dataclass declared in its task module.

The recipe keeps one ``task:`` section with the fields every task has (``type``, and for entries of
``tasks:`` their ``name``, ``label_column`` and ``weight``); whatever else the section holds belongs
to the task type and is read by the type's :attr:`Task.Options <finetunekit.tasks.base.Task.Options>`.
Every field is ``None`` until set, so a recipe shows only what its author chose, and
``Task.check_options`` fills the defaults. ``__post_init__`` checks the values and names the field
(:func:`finetunekit.core.errors.check_range`).

Example::

    @dataclass
    class RegressionOptions(TaskOptions):
        loss: Literal["mse", "huber", "l1"] | None = None
        huber_delta: float | None = None

        def __post_init__(self) -> None:
            if self.huber_delta is not None:
                check_range("task.huber_delta", self.huber_delta, 0.0, 1e6, low_open=True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass
class TaskOptions:
    """Base class of the task types' options (a type without options keeps it empty)."""

    # errors name fields ``task.<field>``; the recipe renames them for entries of ``tasks:``
    SECTION: ClassVar[str] = "task"
