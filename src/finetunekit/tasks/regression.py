"""Regression: one or several numeric targets per example.

The head outputs one value per target. Targets are standardised with the training set's mean and
standard deviation (stored in the run directory) so that one learning rate suits targets of any
scale; the loss (MSE, Huber or L1) works on standardised values, and predictions are turned back
into target units. Metrics, in target units: RMSE, MAE, R², Pearson and Spearman correlation
(averaged over targets, and per target when there are several).

Example::

    task = RegressionTask.from_data({"loss": "mse"}, train_examples)
    task.mean, task.std                        # per target, from the training set
    regression_metrics(pred, true, ["score"])  # {"rmse": ..., "mae": ..., "r2": ..., ...}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..core.answers import regression_records
from ..core.errors import DataError, check_range
from . import TASKS
from .base import ReportView, Task
from .options import TaskOptions

METRICS = ("rmse", "mae", "r2", "pearson", "spearman")


def regression_metrics(pred: np.ndarray, true: np.ndarray, names: Sequence[str], loss: float | None = None) -> dict[str, Any]:
    """Metrics of (N, T) predictions against (N, T) true values; the top-level numbers average the
    targets, ``per_target`` has each. A correlation of constant predictions is 0 (not NaN)."""
    from scipy.stats import pearsonr, spearmanr

    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    true = np.asarray(true, dtype=np.float64).reshape(len(true), -1)
    per_target: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        p, t = pred[:, j], true[:, j]
        err = p - t
        ss_tot = float(((t - t.mean()) ** 2).sum()) if len(t) else 0.0
        row = {
            "rmse": float(np.sqrt((err**2).mean())) if len(t) else 0.0,
            "mae": float(np.abs(err).mean()) if len(t) else 0.0,
            "r2": 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else 0.0,
            "pearson": 0.0,
            "spearman": 0.0,
        }
        if len(t) > 1 and p.std() > 0 and t.std() > 0:
            row["pearson"] = float(pearsonr(p, t)[0])
            row["spearman"] = float(spearmanr(p, t)[0])
        per_target[name] = row
    result: dict[str, Any] = {k: float(np.mean([r[k] for r in per_target.values()])) for k in METRICS}
    result["num_examples"] = int(len(true))
    if loss is not None:
        result["loss"] = float(loss)
    result["per_target"] = per_target
    return result


def format_regression_metrics(metrics: dict[str, Any], title: str = "") -> str:
    lines = [title] if title else []
    overall = [("RMSE", "rmse"), ("MAE", "mae"), ("R2", "r2"), ("Pearson", "pearson"), ("Spearman", "spearman")]
    if "loss" in metrics:
        overall.append(("loss", "loss"))
    lines.append("  ".join(f"{label} {metrics[key]:.4f}" for label, key in overall) + f"  (n={metrics['num_examples']})")
    per_target = metrics.get("per_target", {})
    if len(per_target) > 1:
        width = max(8, *(len(c) for c in per_target))
        lines.append(f"  {'target':<{width}} " + " ".join(f"{k:>9}" for k in METRICS))
        for name, row in per_target.items():
            lines.append(f"  {name:<{width}} " + " ".join(f"{row[k]:>9.4f}" for k in METRICS))
    return "\n".join(lines)


@dataclass
class RegressionOptions(TaskOptions):
    """``task:`` options of regression: the loss on standardised targets (``huber`` with delta
    ``huber_delta``); targets are standardised with the training set's mean and standard deviation
    (kept in the run) unless ``standardize`` is false; data.label_column may list several targets."""

    loss: Literal["mse", "huber", "l1"] | None = None
    huber_delta: float | None = None
    standardize: bool | None = None

    def __post_init__(self) -> None:
        if self.huber_delta is not None:
            check_range("task.huber_delta", self.huber_delta, 0.0, 1e6, low_open=True)


@TASKS.register("regression")
class RegressionTask(Task):
    """Numeric targets; options (recipe ``task:``): ``loss`` mse | huber | l1, ``huber_delta``
    (in standard deviations), ``standardize``."""

    type = "regression"
    answer_form = "values"
    Options = RegressionOptions
    primary_metric = "rmse"
    lower_is_better = frozenset({"loss", "rmse", "mae"})
    epoch_metrics = ("rmse", "mae", "r2", "spearman")
    title = "regression"
    # what an export's outputs mean (its README's loading notes)
    export_note = (
        "the outputs are predictions in target units (the target statistics are folded into the last layer), "
        "one column per target in `task.json`'s `targets` order"
    )
    report = ReportView(
        noun="regression of {names}",
        cards=(("RMSE", "rmse"), ("MAE", "mae"), ("R²", "r2"), ("Pearson", "pearson"), ("Spearman", "spearman"), ("loss", "loss")),
        curves=(("val_r2", "R²"), ("val_spearman", "Spearman")),
        sections=("predicted_vs_true", "residuals", "largest_errors"),
        compared=("rmse", "mae", "r2", "pearson", "spearman", "loss"),
        bounded=False,
    )

    def __init__(self, names: Sequence[str], mean: Sequence[float], std: Sequence[float], loss: str = "mse", huber_delta: float = 1.0) -> None:
        self.names = list(names)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.loss_kind = loss
        self.huber_delta = float(huber_delta)
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32)
        self._std_t = torch.tensor(self.std, dtype=torch.float32)

    @classmethod
    def check_options(cls, options: dict[str, Any], where: str) -> dict[str, Any]:
        filled = dict(options)
        filled["loss"] = options.get("loss") or "mse"
        filled["huber_delta"] = 1.0 if options.get("huber_delta") is None else float(options["huber_delta"])
        filled["standardize"] = True if options.get("standardize") is None else bool(options["standardize"])
        return filled

    @classmethod
    def from_data(cls, options: dict[str, Any], train: Any, recipe: Any = None) -> RegressionTask:
        options = cls.check_options(options, "task")
        names = list(train.label_columns or ["target"])
        values = parse_targets(train, names)
        if len(values) < 2:
            raise DataError(f"{train.source}: regression needs at least two training examples")
        if options["standardize"]:
            mean, std = values.mean(axis=0), values.std(axis=0)
            std = np.where(std > 0, std, 1.0)
        else:
            mean, std = np.zeros(values.shape[1]), np.ones(values.shape[1])
        return cls(names, mean.tolist(), std.tolist(), options["loss"], options["huber_delta"])

    @classmethod
    def from_state(cls, state: dict[str, Any], read: Any = None) -> RegressionTask:
        return cls(state["targets"], state["mean"], state["std"], state.get("loss", "mse"), state.get("huber_delta", 1.0))

    def state(self) -> dict[str, Any]:
        return {"type": self.type, "targets": self.names, "mean": self.mean, "std": self.std,
                "loss": self.loss_kind, "huber_delta": self.huber_delta}

    def identity(self) -> Any:
        return {"type": self.type, "targets": self.names}

    def describe(self) -> str:
        return f"{len(self.names)} target{'s' if len(self.names) > 1 else ''} ({', '.join(self.names)}), {self.loss_kind} loss"

    # -- targets
    def encode(self, examples: Any) -> torch.Tensor:
        values = parse_targets(examples, self.names)
        return (torch.tensor(values, dtype=torch.float32) - self._mean_t) / self._std_t

    # -- model
    @property
    def output_size(self) -> int:
        return len(self.names)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs, targets = outputs.float(), targets.float().view_as(outputs)
        if self.loss_kind == "huber":
            value = F.huber_loss(outputs, targets, delta=self.huber_delta)
        elif self.loss_kind == "l1":
            value = F.l1_loss(outputs, targets)
        else:
            value = F.mse_loss(outputs, targets)
        return {"task": value}

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Predictions in target units."""
        outputs = outputs.float()
        return outputs * self._std_t.to(outputs.device) + self._mean_t.to(outputs.device)

    def _units(self, targets: np.ndarray) -> np.ndarray:
        return np.asarray(targets, dtype=np.float64).reshape(len(targets), -1) * np.array(self.std) + np.array(self.mean)

    # -- judging
    def eval_loss(self, scores: np.ndarray, targets: np.ndarray) -> float | None:
        if not len(targets):
            return None
        out = (np.asarray(scores, dtype=np.float64) - np.array(self.mean)) / np.array(self.std)
        value = self.loss(torch.as_tensor(out), torch.as_tensor(np.asarray(targets, dtype=np.float64)))["task"]
        return float(value)

    def metrics(self, scores: np.ndarray, targets: np.ndarray, loss: float | None = None) -> dict[str, Any]:
        return regression_metrics(scores, self._units(targets), self.names, loss)

    def metric_names(self) -> list[str]:
        return ["loss", *METRICS]

    def format_metrics(self, metrics: dict[str, Any], title: str = "") -> str:
        return format_regression_metrics(metrics, title)

    # -- predictions
    def decode(self, scores: np.ndarray) -> list[Any]:
        scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
        if scores.shape[1] == 1:
            return [float(v) for v in scores[:, 0]]
        return [[float(v) for v in row] for row in scores]

    def target_values(self, targets: np.ndarray) -> list[Any]:
        return self.decode(self._units(targets))

    def prediction_records(self, scores: np.ndarray, targets: np.ndarray | None) -> list[dict[str, Any]]:
        """``{"label", "predicted"}``: numbers (one target) or lists in ``targets`` order."""
        predicted = self.decode(scores)
        true = self.target_values(targets) if targets is not None else [None] * len(predicted)
        return [{"label": _rounded(t), "predicted": _rounded(p)} for t, p in zip(true, predicted, strict=True)]

    def example_values(self, records: list[dict[str, Any]]) -> list[tuple[str, np.ndarray, bool]]:
        """MAE: each example's absolute error in target units (the mean over its targets)."""
        errors = [np.abs(np.asarray(r["predicted"], dtype=np.float64) - np.asarray(r["label"], dtype=np.float64)).mean()
                  for r in records]
        return [("mae", np.array(errors, dtype=np.float64), False)]

    def output_names(self) -> list[str]:
        return list(self.names)

    def explain_targets(self, scores: np.ndarray) -> list[int]:
        """The first target (its standardised output rises with the value in target units)."""
        return [0] * len(scores)

    def output_records(self, scores: np.ndarray) -> list[dict[str, Any]]:
        return regression_records(scores, self.names)

    def card(self, modality: str, metrics: dict[str, Any], train: Any) -> dict[str, Any]:
        kind = {"image": "images", "audio": "audio clips"}.get(modality, "texts")
        names = ", ".join(f"`{n}`" for n in self.names)
        values = [
            {"type": "rmse", "value": round(float(metrics["rmse"]), 4), "name": "RMSE"},
            {"type": "mae", "value": round(float(metrics["mae"]), 4), "name": "MAE"},
            {"type": "r_squared", "value": round(float(metrics["r2"]), 4), "name": "R²"},
            {"type": "pearsonr", "value": round(float(metrics["pearson"]), 4), "name": "Pearson correlation"},
            {"type": "spearmanr", "value": round(float(metrics["spearman"]), 4), "name": "Spearman correlation"},
        ]
        rows = ["| metric | value |", "| --- | --- |"]
        for key, label in [("rmse", "RMSE"), ("mae", "MAE"), ("r2", "R²"), ("pearson", "Pearson"), ("spearman", "Spearman"), ("loss", f"{self.loss_kind} loss (standardised)")]:
            if key in metrics:
                rows.append(f"| {label} | {metrics[key]:.4f} |")
        if len(self.names) > 1:
            rows += ["", "| target | RMSE | MAE | R² | Pearson | Spearman |", "| --- | --- | --- | --- | --- | --- |"]
            for name, r in metrics.get("per_target", {}).items():
                rows.append(f"| {name} | " + " | ".join(f"{r[k]:.4f}" for k in METRICS) + " |")
        stats = ", ".join(f"{n} mean {m:.4g}, sd {s:.4g}" for n, m, s in zip(self.names, self.mean, self.std, strict=True))
        return {
            "pipeline_tag": "text-classification" if modality == "text" else "image-classification",
            "metric_names": ["rmse", "mae", "r_squared", "pearsonr", "spearmanr"],
            "metrics": values,
            "title": f"{modality} regression ({len(self.names)} target{'s' if len(self.names) > 1 else ''})",
            "summary": f"Predicts {names} from {kind}.",
            "use": (
                f"Estimating {names} for {kind} like those in the training data. It was fine-tuned on {len(train)} examples, "
                "so expect larger errors on inputs unlike them and outside the range of the training targets; it always "
                "answers with a number, even for inputs it knows nothing about."
            ),
            "data": f"({stats})",
            "table": "\n".join(rows),
            "report": "Curves, predicted against true values and the residuals, and the largest errors: `report.html`.",
        }

    def export_head(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The de-standardisation folded into the layer: exports output values in target units."""
        std, mean = self._std_t.to(state["weight"].dtype), self._mean_t.to(state["weight"].dtype)
        return {"weight": state["weight"] * std[:, None], "bias": state["bias"] * std + mean}

    def export_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.scores(outputs)

    def import_outputs(self, exported: torch.Tensor) -> torch.Tensor:
        exported = exported.float()
        return (exported - self._mean_t.to(exported.device)) / self._std_t.to(exported.device)

    def export_config(self) -> dict[str, Any]:
        return {"id2label": dict(enumerate(self.names)), "label2id": {n: i for i, n in enumerate(self.names)},
                "problem_type": "regression", "target_mean": self.mean, "target_std": self.std}


def _rounded(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [round(v, 6) for v in value]
    return round(value, 6)


def parse_targets(examples: Any, names: Sequence[str]) -> np.ndarray:
    """(N, T) float64 targets from the label cells; a non-number names its file, row and column."""
    labels = examples.labels or []
    out = np.zeros((len(labels), len(names)), dtype=np.float64)
    for i, cell in enumerate(labels):
        cells = cell if isinstance(cell, tuple) else (cell,)
        if len(cells) != len(names):
            raise DataError(f"{examples.where(i)}: expected {len(names)} target columns ({', '.join(names)}), got {len(cells)}")
        for j, value in enumerate(cells):
            try:
                number = float(value) if not isinstance(value, (list, bool)) else math.nan
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise DataError(f"{examples.where(i, names[j])}: regression target {value!r} is not a finite number")
            out[i, j] = number
    return out
