"""Honest numbers: bootstrap confidence intervals and paired significance tests. Plain numpy.

A validation set of 150 examples measures accuracy to within several points; these functions say
how many. The percentile bootstrap (Efron & Tibshirani 1993) resamples the validation examples
with replacement and recomputes the metric; the 2.5th and 97.5th percentiles of the replicates
are the 95% interval. Two runs evaluated on the same examples are compared per example: the paired
bootstrap resamples examples once for both runs, and McNemar's exact test looks only at the
examples exactly one of the two runs gets right.

Example::

    ci = bootstrap_ci(labels, preds, "accuracy")            # (0.91, 0.97)
    result = compare_predictions(labels, preds_a, preds_b)
    result.p_value, result.significant                     # McNemar exact, paired bootstrap CI
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 1000
SEED = 0


def _accuracy_replicates(correct: np.ndarray, index: np.ndarray) -> np.ndarray:
    return correct[index].mean(axis=1)


def _macro_f1_replicates(labels: np.ndarray, preds: np.ndarray, index: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro F1 of every resample at once: per replicate confusion counts through one bincount.

    As in :func:`finetunekit.tasks.classification.classification_metrics`, a class absent from both the labels
    and the predictions of a resample is left out of its average."""
    b, n = index.shape
    k = num_classes
    rows = np.repeat(np.arange(b), n)
    flat_true, flat_pred = labels[index].ravel(), preds[index].ravel()
    tp = np.bincount(rows * k + flat_true, weights=(flat_true == flat_pred).astype(np.float64), minlength=b * k).reshape(b, k)
    support = np.bincount(rows * k + flat_true, minlength=b * k).reshape(b, k).astype(np.float64)
    predicted = np.bincount(rows * k + flat_pred, minlength=b * k).reshape(b, k).astype(np.float64)
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)  # 2PR/(P+R) = 2TP/(S+P)
    present = denominator > 0
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def metric_replicates(
    labels: np.ndarray, preds: np.ndarray, metric: str, index: np.ndarray, num_classes: int | None = None
) -> np.ndarray:
    """``metric`` ("accuracy" or "macro_f1") on each row of resampled example indices ``index``."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if metric == "accuracy":
        return _accuracy_replicates(labels == preds, index)
    if metric == "macro_f1":
        k = num_classes or int(max(labels.max(initial=0), preds.max(initial=0)) + 1)
        return _macro_f1_replicates(labels, preds, index, k)
    raise ValueError(f"no bootstrap for metric {metric!r}: accuracy or macro_f1")


def resample_index(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n) example indices drawn with replacement, a function of (n, resamples, seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(
    labels: Any, preds: Any, metric: str = "accuracy", confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
    seed: int = SEED, num_classes: int | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` over the examples; (nan, nan) for an empty set."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan"), float("nan")
    index = resample_index(len(labels), resamples, seed)
    return _percentiles(metric_replicates(labels, preds, metric, index, num_classes), confidence)


def confidence_intervals(labels: Any, preds: Any, num_classes: int, metrics: tuple[str, ...] = ("accuracy", "macro_f1")) -> dict[str, Any]:
    """``{"accuracy_ci": [low, high], "macro_f1_ci": [...], "ci": {...}}`` for metrics.json."""
    out: dict[str, Any] = {}
    for metric in metrics:
        low, high = bootstrap_ci(labels, preds, metric, num_classes=num_classes)
        out[f"{metric}_ci"] = [round(low, 6), round(high, 6)]
    out["ci"] = {"method": "percentile bootstrap over validation examples", "confidence": CONFIDENCE, "resamples": RESAMPLES, "seed": SEED}
    return out


def format_ci(ci: Any) -> str:
    """``[0.912, 0.968]`` or an empty string when the interval is missing."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or not all(isinstance(v, (int, float)) for v in ci):
        return ""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


# -- two runs on the same examples -------------------------------------------------------------------


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under "equally good", each of the ``only_a + only_b``
    discordant examples is a fair coin flip, so min(only_a, only_b) is Binomial(n, 1/2)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass
class Comparison:
    """How two runs differ on the same examples (metric of A minus metric of B)."""

    metric: str
    value_a: float
    value_b: float
    difference: float
    ci: tuple[float, float]  # paired bootstrap interval of the difference
    p_bootstrap: float  # two-sided: twice the share of resampled differences on the other side of 0
    only_a: int  # examples A gets right and B wrong
    only_b: int
    p_mcnemar: float
    n: int
    alpha: float = 1 - CONFIDENCE
    # per-example values that are not right/wrong (absolute errors...): only_a / only_b count the
    # examples where A / B is strictly better, and p_mcnemar is the sign test on them
    graded: bool = False
    higher_is_better: bool = True

    @property
    def p_value(self) -> float:
        """McNemar's for accuracy (exact, no resampling noise); the paired bootstrap's otherwise."""
        return self.p_mcnemar if self.metric.rsplit("/", 1)[-1] == "accuracy" else self.p_bootstrap

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def summary(self, name_a: str = "A", name_b: str = "B") -> str:
        verdict = "significant" if self.significant else "not significant"
        test = "McNemar exact" if self.p_value is self.p_mcnemar else "paired bootstrap"
        if self.graded:
            which = "lower" if not self.higher_is_better else "higher"
            counts = (f"{self.only_a} examples where {name_a} is better, {self.only_b} where {name_b} is "
                      f"({which} is better)")
        else:
            counts = f"{self.only_a} examples only {name_a} gets right, {self.only_b} only {name_b}"
        return (
            f"{self.metric}: {name_a} {self.value_a:.4f} vs {name_b} {self.value_b:.4f}, difference {self.difference:+.4f} "
            f"(95% paired bootstrap CI {self.ci[0]:+.4f} to {self.ci[1]:+.4f}); {counts}; "
            f"{test} p = {self.p_value:.4g}: {verdict} at {self.alpha:g} (n = {self.n})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "a": self.value_a, "b": self.value_b, "difference": self.difference, "ci": list(self.ci),
            "p_bootstrap": self.p_bootstrap, "only_a": self.only_a, "only_b": self.only_b, "p_mcnemar": self.p_mcnemar,
            "p_value": self.p_value, "significant": self.significant, "n": self.n, "graded": self.graded,
            "higher_is_better": self.higher_is_better,
        }


def compare_predictions(
    labels: Any, preds_a: Any, preds_b: Any, metric: str = "accuracy", resamples: int = 2000, seed: int = SEED,
    num_classes: int | None = None,
) -> Comparison:
    """Paired comparison of two prediction vectors over the same labelled examples."""
    labels = np.asarray(labels, dtype=np.int64)
    preds_a, preds_b = np.asarray(preds_a, dtype=np.int64), np.asarray(preds_b, dtype=np.int64)
    if not (len(labels) == len(preds_a) == len(preds_b)) or len(labels) == 0:
        raise ValueError(f"paired comparison needs the same non-empty examples ({len(labels)}, {len(preds_a)}, {len(preds_b)})")
    k = num_classes or int(max(labels.max(), preds_a.max(), preds_b.max()) + 1)
    full = np.arange(len(labels))[None, :]
    value_a = float(metric_replicates(labels, preds_a, metric, full, k)[0])
    value_b = float(metric_replicates(labels, preds_b, metric, full, k)[0])
    index = resample_index(len(labels), resamples, seed)
    diffs = metric_replicates(labels, preds_a, metric, index, k) - metric_replicates(labels, preds_b, metric, index, k)
    # the share of resampled differences at or beyond zero on the side opposite the observed one
    if value_a == value_b:
        p_boot = 1.0
    else:
        other_side = (diffs <= 0).mean() if value_a > value_b else (diffs >= 0).mean()
        p_boot = float(min(1.0, 2 * other_side))
    right_a, right_b = preds_a == labels, preds_b == labels
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    return Comparison(
        metric, value_a, value_b, value_a - value_b, _percentiles(diffs, CONFIDENCE), p_boot, only_a, only_b,
        mcnemar_exact(only_a, only_b), len(labels),
    )


def compare_values(
    values_a: Any, values_b: Any, metric: str, higher_is_better: bool = True, resamples: int = 2000, seed: int = SEED,
) -> Comparison:
    """Paired comparison of two runs through one value per example whose mean is the metric
    (absolute errors for MAE, per-example F1 for sample-averaged F1...): the paired bootstrap of
    the difference of means, and the sign test on the examples where one run is strictly better
    (McNemar's test is that sign test for right/wrong values)."""
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired comparison needs the same non-empty examples ({a.shape}, {b.shape})")
    index = resample_index(len(a), resamples, seed)
    diffs = a[index].mean(axis=1) - b[index].mean(axis=1)
    value_a, value_b = float(a.mean()), float(b.mean())
    if value_a == value_b:
        p_boot = 1.0
    else:
        other_side = (diffs <= 0).mean() if value_a > value_b else (diffs >= 0).mean()
        p_boot = float(min(1.0, 2 * other_side))
    better_a = a > b if higher_is_better else a < b
    better_b = b > a if higher_is_better else b < a
    only_a, only_b = int(better_a.sum()), int(better_b.sum())
    return Comparison(
        metric, value_a, value_b, value_a - value_b, _percentiles(diffs, CONFIDENCE), p_boot, only_a, only_b,
        mcnemar_exact(only_a, only_b), len(a), graded=True, higher_is_better=higher_is_better,
    )
