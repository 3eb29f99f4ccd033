"""Report figures drawn with matplotlib's object API (``Figure`` + Agg canvas, never pyplot), so
plotting touches no global state and needs no display. Each function returns a :class:`Plot`: a
PNG, ready to inline in a page as a data URI.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .run_data import RunData, reliability_bins

DPI = 100
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


@dataclass
class Plot:
    png: bytes
    width: int  # pixels
    height: int
    alt: str

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _render(fig, alt: str) -> Plot:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    width, height = (int(round(v)) for v in fig.get_size_inches() * DPI)
    return Plot(buffer.getvalue(), width, height, alt)


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _series(rows: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    points = [(r[x], r[y]) for r in rows if r.get(y) is not None and not _nan(r[y])]
    return [p[0] for p in points], [p[1] for p in points]


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def loss_curves(run: RunData) -> Plot:
    """Training loss per optimizer step (thin) and per epoch, validation loss per epoch, against steps."""
    fig = _figure(5.8, 3.5)
    ax = fig.add_subplot()
    if run.steps:
        xs, ys = _series(run.steps, "step", "loss")
        ax.plot(xs, ys, color=COLORS[0], alpha=0.3, linewidth=0.8, label="train (per step)")
    xs, ys = _series(run.epochs, "step", "train_loss")
    ax.plot(xs, ys, "o-", color=COLORS[0], label="train (epoch mean)")
    xs, ys = _series(run.epochs, "step", "val_loss")
    ax.plot(xs, ys, "s-", color=COLORS[1], label="validation")
    _mark_best(ax, run)
    _style(ax, "Loss", "optimizer step", "loss")
    ax.legend(fontsize=8)
    return _render(fig, "training and validation loss curves")


def metric_curves(run: RunData, curves: list[tuple[str, str]] | None = None, bounded: bool = True) -> Plot:
    """Validation metrics per epoch (default: accuracy and macro F1); ``bounded``: scores in [0, 1]."""
    curves = curves or [("val_accuracy", "accuracy"), ("val_macro_f1", "macro F1")]
    fig = _figure(5.8, 3.5)
    ax = fig.add_subplot()
    for i, (key, label) in enumerate(curves):
        xs, ys = _series(run.epochs, "epoch", key)
        ax.plot(xs, ys, "o-", color=COLORS[i + 2], label=f"validation {label}")
    best = run.metrics.get("best_epoch")
    if best:
        ax.axvline(best, color="#555555", linestyle="--", linewidth=1, label=f"best epoch ({best})")
    if bounded:
        ax.set_ylim(-0.02, 1.02)
    _integer_ticks(ax)
    _style(ax, "Validation metrics", "epoch", "score")
    ax.legend(fontsize=8, loc="lower right")
    return _render(fig, f"validation {' and '.join(label for _, label in curves)} per epoch")


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mark_best(ax, run: RunData) -> None:
    best = run.metrics.get("best_epoch")
    steps = {r["epoch"]: r["step"] for r in run.epochs if "epoch" in r and "step" in r}
    if best in steps:
        ax.axvline(steps[best], color="#555555", linestyle="--", linewidth=1, label=f"best epoch ({best})")


def lr_curves(run: RunData) -> Plot:
    """Learning rate of every parameter group, per optimizer step (per epoch for runs without steps.jsonl)."""
    rows, x = (run.steps, "step") if run.steps else (run.epochs, "epoch")
    groups: list[str] = []
    for row in rows:
        groups += [g for g in row.get("lr", {}) if g not in groups]
    fig = _figure(5.8, 3.5)
    ax = fig.add_subplot()
    positive = [r["lr"][g] for r in rows for g in r.get("lr", {}) if r["lr"][g] > 0]
    # Head and backbone rates often differ 100-1000x: a log axis shows both (a rate of 0, frozen
    # or at the end of a decay, is left out there).
    log = bool(positive) and max(positive) / min(positive) > 30
    colors = _group_colors(groups)
    for i, group in enumerate(groups):
        points = [(r[x], r["lr"][group]) for r in rows if group in r.get("lr", {}) and (r["lr"][group] > 0 or not log)]
        # Groups often share a schedule: dashes keep overlapping lines visible.
        ax.plot([p[0] for p in points], [p[1] for p in points], color=colors[group], label=group,
                drawstyle="steps-post", marker="" if x == "step" else "o", linestyle=["-", "--", ":", "-."][i % 4],
                linewidth=2.2 - 0.4 * (i % 3))
    _style(ax, "Learning rate per parameter group", "optimizer step" if x == "step" else "epoch", "learning rate")
    if log:
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if groups:
        ax.legend(fontsize=8, ncol=2 if len(groups) > 6 else 1)
    return _render(fig, "learning rate per parameter group")


def _group_colors(groups: list[str]) -> dict[str, Any]:
    """Per-layer backbone groups (``backbone.<i>``, layer-wise LR decay) shade from light (input
    end) to dark (output end), so a dozen of them read as one ordered family; others take the palette."""
    from matplotlib import colormaps

    layered = sorted((g for g in groups if g.startswith("backbone.") and g[9:].isdigit()), key=lambda g: int(g[9:]))
    colors: dict[str, Any] = {g: colormaps["Blues"](0.35 + 0.65 * i / max(1, len(layered) - 1)) for i, g in enumerate(layered)}
    others = [g for g in groups if g not in colors]
    palette = [c for c in COLORS if c != COLORS[0]] if layered else COLORS  # blue is the layered family's
    colors.update({g: palette[i % len(palette)] for i, g in enumerate(others)})
    return colors


def confusion_matrix_plot(run: RunData) -> Plot:
    """Counts, coloured by the share of each true class (row-normalised), so small classes show too."""
    matrix = np.array(run.metrics["confusion_matrix"], dtype=np.int64)
    k = len(run.classes)
    side = min(12.0, max(4.6, 0.55 * k + 2.2))
    fig = _figure(side, side * 0.85)
    ax = fig.add_subplot()
    share = matrix / np.clip(matrix.sum(axis=1, keepdims=True), 1, None)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.9, label="share of the true class")
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=run.classes, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(ticks, labels=run.classes)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=9 if k <= 12 else 6,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (validation)", fontsize=11)
    return _render(fig, "confusion matrix")


def reliability_diagram(run: RunData) -> Plot | None:
    """Accuracy against confidence per bin (with the gap to the diagonal), and how many examples
    fall in each bin. None when the run has no saved predictions."""
    data = run.probabilities()
    if data is None:
        return None
    bins = reliability_bins(*data)
    centers = np.array([(b["low"] + b["high"]) / 2 for b in bins])
    width = bins[0]["high"] - bins[0]["low"]
    accuracy = np.array([b["accuracy"] for b in bins])
    confidence = np.array([b["confidence"] for b in bins])
    counts = np.array([b["count"] for b in bins])
    filled = counts > 0
    fig = _figure(6.4, 5.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="#777777", linewidth=1, label="perfect calibration")
    top.bar(centers[filled], accuracy[filled], width=width, color=COLORS[0], edgecolor="white", label="accuracy")
    gap_low = np.minimum(accuracy, confidence)[filled]
    top.bar(centers[filled], np.abs(confidence - accuracy)[filled], bottom=gap_low, width=width,
            facecolor="none", hatch="///", edgecolor=COLORS[1], label="gap to mean confidence")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    _style(top, f"Reliability diagram (ECE {run.metrics.get('ece', float('nan')):.4f})", "", "accuracy")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(centers, counts, width=width, color="#999999", edgecolor="white")
    _style(bottom, "", "confidence (top-class probability)", "examples")
    return _render(fig, "reliability diagram and confidence histogram")


def comparison_curves(runs: list[RunData], names: list[str], metrics: list[tuple[str, str]] | None = None) -> Plot:
    """Per-epoch curves of several runs overlaid: train loss, validation loss and up to two
    validation metrics (default accuracy and macro F1; a task with one curve leaves a panel empty)."""
    metrics = metrics or [("val_accuracy", "Validation accuracy"), ("val_macro_f1", "Validation macro F1")]
    panels = [("train_loss", "Training loss"), ("val_loss", "Validation loss"), *metrics[:2]]
    fig = _figure(11.0, 7.2)
    axes = fig.subplots(2, 2).ravel()
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    for ax, (key, title) in zip(axes, panels, strict=False):
        for i, (run, name) in enumerate(zip(runs, names, strict=True)):
            xs, ys = _series(run.epochs, "epoch", key)
            ax.plot(xs, ys, "o-", color=COLORS[i % len(COLORS)], label=name, markersize=4)
        _integer_ticks(ax)
        _style(ax, title, "epoch", "")
    axes[0].legend(fontsize=8)
    return _render(fig, "training curves of the compared runs")


def lr_find_plot(result: Any, swept: str) -> Plot:
    """A learning-rate range test: raw and smoothed loss against the rate (log), the suggestions marked."""
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color=COLORS[7], alpha=0.35, linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color=COLORS[0], linewidth=1.8, label="smoothed loss")
    ax.set_xscale("log")
    for i, (rule, lr) in enumerate(sorted(result.suggestions.items())):
        chosen = " (suggested)" if rule == result.rule else ""
        ax.axvline(lr, color=COLORS[1 + i], linestyle="--" if chosen else ":", label=f"{rule}: {lr:.2g}{chosen}")
    low, high = min(result.smoothed), max(result.smoothed[: max(1, len(result.smoothed) // 10)] + [min(result.smoothed) * 1.5])
    ax.set_ylim(low - 0.1 * abs(low), high + 0.25 * (high - low) + 1e-9)
    _style(ax, "Learning-rate range test", f"train.{swept}", "training loss")
    ax.legend(fontsize=8)
    return _render(fig, "learning-rate range test")


# -- regression ------------------------------------------------------------------------------------


def _regression_values(run: RunData) -> tuple[np.ndarray, np.ndarray]:
    """(true (N, T), predicted (N, T)) from the saved predictions with a true value."""
    rows = [r for r in run.predictions if r.get("label") is not None]
    true = np.array([np.atleast_1d(r["label"]) for r in rows], dtype=np.float64).reshape(len(rows), -1)
    pred = np.array([np.atleast_1d(r["predicted"]) for r in rows], dtype=np.float64).reshape(len(rows), -1)
    return true, pred


def predicted_vs_true(run: RunData) -> Plot | None:
    """One scatter per target (up to four): predicted against true, with the diagonal."""
    true, pred = _regression_values(run)
    if not len(true):
        return None
    names = (run.classes or [f"target {j}" for j in range(true.shape[1])])[:4]
    fig = _figure(4.2 * len(names), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    for j, (ax, name) in enumerate(zip(axes, names, strict=True)):
        t, p = true[:, j], pred[:, j]
        low, high = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.scatter(t, p, s=8, alpha=0.5, color=COLORS[0], edgecolors="none")
        ax.plot([low, high], [low, high], "--", color="#555555", linewidth=1, label="predicted = true")
        _style(ax, f"{name}", "true", "predicted")
        ax.legend(fontsize=8, loc="upper left")
    return _render(fig, "predicted against true values on the validation set")


def residual_plots(run: RunData) -> Plot | None:
    """Residuals (predicted - true) against the prediction, and their histogram, for the first target."""
    true, pred = _regression_values(run)
    if not len(true):
        return None
    residual = pred[:, 0] - true[:, 0]
    fig = _figure(9.0, 3.5)
    left, right = fig.subplots(1, 2)
    left.scatter(pred[:, 0], residual, s=8, alpha=0.5, color=COLORS[1], edgecolors="none")
    left.axhline(0.0, color="#555555", linestyle="--", linewidth=1)
    _style(left, "Residuals against prediction", "predicted", "predicted - true")
    right.hist(residual, bins=min(40, max(5, len(residual) // 10)), color=COLORS[0], edgecolor="white")
    _style(right, f"Residuals (mean {residual.mean():+.3g}, sd {residual.std():.3g})", "predicted - true", "examples")
    return _render(fig, "residuals of the validation predictions")
