"""Retrieval metrics, computed the standard way: every query against the whole gallery.

Text -> image: each caption ranks every unique image; its rank is that of its own image.
Image -> text: each image ranks every caption; its rank is that of the best-ranked of its own
captions (an image is found when any of its captions is). Recall@K is the share of queries whose
rank is at most K; the median rank is 1-based (1: the right answer came first).

Example::

    ranks = retrieval_ranks(image_emb, text_emb, image_of)
    retrieval_metrics(ranks)["t2i_r1"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

KS = (1, 5, 10)


def retrieval_ranks(image_emb: np.ndarray, text_emb: np.ndarray, image_of: Sequence[int], chunk: int = 1024) -> dict[str, np.ndarray]:
    """1-based ranks: ``t2i`` one per caption, ``i2t`` one per image. Embeddings are compared by
    dot product (L2-normalised: cosine). Ties count against the query (the right answer ranks
    after every item scoring the same), so a constant model gets no free recall."""
    image_emb, text_emb = np.asarray(image_emb, np.float32), np.asarray(text_emb, np.float32)
    image_of = np.asarray(image_of, dtype=np.int64)
    n_img, n_txt = len(image_emb), len(text_emb)
    t2i = np.empty(n_txt, dtype=np.int64)
    for start in range(0, n_txt, chunk):
        sims = text_emb[start : start + chunk] @ image_emb.T  # (c, n_img)
        own = sims[np.arange(len(sims)), image_of[start : start + chunk]]
        t2i[start : start + chunk] = (sims >= own[:, None]).sum(axis=1)  # own included: rank >= 1
    i2t = np.full(n_img, np.iinfo(np.int64).max, dtype=np.int64)
    for start in range(0, n_img, chunk):
        sims = image_emb[start : start + chunk] @ text_emb.T  # (c, n_txt)
        rows = np.arange(start, min(start + chunk, n_img))
        for j, image in enumerate(rows):
            mine = np.flatnonzero(image_of == image)
            if len(mine):
                best = sims[j, mine].max()
                i2t[image] = int((sims[j] >= best).sum() - (sims[j, mine] >= best).sum() + 1)
    if (i2t == np.iinfo(np.int64).max).any():
        raise ValueError("every image needs at least one caption")
    return {"t2i": t2i, "i2t": i2t}


def retrieval_metrics(ranks: dict[str, np.ndarray]) -> dict[str, Any]:
    """Recall@1/5/10 both ways, their mean (``rsum`` / 6, the primary metric), median ranks."""
    out: dict[str, Any] = {}
    for way in ("i2t", "t2i"):
        r = ranks[way]
        for k in KS:
            out[f"{way}_r{k}"] = float((r <= k).mean())
        out[f"{way}_median_rank"] = float(np.median(r))
    out["mean_recall"] = float(np.mean([out[f"{w}_r{k}"] for w in ("i2t", "t2i") for k in KS]))
    out["images"], out["captions"] = int(len(ranks["i2t"])), int(len(ranks["t2i"]))
    return out


def recall_curve(ranks: np.ndarray, max_k: int = 50) -> list[float]:
    """Recall@K for K = 1..max_k (the report's recall curves)."""
    ranks = np.asarray(ranks)
    return [float((ranks <= k).mean()) for k in range(1, max_k + 1)]


def bootstrap_intervals(ranks: dict[str, np.ndarray], samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of each recall, resampling the queries of each direction."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {}
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    for way in ("i2t", "t2i"):
        r = np.asarray(ranks[way])
        draws = rng.integers(0, len(r), size=(samples, len(r)))
        for k in KS:
            hits = (r <= k).astype(np.float64)[draws].mean(axis=1)
            out[f"{way}_r{k}_ci"] = [float(np.percentile(hits, lo)), float(np.percentile(hits, hi))]
    return out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, k: int, samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Recall@k of run B minus run A over the same queries (ranks ``a`` and ``b``), with a 95%
    interval and a two-sided p-value from resampling the queries together."""
    a_hit, b_hit = (np.asarray(a) <= k).astype(np.float64), (np.asarray(b) <= k).astype(np.float64)
    diff = b_hit - a_hit
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(samples, len(diff)))].mean(axis=1)
    p = 2 * min((means <= 0).mean(), (means >= 0).mean())
    return {"difference": float(diff.mean()), "low": float(np.percentile(means, 2.5)), "high": float(np.percentile(means, 97.5)),
            "p_value": float(min(1.0, p))}


def format_metrics(metrics: dict[str, Any], title: str = "") -> str:
    """A plain-text table: recall@1/5/10 and the median rank in each direction (intervals below
    each row when the metrics carry them)."""
    lines = [title] if title else []
    lines.append(f"  {'':13}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'median rank':>13}")
    for way, label in (("i2t", "image->text"), ("t2i", "text->image")):
        cells = "".join(f"{metrics[f'{way}_r{k}']:8.3f}" for k in KS)
        lines.append(f"  {label:13}{cells}{metrics[f'{way}_median_rank']:13.1f}")
        if f"{way}_r1_ci" in metrics:
            intervals = ", ".join(f"R@{k} {metrics[f'{way}_r{k}_ci'][0]:.3f}-{metrics[f'{way}_r{k}_ci'][1]:.3f}" for k in KS)
            lines.append(f"  {'':13}95% intervals: {intervals}")
    lines.append(f"  {metrics.get('images', '?')} images, {metrics.get('captions', '?')} captions; mean recall {metrics['mean_recall']:.3f}")
    return "\n".join(lines)
