"""Single-label classification: one class per example.

Cross-entropy (with label smoothing and optional class weights) on a linear head, softmax
probabilities, the argmax as the prediction, the label map (class names <-> indices, stored as
``labels.json``), and the metrics: accuracy, per-class and macro precision / recall / F1, the
confusion matrix, the calibration error.

Example::

    task = ClassificationTask.from_data({}, train_examples)
    task.classes                                   # ('ants', 'bees')
    m = classification_metrics(probs, labels, classes=["ant", "bee"])
    m["accuracy"], m["macro_f1"], m["per_class"]["bee"]["recall"]
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.answers import classification_records
from ..core.errors import DataError
from ..core.stats import confidence_intervals, format_ci
from . import TASKS
from .base import ReportView, Task

# -- label maps ------------------------------------------------------------------------------------


def _sort_key(label: str) -> tuple[int, float | str]:
    # Integer-looking labels sort numerically so that label "2" gets index 2 in 0..N-1 datasets.
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def number_spellings(labels: list[str]) -> list[str] | None:
    """Two or more distinct labels naming the same finite number ('1', '1.0', '01'), else None."""
    by_value: dict[float, set[str]] = defaultdict(set)
    for label in set(labels):
        if not isinstance(label, str):
            continue
        try:
            value = float(label)
        except ValueError:
            continue
        if math.isfinite(value):
            by_value[value].add(label)
    return next((sorted(names) for _, names in sorted(by_value.items()) if len(names) > 1), None)


@dataclass(frozen=True)
class LabelMap:
    classes: tuple[str, ...]

    @classmethod
    def from_labels(cls, labels: Iterable[str], where: str = "training data") -> LabelMap:
        """The classes of ``labels``; refuses one number written several ways ('1' and '1.0'),
        which would otherwise split one class in two."""
        found = set(labels)
        clash = number_spellings(list(found))
        if clash:
            raise DataError(
                f"{where}: labels {', '.join(map(repr, clash))} are one value written {len(clash)} ways; "
                "write each class one way"
            )
        return cls(tuple(sorted(found, key=_sort_key)))

    def __len__(self) -> int:
        return len(self.classes)

    def encode(self, labels: Sequence[str], where: str = "data") -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({lab for lab in labels if lab not in index}, key=_sort_key)
        if unknown:
            shown = ", ".join(map(repr, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
            raise DataError(f"{where}: labels {shown} do not occur in the training data (classes: {', '.join(self.classes)})")
        return [index[lab] for lab in labels]

    def decode(self, indices: Iterable[int]) -> list[str]:
        return [self.classes[i] for i in indices]

    def to_json(self) -> dict:
        return {"classes": list(self.classes)}

    @classmethod
    def from_json(cls, raw: dict) -> LabelMap:
        return cls(tuple(str(c) for c in raw["classes"]))


# -- metrics ---------------------------------------------------------------------------------------


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
    cells = [f"{label} {metrics[key]:.4f}" + (f" {ci}" if (ci := format_ci(metrics.get(f"{key}_ci"))) else "") for label, key in overall]
    lines.append("  ".join(cells) + f"  (n={metrics['num_examples']})")
    if any(f"{key}_ci" in metrics for _, key in overall):
        lines.append("  [low, high]: 95% bootstrap confidence interval over the evaluation examples")
    per_class = metrics.get("per_class", {})
    if per_class:
        width = max(8, *(len(c) for c in per_class))
        lines.append(f"  {'class':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
        for name, row in per_class.items():
            lines.append(f"  {name:<{width}} {row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f} {row['support']:>8d}")
    return "\n".join(lines)


# -- the task --------------------------------------------------------------------------------------


def balanced_class_weights(label_ids: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``N / (num_classes * N_c)``: each class's examples weigh the same in
    total, and a balanced training set gets weight 1 everywhere (as scikit-learn's "balanced")."""
    counts = torch.bincount(torch.as_tensor(list(label_ids), dtype=torch.long), minlength=num_classes).double()
    return (counts.sum() / (num_classes * counts.clamp(min=1))).float()


@TASKS.register("classification")
class ClassificationTask(Task):
    """One class per example: softmax over the label map's classes.

    ``label_smoothing`` and ``class_weights`` come from the recipe's train section
    (``train.label_smoothing``, ``train.class_weights``).
    """

    type = "classification"
    answer_form = "one_class"
    primary_metric = "accuracy"
    lower_is_better = frozenset({"loss", "ece"})
    epoch_metrics = ("accuracy", "macro_f1")
    title = "single-label classification"
    single_class = True
    report = ReportView(
        noun="{count} classes",
        cards=(("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("macro precision", "macro_precision"),
               ("macro recall", "macro_recall"), ("loss", "loss"), ("ECE", "ece")),
        curves=(("val_accuracy", "accuracy"), ("val_macro_f1", "macro F1")),
        sections=("confusion", "per_class", "calibration", "errors"),
        compared=("accuracy", "macro_f1", "macro_precision", "macro_recall", "loss", "ece"),
    )

    def __init__(self, labels: LabelMap, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None) -> None:
        self.labels = labels
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        self.counts: dict[str, int] = {}  # training examples per class (model card)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.labels.classes

    @classmethod
    def from_data(cls, options: dict[str, Any], train: Any, recipe: Any = None) -> ClassificationTask:
        labels = _names(train)
        label_map = LabelMap.from_labels(labels, train.source)
        if len(label_map) < 2:
            raise DataError(f"{train.source}: only one class ({', '.join(label_map.classes) or 'none'}); classification needs at least two")
        t = getattr(recipe, "train", None)
        smoothing = float(getattr(t, "label_smoothing", 0.0) or 0.0)
        task = cls(label_map, smoothing)
        if getattr(t, "class_weights", "none") == "balanced":
            task.class_weights = balanced_class_weights(label_map.encode(labels, train.source), len(label_map))
        task.counts = dict(Counter(labels))
        return task

    @classmethod
    def from_state(cls, state: dict[str, Any], read: Any = None) -> ClassificationTask:
        classes = state.get("classes")
        if classes is None:  # run directories written before tasks were stored: labels.json alone
            classes = read("labels.json")["classes"]
        return cls(LabelMap(tuple(str(c) for c in classes)))

    def state(self) -> dict[str, Any]:
        return {"type": self.type, "classes": list(self.classes)}

    def check_run_files(self, run_dir: Any, info: dict[str, Any], read: Any) -> None:
        """labels.json's class names, checked against the head finetunekit.json describes (and the
        classes it stores)."""
        from ..core.errors import FinetuneError

        path = f"{run_dir}/labels.json"
        raw = read("labels.json")
        classes = raw.get("classes") if isinstance(raw, dict) else None
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise FinetuneError(f'{path}: expected {{"classes": [class names, in the order of the head\'s outputs]}}')
        head = info.get("head", {})
        outputs = head.get("out_features", head.get("num_classes"))
        if isinstance(outputs, int) and outputs != len(classes):
            raise FinetuneError(
                f"{path}: {len(classes)} classes, but the model's head has {outputs} outputs ({run_dir}/finetunekit.json); "
                "labels.json comes from another run"
            )
        if list(classes) != list(self.classes):
            raise FinetuneError(f"{path}: classes {classes} differ from those finetunekit.json stores; labels.json comes from another run")

    def files(self) -> dict[str, Any]:
        return {"labels.json": self.labels.to_json()}

    def identity(self) -> Any:
        return list(self.classes)

    def describe(self) -> str:
        return f"{len(self.labels)} classes"

    # -- targets
    def encode(self, examples: Any) -> torch.Tensor:
        return torch.tensor(self.labels.encode(_names(examples), examples.source), dtype=torch.long)

    @classmethod
    def strata_for(cls, examples: Any, spec: Any = None) -> list[Any] | None:
        return _names(examples)

    def examples_per_class(self, examples: Any) -> dict[str, int] | None:
        counts = Counter(_names(examples))
        return {c: counts.get(c, 0) for c in self.classes}

    def sampling_classes(self, targets: torch.Tensor) -> torch.Tensor:
        return targets

    # -- model
    @property
    def output_size(self) -> int:
        return len(self.labels)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        weight = self.class_weights
        if weight is not None and weight.device != outputs.device:
            weight = self.class_weights = weight.to(outputs.device)
        return {"task": F.cross_entropy(outputs.float(), targets, weight=weight, label_smoothing=self.label_smoothing)}

    def mixable(self, targets: torch.Tensor) -> torch.Tensor:
        return F.one_hot(targets, len(self.labels)).float()

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().softmax(-1)

    # -- judging
    def eval_loss(self, scores: np.ndarray, targets: np.ndarray) -> float | None:
        if not len(targets):
            return None
        loss = float(-np.log(np.clip(scores[np.arange(len(targets)), targets], 1e-12, None)).mean())
        return loss if np.isfinite(loss) else None

    def metrics(self, scores: np.ndarray, targets: np.ndarray, loss: float | None = None) -> dict[str, Any]:
        return classification_metrics(scores, targets, self.classes, loss)

    def confidence_intervals(self, scores: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        return confidence_intervals(targets, scores.argmax(axis=1), len(self.classes))

    def metric_names(self) -> list[str]:
        return ["loss", "accuracy", "macro_f1", "macro_precision", "macro_recall", "ece"]

    def format_metrics(self, metrics: dict[str, Any], title: str = "") -> str:
        return format_metrics(metrics, title)

    # -- predictions
    def decode(self, scores: np.ndarray) -> list[Any]:
        return self.labels.decode(np.asarray(scores).argmax(axis=1).tolist())

    def target_values(self, targets: np.ndarray) -> list[Any]:
        return self.labels.decode(np.asarray(targets).tolist())

    def prediction_records(self, scores: np.ndarray, targets: np.ndarray | None) -> list[dict[str, Any]]:
        """``{"label", "predicted", "confidence", "probabilities"}`` (probabilities in labels.json order)."""
        records = []
        for i, row in enumerate(scores):
            best = int(row.argmax())
            records.append({
                "label": None if targets is None else self.classes[int(targets[i])],
                "predicted": self.classes[best],
                "confidence": round(float(row[best]), 6),
                "probabilities": [round(float(p), 6) for p in row],
            })
        return records

    def output_records(self, scores: np.ndarray) -> list[dict[str, Any]]:
        return classification_records(scores, self.classes)

    def answers(self, scores: np.ndarray) -> list[dict[str, Any]]:
        """``{"label", "score", "scores"}``: the predicted class, its probability and every class's."""
        answers = []
        for row in np.asarray(scores, dtype=np.float64):
            best = int(row.argmax())
            answers.append({
                "label": self.classes[best],
                "score": float(row[best]),
                "scores": {name: float(p) for name, p in zip(self.classes, row, strict=True)},
            })
        return answers

    def example_values(self, records: list[dict[str, Any]]) -> list[tuple[str, np.ndarray, bool]]:
        """Accuracy: 1 for an example predicted right, 0 otherwise."""
        return [("accuracy", np.array([float(r["predicted"] == r["label"]) for r in records]), True)]

    def output_names(self) -> list[str]:
        return list(self.classes)

    def table_row(self, answer: dict[str, Any]) -> dict[str, Any]:
        """``label, score, score_<class>...`` (one per class, in label order)."""
        return {"label": answer["label"], "score": answer["score"], **{f"score_{c}": p for c, p in answer["scores"].items()}}

    def card(self, modality: str, metrics: dict[str, Any], train: Any) -> dict[str, Any]:
        kind = {"image": "images", "audio": "audio clips"}.get(modality, "texts")
        classes = list(metrics.get("per_class", {})) or list(self.classes)
        counts = self.counts or Counter(train.labels or [])
        values = [
            {"type": "accuracy", "value": round(float(metrics["accuracy"]), 4), "name": "Accuracy"},
            {"type": "f1", "value": round(float(metrics["macro_f1"]), 4), "name": "Macro F1", "args": {"average": "macro"}},
            {"type": "precision", "value": round(float(metrics["macro_precision"]), 4), "name": "Macro precision", "args": {"average": "macro"}},
            {"type": "recall", "value": round(float(metrics["macro_recall"]), 4), "name": "Macro recall", "args": {"average": "macro"}},
        ]
        if "ece" in metrics:
            values.append({"type": "ece", "value": round(float(metrics["ece"]), 4), "name": "Expected calibration error (15 bins)"})
        rows = ["| metric | value |", "| --- | --- |"]
        for key, label in [("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("macro_precision", "macro precision"),
                           ("macro_recall", "macro recall"), ("loss", "cross-entropy loss"), ("ece", "ECE")]:
            if key in metrics:
                rows.append(f"| {label} | {metrics[key]:.4f} |")
        rows += ["", "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
        for name, r in metrics.get("per_class", {}).items():
            rows.append(f"| {name} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |")
        return {
            "pipeline_tag": f"{modality}-classification",
            "metric_names": ["accuracy", "f1", "precision", "recall"],
            "metrics": values,
            "title": f"{modality} classifier ({len(classes)} classes)",
            "summary": f"Classifies {kind} into {len(classes)} classes: {', '.join(f'`{c}`' for c in classes)}.",
            "use": (
                f"Sorting {kind} like those in the training data into the classes above. "
                f"It was fine-tuned on {len(train)} examples, so expect lower accuracy on inputs unlike them "
                "(other sources, styles, lengths or languages), and check each class's recall below before relying on it. "
                "It always answers with one of its classes, even for inputs that belong to none; the probabilities are only "
                f"as reliable as the calibration error (ECE {metrics.get('ece', float('nan')):.3f}) says."
            ),
            "data": "(" + ", ".join(f"{c} {counts.get(c, 0)}" for c in classes) + ")",
            "table": "\n".join(rows),
            "report": "Curves, confusion matrix, calibration and the worst errors: `report.html`.",
        }

    def export_config(self) -> dict[str, Any]:
        return {"id2label": dict(enumerate(self.classes)), "label2id": {c: i for i, c in enumerate(self.classes)},
                "problem_type": "single_label_classification"}


def _names(examples: Any) -> list[str]:
    """The examples' class names; an empty cell or a list names its file, row and column."""
    names = []
    column = (examples.label_columns or ["label"])[0]
    for i, cell in enumerate(examples.labels or []):
        if isinstance(cell, (list, tuple)):
            raise DataError(f"{examples.where(i)}: a classification label is one name per example, got {cell!r} "
                            "(set task.type: multilabel for several labels per example)")
        if str(cell) == "":
            raise DataError(f"{examples.where(i)}: missing label in column {column!r}")
        names.append(str(cell))
    return names
