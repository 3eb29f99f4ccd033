"""What ``finetunekit predict`` prints for one-decision tasks, from their scores, in plain numpy.

The task classes (``finetunekit.tasks``) answer through these functions, and so does the
ONNX fast path of ``predict`` (``finetunekit.use.fast``), which never imports torch: one
implementation, so both print the same thing for the same scores.

Example::

    classification_records(np.array([[0.1, 0.9]]), ["neg", "pos"])
    # [{"json": {"label": "pos", "probabilities": {"neg": 0.1, "pos": 0.9}}, "line": "pos\t0.9000"}]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_records(scores: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """Single-label classification: the most probable class and every class's probability."""
    labels = [classes[i] for i in np.asarray(scores).argmax(axis=1).tolist()]
    return [{"json": {"label": label, "probabilities": dict(zip(classes, row.tolist(), strict=True))},
             "line": f"{label}\t{row.max():.4f}"} for label, row in zip(labels, scores, strict=True)]


def multilabel_decisions(scores: np.ndarray, labels: Sequence[str], thresholds: Sequence[float]) -> list[list[str]]:
    """The labels whose probability reaches their threshold, per row."""
    pred = np.asarray(scores) >= np.asarray(thresholds)[None, :]
    return [[labels[k] for k in np.flatnonzero(row)] for row in pred]


def multilabel_records(scores: np.ndarray, labels: Sequence[str], thresholds: Sequence[float], separator: str) -> list[dict[str, Any]]:
    """Multi-label: the labels predicted and every label's probability."""
    return [{"json": {"labels": p, "probabilities": dict(zip(labels, (float(v) for v in row), strict=True))},
             "line": separator.join(p) or "(none)"}
            for p, row in zip(multilabel_decisions(scores, labels, thresholds), scores, strict=True)]


def regression_records(scores: np.ndarray, names: Sequence[str]) -> list[dict[str, Any]]:
    """Regression: the predicted value (one target) or values by target name."""
    records = []
    for row in np.asarray(scores, dtype=np.float64).reshape(len(scores), -1):
        values = {n: float(v) for n, v in zip(names, row, strict=True)}
        records.append({"json": {"values": values} if len(row) > 1 else {"value": float(row[0])},
                        "line": "\t".join(f"{v:.4f}" for v in row)})
    return records


def _one_class(state: dict[str, Any], scores: np.ndarray) -> list[dict[str, Any]]:
    return classification_records(scores, [str(c) for c in state["classes"]])


def _label_set(state: dict[str, Any], scores: np.ndarray) -> list[dict[str, Any]]:
    return multilabel_records(scores, list(state["labels"]), list(state["thresholds"]), state.get("separator", "|"))


def _values(state: dict[str, Any], scores: np.ndarray) -> list[dict[str, Any]]:
    return regression_records(scores, list(state["targets"]))


# The answer forms a task may declare (``Task.answer_form``): how its records are made from its
# saved state (``Task.state()``) and its scores, and the JSON key holding its decision (None: a
# value, compared by its size rather than for equality).
FORMS: dict[str, Any] = {"one_class": _one_class, "label_set": _label_set, "values": _values}
DECISION_KEYS: dict[str, str | None] = {"one_class": "label", "label_set": "labels", "values": None}


def task_records(form: str, state: dict[str, Any], scores: np.ndarray) -> list[dict[str, Any]]:
    """The records of a task whose answers take ``form`` (``Task.answer_form``), given by its
    saved state (``Task.state()``: its names) and its scores."""
    if form not in FORMS:
        raise ValueError(f"no plain answers of the form {form!r}; forms: {', '.join(FORMS)}")
    return FORMS[form](state, scores)
