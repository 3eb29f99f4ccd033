"""Choosing a pretrained backbone without fine-tuning: score each candidate from its frozen features.

* **LogME** (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
  ICML 2021): the log marginal likelihood (evidence) of the labels under a Bayesian linear model on
  the features, y = F w + noise, w ~ N(0, 1/alpha), noise ~ N(0, 1/beta), with alpha and beta set by
  the paper's fixed-point iteration (MacKay's evidence maximisation). One one-hot column per class,
  evidence divided by the number of examples, averaged over classes. Higher is better.
* **k-NN accuracy**: leave-one-out k-nearest-neighbour accuracy on L2-normalised features (cosine
  similarity), a score the literature finds about as good a predictor as LogME.

Features come from :mod:`finetunekit.run.features`' cache under the same key a linear probe of the same
backbone on the same examples uses, so ``select`` followed by training the winner computes nothing
twice.

Example::

    table = select("hymenoptera_data", ["bundled:efficientnet_lite0", "bundled:efficientnet_lite2"])
    print(format_selection(table))
    logme(features, labels)   # numpy arrays (N, D) and (N,)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import FinetuneError

# -- the scores --------------------------------------------------------------------------------------


def log_evidence(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | F, alpha, beta) / N of the Bayesian linear model, straight from its definition
    (Bishop 2006, eq. 3.86): used to check :func:`logme`'s fast path."""
    f, y = np.asarray(features, np.float64), np.asarray(y, np.float64)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, logdet = np.linalg.slogdet(a)
    value = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - beta / 2 * float(((y - f @ m) ** 2).sum())
             - alpha / 2 * float(m @ m) - logdet / 2 - n / 2 * math.log(2 * math.pi))
    return value / n


@dataclass
class EvidenceFit:
    evidence: float  # log evidence / N at the fixed point
    alpha: float
    beta: float
    iterations: int


def _fit_one(u_t_y: np.ndarray, y_norm2: float, sigma: np.ndarray, n: int, d: int, max_iter: int = 100, tol: float = 1e-6) -> EvidenceFit:
    """The fixed point for one target column, in the eigenbasis of F^T F.

    With F = U S V^T (thin SVD, sigma = S^2, r = rank) and x = U^T y: the posterior mean has
    ||m||^2 = sum beta^2 sigma x^2 / (alpha + beta sigma)^2, the residual ||y - F m||^2 =
    sum x^2 (alpha / (alpha + beta sigma))^2 + (||y||^2 - ||x||^2), gamma = sum beta sigma /
    (alpha + beta sigma); then alpha <- gamma / ||m||^2 and beta <- (N - gamma) / residual, until
    alpha / beta stops moving. The D - r zero eigenvalues contribute log alpha each to log|A|."""
    x2 = u_t_y**2
    outside = max(y_norm2 - float(x2.sum()), 0.0)  # the part of y outside F's column space
    alpha, beta = 1.0, 1.0
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        denom = alpha + beta * sigma
        gamma = float((beta * sigma / denom).sum())
        m2 = float((beta**2 * sigma * x2 / denom**2).sum())
        res2 = float((x2 * (alpha / denom) ** 2).sum()) + outside
        new_alpha = gamma / max(m2, 1e-12)
        new_beta = (n - gamma) / max(res2, 1e-12)
        converged = abs(new_alpha / new_beta - alpha / beta) <= tol * (alpha / beta)
        alpha, beta = max(new_alpha, 1e-12), max(new_beta, 1e-12)
        if converged:
            break
    denom = alpha + beta * sigma
    m2 = float((beta**2 * sigma * x2 / denom**2).sum())
    res2 = float((x2 * (alpha / denom) ** 2).sum()) + outside
    logdet = float(np.log(denom).sum()) + (d - len(sigma)) * math.log(alpha)
    evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2
                - n / 2 * math.log(2 * math.pi))
    return EvidenceFit(evidence / n, alpha, beta, iterations)


def logme_fits(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> list[EvidenceFit]:
    """One :class:`EvidenceFit` per class (its one-hot column as the target)."""
    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if f.ndim != 2 or len(f) != len(labels) or len(f) < 2:
        raise ValueError(f"logme: features {f.shape} and labels {labels.shape} do not match (need N >= 2 rows)")
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-10  # numerically zero singular values count as zero eigenvalues
    u, sigma = u[:, keep], s[keep] ** 2
    k = num_classes or int(labels.max()) + 1
    fits = []
    for c in range(k):
        y = (labels == c).astype(np.float64)
        fits.append(_fit_one(u.T @ y, float(y @ y), sigma, n, d))
    return fits


def logme(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """LogME score of (N, D) features for integer labels: mean over classes of log evidence / N."""
    return float(np.mean([fit.evidence for fit in logme_fits(features, labels, num_classes)]))


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5, block: int = 2048) -> float:
    """Leave-one-out k-NN accuracy on L2-normalised features (cosine similarity).

    Each example is classified by the majority label of its k most similar other examples; a tied
    vote goes to the class with the larger summed similarity."""
    f = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(f)
    if n < 2:
        raise ValueError("knn_accuracy: needs at least two examples")
    k = max(1, min(k, n - 1))
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    classes = int(labels.max()) + 1
    correct = 0
    for start in range(0, n, block):
        sim = f[start : start + block] @ f.T
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf  # leave the example itself out
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        votes = np.zeros((sim.shape[0], classes))
        weight = np.zeros((sim.shape[0], classes))
        np.add.at(votes, (rows[:, None], labels[nearest]), 1.0)
        np.add.at(weight, (rows[:, None], labels[nearest]), sim[rows[:, None], nearest])
        predicted = np.argmax(votes + 1e-6 * (weight - weight.min(axis=1, keepdims=True)) / (k + 1), axis=1)
        correct += int((predicted == labels[start : start + block]).sum())
    return correct / n


SCORES = {"logme": "LogME", "knn": "k-NN acc"}

# -- candidates x data ---------------------------------------------------------------------------------


@dataclass
class Candidate:
    name: str  # source:name, as in model.backbone
    pretrained: bool = True

    @property
    def label(self) -> str:
        return self.name if self.pretrained else f"{self.name} (pretrained: false)"


@dataclass
class SelectionRow:
    candidate: Candidate
    num_features: int = 0
    num_examples: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # load, features, logme, knn
    cached: bool = False  # features read from the cache
    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate.name, "pretrained": self.candidate.pretrained, "num_features": self.num_features,
                "num_examples": self.num_examples, "features_cached": self.cached, "seconds": self.seconds,
                "scores": self.scores, "error": self.error}


def parse_candidates(text: str, control: bool = False) -> list[Candidate]:
    """``A,B,C`` (any ``model.backbone`` string); a trailing ``?pretrained=false`` on a name, or
    ``control``, adds the untrained architecture (the first candidate's with ``control``)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise FinetuneError("select: --candidates names no backbone (e.g. bundled:efficientnet_lite0,bundled:efficientnet_lite2)")
    out = []
    for name in names:
        base, _, option = name.partition("?")
        if option and option.replace(" ", "") not in ("pretrained=false", "pretrained=true"):
            raise FinetuneError(f"select: candidate {name!r}: the only option is ?pretrained=false")
        out.append(Candidate(base, pretrained=option.replace(" ", "") != "pretrained=false"))
    if control and not any(not c.pretrained for c in out):
        out.append(Candidate(out[0].name, pretrained=False))
    return out


def candidate_features(
    backbone: Any, examples: Any, label_ids: list[int], max_length: int = 128, precision: str = "auto", batch_size: int = 64,
    cache_dir: str | None = None,
) -> tuple[Any, bool]:
    """(N, D) frozen features of ``examples`` in order, from the feature cache when present.

    The key is built exactly as the trainer's (finetunekit.run.features.build_cached_loaders) for the
    un-augmented training features, so a later linear probe on the same data reads them back."""
    from types import SimpleNamespace

    from ..data.pipeline import build_loader
    from ..run.features import FeatureCache, cache_key, compute_features, examples_digest, weights_digest
    from ..core.runtime import resolve_precision
    from ..run.trainer import make_accelerator

    from ..modalities import modality_of
    from ..run.recipe import DataSpec

    # the preprocessing dict exactly as the trainer builds it (it is part of the cache key)
    kind = modality_of(backbone.modality)
    preprocessing = kind.run_preprocessing(backbone, DataSpec(max_length=max_length))
    dataset = kind.build_dataset(examples, label_ids, backbone, preprocessing, False, "none", max_length)
    digest = examples_digest(examples.inputs, backbone.modality, getattr(dataset, "encodings", None))
    key = cache_key({
        "version": 1, "backbone": backbone.describe(), "weights": weights_digest(backbone), "preprocessing": preprocessing,
        "precision": resolve_precision(precision), "data": digest, "view": None,
    })
    accelerator = make_accelerator(precision, 1)
    backbone.to(accelerator.device)
    loader = build_loader(dataset, backbone, batch_size, False, 0)
    cache = FeatureCache.default(cache_dir)
    return cache.load_or_compute(key, lambda: compute_features(SimpleNamespace(backbone=backbone), loader, len(dataset), accelerator))


def select(
    data: Any, candidates: list[Candidate] | list[str], k: int = 5, max_samples: int | None = None, seed: int = 0,
    text_column: str | None = None, label_column: str = "label", max_length: int = 128, precision: str = "auto",
    cache_dir: str | None = None, progress: Any = None,
) -> list[SelectionRow]:
    """Score every candidate on the training examples of ``data`` (as ``data.train`` reads them:
    an image folder's ``train/`` when there is one, else a seeded 80% split), best LogME first.
    ``data`` may also be a DataFrame, a pyarrow Table or a ``datasets`` object (a ``DatasetDict``:
    its train split), as ``finetunekit.train`` takes it.

    ``max_samples`` keeps a seeded stratified subset of that many examples. A candidate that fails
    to load (an unknown name, weights missing offline) gets its error in the table, not an exception."""
    from ..data.memory import holding, memory_splits

    table = memory_splits(data)[0]
    with holding(table):  # the readers find an in-memory table by its token
        return _select(table.token if table is not None else data, candidates, k, max_samples, seed, text_column, label_column,
                       max_length, precision, cache_dir, progress)


def _select(
    data: str, candidates: list[Candidate] | list[str], k: int, max_samples: int | None, seed: int, text_column: str | None,
    label_column: str, max_length: int, precision: str, cache_dir: str | None, progress: Any,
) -> list[SelectionRow]:
    import torch

    from ..backbones import create_backbone
    from ..data import resolve_splits
    from ..modalities import modality_of
    from ..run.recipe import DataSpec
    from ..tasks.classification import LabelMap

    cands = [c if isinstance(c, Candidate) else Candidate(c) for c in candidates]
    read: dict[str, tuple[Any, list[int]]] = {}
    rows = []
    for cand in cands:
        row = SelectionRow(cand)
        rows.append(row)
        started = time.perf_counter()
        try:
            torch.manual_seed(seed)  # the untrained control's random weights are a function of the seed
            backbone = create_backbone(cand.name, cand.pretrained).eval()
        except FinetuneError as exc:
            row.error = str(exc)
            continue
        row.seconds["load"] = time.perf_counter() - started
        modality = backbone.modality
        if modality not in read:
            train, _ = resolve_splits(data, None, modality_of(modality), 0.2, seed, text_column, label_column)
            if max_samples is not None and max_samples < len(train):
                train = train.subset(_stratified_subset(train.labels or [], max_samples, seed))
            train = modality_of(modality).check_examples(train, DataSpec(bad_images="fail"))  # images: opened up front
            label_map = LabelMap.from_labels(train.labels or [])
            read[modality] = (train, label_map.encode(train.labels or [], train.source))
        examples, label_ids = read[modality]
        started = time.perf_counter()
        feats, row.cached = candidate_features(backbone, examples, label_ids, max_length, precision, cache_dir=cache_dir)
        row.seconds["features"] = time.perf_counter() - started
        f, y = feats.numpy(), np.asarray(label_ids)
        row.num_features, row.num_examples = f.shape[1], len(y)
        for name, score in (("logme", lambda: logme(f, y)), ("knn", lambda: knn_accuracy(f, y, k))):
            started = time.perf_counter()
            row.scores[name] = float(score())
            row.seconds[name] = time.perf_counter() - started
        if progress is not None:
            progress(row)
        del backbone
    return sorted(rows, key=lambda r: -r.scores.get("logme", -math.inf))


def _stratified_subset(labels: list[str], size: int, seed: int) -> list[int]:
    """``size`` indices keeping each class's share (at least two per class), seeded."""
    import random
    from collections import defaultdict

    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    rng = random.Random(seed)
    keep = []
    for label in sorted(by_class):
        items = by_class[label][:]
        rng.shuffle(items)
        keep.extend(items[: max(2, round(size * len(items) / len(labels)))])
    return sorted(keep)


def format_selection(rows: list[SelectionRow]) -> str:
    """The ranking as a plain-text table (best LogME first), with the seconds each step took."""
    width = max(9, *(len(r.candidate.label) for r in rows))
    knn_rank = {id(r): i for i, r in enumerate(sorted((r for r in rows if r.error is None), key=lambda r: -r.scores["knn"]), 1)}
    lines = [f"{'candidate':<{width}}  {'dim':>5}  {'LogME':>8}  {'k-NN acc':>8}  {'kNN rank':>8}  "
             f"{'load s':>7}  {'features s':>10}  {'LogME s':>7}  {'k-NN s':>7}"]
    for r in rows:
        if r.error is not None:
            lines.append(f"{r.candidate.label:<{width}}  error: {r.error}")
            continue
        s = r.seconds
        feats = f"{s['features']:.1f}" + (" (cache)" if r.cached else "")
        lines.append(f"{r.candidate.label:<{width}}  {r.num_features:>5}  {r.scores['logme']:>8.4f}  {r.scores['knn']:>8.4f}  "
                     f"{knn_rank[id(r)]:>8}  {s['load']:>7.1f}  {feats:>10}  {s['logme']:>7.3f}  {s['knn']:>7.3f}")
    done = [r for r in rows if r.error is None]
    if done:
        lines.append(f"{done[0].num_examples} training examples; ranked by LogME (higher is better); "
                     "k-NN: leave-one-out accuracy on normalised features")
    return "\n".join(lines)
