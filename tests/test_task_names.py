"""Outside ``tasks/`` no code compares a task type by name or asks whether a task is of a concrete
class: what differs between task types is a method or a declared property of the task
(``Task.single_class``, ``Task.dense``, ``Task.reader``, ``Task.report``, ``Task.higher_is_better``,
...), so a new task type is its module, not a hunt for ``== "classification"``.

The walk is tests/test_strategy_names.py's, with the registered task types' names; tables keyed by
task type and choosing a type (``{"type": "detection"}``) are not comparisons.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_strategy_names import name_comparisons

from finetunekit.tasks import TASKS

SRC = Path(__file__).resolve().parents[1] / "src" / "finetunekit"

# Documented exceptions, as "path relative to src/finetunekit: the name compared" -> why.
ALLOWED: dict[str, str] = {
    "report/run_data.py: classification": "run directories written before tasks were stored in finetunekit.json keep "
                                          "their classes in labels.json: the report reads that older layout as it is",
    "choose/autoconfig.py: classification": "zero-config's strategy rules were measured on classification sets "
                                     "(benchmarks/zero_config.py, docs/automation.md); other types get the modality's default",
    "choose/autoconfig.py: multilabel": "zero-config's reason line counts examples per label rather than per class",
    "use/hf_modeling.py: regression": "transformers' config.problem_type vocabulary ('regression', "
                                  "'multi_label_classification'), which exported models are read by, not a task type",
}


def _concrete_task_checks(source: str, class_names: set[str]) -> list[tuple[int, str]]:
    """(line, class) of each ``isinstance(x, SomeTask)`` with a registered task class."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass"):
            for arg in ast.walk(node.args[1]) if len(node.args) > 1 else ():
                name = arg.id if isinstance(arg, ast.Name) else arg.attr if isinstance(arg, ast.Attribute) else None
                if name in class_names:
                    found.append((node.lineno, name))
    return found


def test_no_code_outside_tasks_compares_a_task_type_by_name():
    names = set(TASKS.names())
    classes = {TASKS.get(n).__name__ for n in names}
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("tasks/"):
            continue
        source = path.read_text(encoding="utf-8")
        for line, name in name_comparisons(source, names):
            if f"{rel}: {name}" not in ALLOWED:
                found.append(f"{rel}:{line}: compares with task type {name!r}")
        found += [f"{rel}:{line}: isinstance on the concrete task class {name}" for line, name in _concrete_task_checks(source, classes)]
    assert not found, "ask the task (a method or a declared property of finetunekit.tasks.Task) instead:\n" + "\n".join(found)


def test_the_check_sees_concrete_class_checks():
    source = "if isinstance(task, RegressionTask): pass\nif isinstance(task, tasks.detection.DetectionTask): pass\n"
    assert _concrete_task_checks(source, {"RegressionTask", "DetectionTask"}) == [(1, "RegressionTask"), (2, "DetectionTask")]
