"""Retrieval, ranking, correlation and calibration metrics on numpy arrays (no model)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["truncate", "cosine", "recall_at_k", "mrr", "spearman", "ece", "rankdata"]


def truncate(x: np.ndarray, dim: int) -> np.ndarray:
    """First ``dim`` components, re-normalised (the Matryoshka rule)."""
    x = np.asarray(x, dtype=np.float32)[:, :dim]
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return truncate(a, a.shape[1]) @ truncate(b, b.shape[1]).T


def _best_relevant_rank(sim: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based rank of each query's best relevant candidate. Ties with non-relevant candidates
    count against the query (a model that scores everything equally gets no credit)."""
    relevant = relevant.astype(bool)
    if not relevant.any(axis=1).all():
        raise ValueError("every query needs at least one relevant candidate")
    best = np.where(relevant, sim, -np.inf).max(axis=1, keepdims=True)
    return ((sim >= best) & ~relevant).sum(axis=1)


def recall_at_k(sim: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Fraction of queries (rows) with a relevant candidate among the top ``k`` (per ``k``)."""
    rank = _best_relevant_rank(np.asarray(sim), np.asarray(relevant))
    return {int(k): float((rank < k).mean()) for k in ks}


def mrr(sim: np.ndarray, relevant: np.ndarray) -> float:
    """Mean reciprocal rank of the first relevant candidate of each row."""
    rank = _best_relevant_rank(np.asarray(sim), np.asarray(relevant))
    return float((1.0 / (rank + 1.0)).mean())


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of tie-averaged ranks)."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error with ``bins`` equal-width bins on [0, 1]:
    ``sum_b |B_b|/N * |mean(p in B_b) - mean(label in B_b)|`` (labels may be soft, in [0, 1])."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.shape != y.shape or p.size == 0:
        raise ValueError("ece needs equally many probabilities and labels, at least one")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / p.size * abs(p[m].mean() - y[m].mean())
    return float(total)
