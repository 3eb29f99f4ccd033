"""Multi-label classification: any number of labels per example, none included.

Label cells are ``a|b|c`` strings (``task.separator``), JSON lists (JSONL files, or a ``["a", "b"]``
cell in a table), or empty for an example with no label. The head outputs one logit per label;
sigmoid probabilities, binary cross-entropy (optionally with positive weights). A label is predicted
when its probability reaches its threshold, chosen per label on the validation set (best F1 of that
label) and stored in the run, or fixed by ``task.threshold``. Metrics: micro and macro F1, mean
average precision (threshold-free), subset accuracy, Hamming loss, and a per-label table.

Example::

    task = MultiLabelTask.from_data({"separator": "|"}, train_examples)
    task.labels                                   # ('anger', 'joy', ...)
    multilabel_metrics(probs, targets, task.labels, task.thresholds)["macro_f1"]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..core.answers import multilabel_decisions, multilabel_records
from ..core.errors import DataError, RecipeError, check_range
from . import TASKS
from .base import ReportView, Task
from .options import TaskOptions

# characters that separate labels in other people's files; a cell holding one of them (and not the
# configured separator) is an error rather than one odd label name
FOREIGN_SEPARATORS = (",", ";", "\t")


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray, labels: Sequence[str], thresholds: Sequence[float], loss: float | None = None) -> dict[str, Any]:
    """Metrics of (N, K) probabilities against (N, K) 0/1 targets. Macro averages and mAP skip
    labels with no positive example in ``targets`` (their F1 and AP are undefined)."""
    from sklearn.metrics import average_precision_score

    probs = np.asarray(probs, dtype=np.float64).reshape(len(probs), len(labels))
    y = np.asarray(targets, dtype=np.float64).reshape(len(targets), len(labels)) > 0.5
    pred = probs >= np.asarray(thresholds, dtype=np.float64)[None, :]
    tp = (pred & y).sum(0).astype(np.float64)
    fp = (pred & ~y).sum(0).astype(np.float64)
    fn = (~pred & y).sum(0).astype(np.float64)
    support = y.sum(0)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    ap = np.array([average_precision_score(y[:, k], probs[:, k]) if support[k] else 0.0 for k in range(len(labels))])
    present = support > 0
    micro_den = 2 * tp.sum() + fp.sum() + fn.sum()
    n = len(y)
    result: dict[str, Any] = {
        "micro_f1": float(2 * tp.sum() / micro_den) if micro_den else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "map": float(ap[present].mean()) if present.any() else 0.0,
        "subset_accuracy": float((pred == y).all(1).mean()) if n else 0.0,
        "hamming_loss": float((pred != y).mean()) if n else 0.0,
        "micro_precision": float(tp.sum() / (tp.sum() + fp.sum())) if (tp.sum() + fp.sum()) else 0.0,
        "micro_recall": float(tp.sum() / (tp.sum() + fn.sum())) if (tp.sum() + fn.sum()) else 0.0,
        "num_examples": int(n),
        "examples_without_labels": int((~y.any(1)).sum()),
    }
    if loss is not None:
        result["loss"] = float(loss)
    result["per_label"] = {
        name: {"threshold": float(thresholds[k]), "precision": float(precision[k]), "recall": float(recall[k]),
               "f1": float(f1[k]), "average_precision": float(ap[k]), "support": int(support[k])}
        for k, name in enumerate(labels)
    }
    return result


def best_thresholds(probs: np.ndarray, targets: np.ndarray, default: float = 0.5) -> list[float]:
    """Per label, the threshold with the best F1 on these examples (ties: the one closest to 0.5);
    labels with no positive example keep ``default``. Candidates: 0.05, 0.10, ..., 0.95."""
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    y = np.asarray(targets) > 0.5
    chosen = []
    for k in range(y.shape[1]):
        if not y[:, k].any():
            chosen.append(default)
            continue
        pred = probs[:, k][:, None] >= grid[None, :]
        tp = (pred & y[:, k][:, None]).sum(0)
        f1 = 2 * tp / (pred.sum(0) + y[:, k].sum())
        best = np.flatnonzero(f1 == f1.max())
        chosen.append(float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]]))
    return chosen


def format_multilabel_metrics(metrics: dict[str, Any], title: str = "") -> str:
    lines = [title] if title else []
    overall = [("micro F1", "micro_f1"), ("macro F1", "macro_f1"), ("mAP", "map"), ("subset acc", "subset_accuracy"),
               ("Hamming", "hamming_loss")]
    if "loss" in metrics:
        overall.append(("loss", "loss"))
    lines.append("  ".join(f"{label} {metrics[key]:.4f}" for label, key in overall) + f"  (n={metrics['num_examples']})")
    per_label = metrics.get("per_label", {})
    if per_label:
        width = max(8, *(len(c) for c in per_label))
        lines.append(f"  {'label':<{width}} {'threshold':>9} {'precision':>9} {'recall':>9} {'f1':>9} {'AP':>9} {'support':>8}")
        for name, r in per_label.items():
            lines.append(f"  {name:<{width}} {r['threshold']:>9.2f} {r['precision']:>9.4f} {r['recall']:>9.4f} {r['f1']:>9.4f} "
                         f"{r['average_precision']:>9.4f} {r['support']:>8d}")
    return "\n".join(lines)


@dataclass
class MultiLabelOptions(TaskOptions):
    """``task:`` options of multi-label tasks: the separator inside a label cell (JSON lists need
    none); positive weights (``balanced``: negatives / positives per label, capped at 100) in the
    binary cross-entropy; the decision threshold (null: one per label chosen on the validation set,
    best F1; a number: that one for every label)."""

    separator: str | None = None
    pos_weight: Literal["none", "balanced"] | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None:
            check_range("task.threshold", self.threshold, 0.0, 1.0, low_open=True, high_open=True)
        if self.separator is not None and (not self.separator or self.separator.strip() != self.separator):
            raise RecipeError(f"task.separator: {self.separator!r} must be one or more non-space characters, e.g. '|'")


@TASKS.register("multilabel")
class MultiLabelTask(Task):
    """Options (recipe ``task:``): ``separator`` (default ``|``), ``pos_weight`` none | balanced,
    ``threshold`` (null: per label, tuned on validation)."""

    type = "multilabel"
    answer_form = "label_set"
    Options = MultiLabelOptions
    primary_metric = "map"
    lower_is_better = frozenset({"loss", "hamming_loss"})
    epoch_metrics = ("micro_f1", "macro_f1", "map")
    title = "multi-label classification"
    # what an export's outputs mean (its README's loading notes)
    export_note = (
        "the outputs are one logit per label (`task.json`'s `labels` order); a label is predicted when "
        "sigmoid(logit) reaches its threshold in `task.json` (`thresholds`, chosen on validation)"
    )
    report = ReportView(
        noun="{count} labels (multi-label)",
        cards=(("micro F1", "micro_f1"), ("macro F1", "macro_f1"), ("mAP", "map"), ("subset accuracy", "subset_accuracy"),
               ("Hamming loss", "hamming_loss"), ("loss", "loss")),
        curves=(("val_micro_f1", "micro F1"), ("val_macro_f1", "macro F1"), ("val_map", "mAP")),
        sections=("per_label", "label_errors"),
        compared=("micro_f1", "macro_f1", "map", "subset_accuracy", "hamming_loss", "loss"),
    )

    def __init__(self, labels: Sequence[str], separator: str = "|", thresholds: Sequence[float] | None = None,
                 fixed_threshold: float | None = None, pos_weight: torch.Tensor | None = None) -> None:
        self.labels = tuple(labels)
        self.separator = separator
        self.fixed_threshold = fixed_threshold
        default = 0.5 if fixed_threshold is None else fixed_threshold
        self.thresholds = [float(t) for t in thresholds] if thresholds is not None else [default] * len(self.labels)
        self.pos_weight = pos_weight

    @property
    def classes(self) -> tuple[str, ...]:
        return self.labels

    @classmethod
    def check_options(cls, options: dict[str, Any], where: str) -> dict[str, Any]:
        filled = dict(options)
        filled["separator"] = options.get("separator") or "|"
        filled["pos_weight"] = options.get("pos_weight") or "none"
        filled["threshold"] = options.get("threshold")
        return filled

    @classmethod
    def from_data(cls, options: dict[str, Any], train: Any, recipe: Any = None) -> MultiLabelTask:
        options = cls.check_options(options, "task")
        rows = parse_label_sets(train, options["separator"])
        names = sorted({name for row in rows for name in row})
        if not names:
            raise DataError(f"{train.source}: no labels at all in the training data; multi-label classification needs at least one")
        task = cls(names, options["separator"], fixed_threshold=options["threshold"])
        if options["pos_weight"] == "balanced":
            y = task.encode(train)
            positives = y.sum(0)
            task.pos_weight = ((len(y) - positives) / positives.clamp(min=1)).clamp(max=100.0)
        return task

    @classmethod
    def from_state(cls, state: dict[str, Any], read: Any = None) -> MultiLabelTask:
        return cls(state["labels"], state.get("separator", "|"), state.get("thresholds"), state.get("fixed_threshold"))

    def state(self) -> dict[str, Any]:
        return {"type": self.type, "labels": list(self.labels), "separator": self.separator,
                "thresholds": self.thresholds, "fixed_threshold": self.fixed_threshold}

    def identity(self) -> Any:
        return {"type": self.type, "labels": list(self.labels)}

    def describe(self) -> str:
        return f"{len(self.labels)} labels"

    # -- targets
    def encode(self, examples: Any) -> torch.Tensor:
        rows = parse_label_sets(examples, self.separator)
        index = {name: k for k, name in enumerate(self.labels)}
        unknown = sorted({name for row in rows for name in row if name not in index})
        if unknown:
            shown = ", ".join(map(repr, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
            raise DataError(f"{examples.source}: labels {shown} do not occur in the training data")
        y = torch.zeros(len(rows), len(self.labels), dtype=torch.float32)
        for i, row in enumerate(rows):
            for name in row:
                y[i, index[name]] = 1.0
        return y

    def examples_per_class(self, examples: Any) -> dict[str, int] | None:
        positives = self.encode(examples).sum(0).tolist()
        return {name: int(n) for name, n in zip(self.labels, positives, strict=True)}

    # -- model
    @property
    def output_size(self) -> int:
        return len(self.labels)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        weight = self.pos_weight
        if weight is not None and weight.device != outputs.device:
            weight = self.pos_weight = weight.to(outputs.device)
        return {"task": F.binary_cross_entropy_with_logits(outputs.float(), targets.float(), pos_weight=weight)}

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().sigmoid()

    def calibrate(self, scores: np.ndarray, targets: np.ndarray) -> None:
        if self.fixed_threshold is None and targets is not None and len(targets):
            self.thresholds = best_thresholds(np.asarray(scores), np.asarray(targets))

    # -- judging
    def eval_loss(self, scores: np.ndarray, targets: np.ndarray) -> float | None:
        if not len(targets):
            return None
        p = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1 - 1e-12)
        y = np.asarray(targets, dtype=np.float64)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())

    def metrics(self, scores: np.ndarray, targets: np.ndarray, loss: float | None = None) -> dict[str, Any]:
        return multilabel_metrics(scores, targets, self.labels, self.thresholds, loss)

    def metric_names(self) -> list[str]:
        return ["loss", "micro_f1", "macro_f1", "map", "subset_accuracy", "hamming_loss"]

    def format_metrics(self, metrics: dict[str, Any], title: str = "") -> str:
        return format_multilabel_metrics(metrics, title)

    # -- predictions
    def decode(self, scores: np.ndarray) -> list[Any]:
        return multilabel_decisions(scores, self.labels, self.thresholds)

    def target_values(self, targets: np.ndarray) -> list[Any]:
        return [[self.labels[k] for k in np.flatnonzero(row > 0.5)] for row in np.asarray(targets)]

    def prediction_records(self, scores: np.ndarray, targets: np.ndarray | None) -> list[dict[str, Any]]:
        """``{"label", "predicted", "probabilities"}``: label lists, probabilities in ``labels`` order."""
        predicted = self.decode(scores)
        true = self.target_values(targets) if targets is not None else [None] * len(predicted)
        return [{"label": t, "predicted": p, "probabilities": [round(float(v), 6) for v in row]}
                for t, p, row in zip(true, predicted, scores, strict=True)]

    def example_values(self, records: list[dict[str, Any]]) -> list[tuple[str, np.ndarray, bool]]:
        """Sample-averaged F1: each example's F1 between its true and predicted label sets (1 when
        both are empty), so that the mean is scikit-learn's ``average="samples"`` F1; and exact
        set matches (subset accuracy)."""
        f1, exact = [], []
        for r in records:
            true, predicted = set(r["label"] or []), set(r["predicted"] or [])
            f1.append(1.0 if not true and not predicted else 2 * len(true & predicted) / (len(true) + len(predicted)))
            exact.append(float(true == predicted))
        return [("sample_f1", np.array(f1), True), ("subset_accuracy", np.array(exact), True)]

    def output_names(self) -> list[str]:
        return list(self.labels)

    def output_records(self, scores: np.ndarray) -> list[dict[str, Any]]:
        return multilabel_records(scores, self.labels, self.thresholds, self.separator)

    def card(self, modality: str, metrics: dict[str, Any], train: Any) -> dict[str, Any]:
        kind = {"image": "images", "audio": "audio clips"}.get(modality, "texts")
        values = [
            {"type": "f1", "value": round(float(metrics["micro_f1"]), 4), "name": "Micro F1", "args": {"average": "micro"}},
            {"type": "f1", "value": round(float(metrics["macro_f1"]), 4), "name": "Macro F1", "args": {"average": "macro"}},
            {"type": "map", "value": round(float(metrics["map"]), 4), "name": "Mean average precision"},
            {"type": "accuracy", "value": round(float(metrics["subset_accuracy"]), 4), "name": "Subset accuracy"},
            {"type": "hamming_loss", "value": round(float(metrics["hamming_loss"]), 4), "name": "Hamming loss"},
        ]
        rows = ["| metric | value |", "| --- | --- |"]
        for key, label in [("micro_f1", "micro F1"), ("macro_f1", "macro F1"), ("map", "mean average precision"),
                           ("subset_accuracy", "subset accuracy"), ("hamming_loss", "Hamming loss"), ("loss", "binary cross-entropy")]:
            if key in metrics:
                rows.append(f"| {label} | {metrics[key]:.4f} |")
        rows += ["", "| label | threshold | precision | recall | F1 | AP | support |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in metrics.get("per_label", {}).items():
            rows.append(f"| {name} | {r['threshold']:.2f} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | "
                        f"{r['average_precision']:.4f} | {r['support']} |")
        y = self.encode(train)
        counts = ", ".join(f"{n} {int(c)}" for n, c in zip(self.labels, y.sum(0).tolist(), strict=True))
        return {
            "pipeline_tag": f"{modality}-classification",
            "metric_names": ["f1", "map", "accuracy", "hamming_loss"],
            "metrics": values,
            "title": f"{modality} multi-label classifier ({len(self.labels)} labels)",
            "summary": f"Tags {kind} with any of {len(self.labels)} labels: {', '.join(f'`{c}`' for c in self.labels)}.",
            "use": (
                f"Tagging {kind} like those in the training data. It was fine-tuned on {len(train)} examples, so expect "
                "lower accuracy on inputs unlike them; rare labels are the least reliable (see each label's support and "
                "average precision below). Each label's decision threshold was chosen on the evaluation set, which makes "
                "the F1 numbers slightly optimistic."
            ),
            "data": f"(examples per label: {counts}; {int((y.sum(1) == 0).sum())} without any label)",
            "table": "\n".join(rows),
            "report": "Curves, the per-label table and the examples with the most wrong labels: `report.html`.",
        }

    def export_config(self) -> dict[str, Any]:
        return {"id2label": dict(enumerate(self.labels)), "label2id": {c: i for i, c in enumerate(self.labels)},
                "problem_type": "multi_label_classification", "thresholds": self.thresholds}


def parse_label_sets(examples: Any, separator: str) -> list[list[str]]:
    """Each example's labels from its cell: a list, a JSON list string, ``a|b`` text, or empty."""
    rows = []
    column = (examples.label_columns or ["label"])[0]
    for i, cell in enumerate(examples.labels or []):
        if isinstance(cell, tuple):
            raise DataError(f"{examples.where(i)}: a multi-label task reads one label column, got {len(cell)}")
        if isinstance(cell, list):
            rows.append([str(x).strip() for x in cell if str(x).strip()])
            continue
        text = str(cell).strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                raise DataError(f"{examples.where(i, column)}: {text[:60]!r} is not a valid JSON list of labels") from None
            rows.append([str(x).strip() for x in parsed if str(x).strip()])
            continue
        foreign = [c for c in FOREIGN_SEPARATORS if c in text and c not in separator]
        if foreign:
            raise DataError(
                f"{examples.where(i, column)}: multi-label cell {text[:60]!r} is separated by {foreign[0]!r}, "
                f"but labels are separated by {separator!r}; set task.separator to {foreign[0]!r} or fix the cell"
            )
        rows.append([part.strip() for part in text.split(separator) if part.strip()])
    return rows
