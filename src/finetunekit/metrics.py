"""Classification metrics from predictions: accuracy, per-class and macro precision / recall / F1,
confusion matrix, calibration error. Plain numpy, no state.

Example::

    m = classification_metrics(probs, labels, classes=["ant", "bee"])
    m["accuracy"], m["macro_f1"], m["per_class"]["bee"]["recall"]
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, preds), 1)
    return matrix


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str] | tuple[str, ...], loss: float | None = None) -> dict[str, Any]:
    """All metrics for one evaluation. Classes absent from both labels and predictions get
    precision/recall/F1 of 0 and are left out of the macro averages."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    preds = probs.argmax(axis=1)
    k = len(classes)
    matrix = confusion_matrix(labels, preds, k)
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = (support > 0) | (predicted > 0)
    result: dict[str, Any] = {
        "accuracy": float((preds == labels).mean()) if len(labels) else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "ece": expected_calibration_error(probs, labels) if len(labels) else 0.0,
        "num_examples": int(len(labels)),
    }
    if loss is not None:
        result["loss"] = float(loss)
    result["per_class"] = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    result["confusion_matrix"] = matrix.tolist()
    return result


def format_metrics(metrics: dict[str, Any], title: str = "") -> str:
    """A plain-text table: overall numbers, then one row per class."""
    lines = [title] if title else []
    overall = [("accuracy", "accuracy"), ("macro P", "macro_precision"), ("macro R", "macro_recall"), ("macro F1", "macro_f1")]
    if "loss" in metrics:
        overall.append(("loss", "loss"))
    lines.append("  ".join(f"{label} {metrics[key]:.4f}" for label, key in overall) + f"  (n={metrics['num_examples']})")
    per_class = metrics.get("per_class", {})
    if per_class:
        width = max(8, *(len(c) for c in per_class))
        lines.append(f"  {'class':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
        for name, row in per_class.items():
            lines.append(f"  {name:<{width}} {row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f} {row['support']:>8d}")
    return "\n".join(lines)
