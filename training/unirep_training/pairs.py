"""Evaluation views of a list of samples: unique queries, unique candidates, relevance.

A :class:`PairSet` de-duplicates the ``a`` sides (queries) and ``b`` sides (candidates) of
samples, so each is encoded once. Query ``q`` is relevant to candidate ``c`` when some sample
pairs them (a caption shared by two images is relevant to both) or when samples of one group
hold them (all captions of an image, a JSONL group of several positives); relevance is never
transitive. Graded samples keep their (query, candidate, score) triples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .data.samples import Sample, Side
from .data.splits import calibration_half, unit_hash
from .metrics import truncate

__all__ = ["PairSet", "build_pairset", "subset", "calibration_pairs", "fit_logistic", "fit_calibration"]


@dataclass
class PairSet:
    name: str
    queries: list[Side]
    candidates: list[Side]
    q_groups: np.ndarray  # (Q,) int group of the first sample holding the query
    c_groups: np.ndarray  # (C,) int group of the first sample holding the candidate
    pairs: np.ndarray  # (n, 2) query index, candidate index of each sample
    scores: np.ndarray | None  # (n,) graded relevance, or None for positive pairs
    groups: np.ndarray  # (n,) int group of each sample
    group_names: list[str]  # group id -> the samples' group string
    rel: np.ndarray  # (Q, C) bool relevance

    @property
    def graded(self) -> bool:
        return self.scores is not None

    def relevant(self) -> np.ndarray:
        """(Q, C) bool."""
        return self.rel


def build_pairset(samples: Sequence[Sample], name: str = "") -> PairSet:
    if not samples:
        raise ValueError(f"pair set {name!r} has no samples")
    gid: dict[str, int] = {}
    qi: dict[tuple, int] = {}
    ci: dict[tuple, int] = {}
    queries: list[Side] = []
    cands: list[Side] = []
    qg: list[int] = []
    cg: list[int] = []
    pairs, groups = [], []
    for s in samples:
        g = gid.setdefault(s.group, len(gid))
        ka, kb = (s.a.prefix,) + s.a.key(), (s.b.prefix,) + s.b.key()
        if ka not in qi:
            qi[ka] = len(queries)
            queries.append(s.a)
            qg.append(g)
        if kb not in ci:
            ci[kb] = len(cands)
            cands.append(s.b)
            cg.append(g)
        pairs.append((qi[ka], ci[kb]))
        groups.append(g)
    graded = [s.score is not None for s in samples]
    if any(graded) and not all(graded):
        raise ValueError(f"pair set {name!r} mixes graded and ungraded samples")
    scores = np.array([s.score for s in samples], dtype=np.float64) if all(graded) else None
    pairs_a = np.array(pairs, dtype=np.int64)
    groups_a = np.array(groups)
    rel = np.zeros((len(queries), len(cands)), dtype=bool)
    rel[pairs_a[:, 0], pairs_a[:, 1]] = True
    order = np.argsort(groups_a, kind="stable")
    bounds = np.flatnonzero(np.diff(groups_a[order])) + 1
    for members in np.split(order, bounds):
        if len(members) > 1:
            rel[np.ix_(np.unique(pairs_a[members, 0]), np.unique(pairs_a[members, 1]))] = True
    return PairSet(name, queries, cands, np.array(qg), np.array(cg), pairs_a, scores, groups_a, list(gid), rel)


def subset(samples: Sequence[Sample], max_samples: int | None, seed: int | str = 0,
           half: str | None = None, salt: str = "calibration") -> list[Sample]:
    """A deterministic subset: optionally only one calibration half (by group), then whole
    groups in hash order until ``max_samples`` (groups are never cut, so relevance stays exact)."""
    chosen = [s for s in samples if half is None or calibration_half(s.group, salt) == half]
    if max_samples is None or len(chosen) <= max_samples:
        return chosen
    by_group: dict[str, list[Sample]] = {}
    for s in chosen:
        by_group.setdefault(s.group, []).append(s)
    out: list[Sample] = []
    for g in sorted(by_group, key=lambda g: unit_hash(g, f"subset:{seed}")):
        if len(out) + len(by_group[g]) > max_samples and out:
            break
        out.extend(by_group[g])
    return out


def calibration_pairs(ps: PairSet, q_emb: np.ndarray, c_emb: np.ndarray, *, half: str | None = None,
                      salt: str = "calibration", negatives_random: int = 3, negatives_hard: int = 3,
                      seed: int = 0, max_queries: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(query index, candidate index, relevance label)`` triples for calibration.

    Only groups of calibration ``half`` (``"fit"`` / ``"eval"``, see
    :func:`~unirep_training.data.splits.calibration_half`) are used when one is given.
    Graded sets: each sample's pair with its score as a soft label. Sets of positive pairs:
    for each query (at most ``max_queries``, deterministic) its relevant candidate(s) with
    label 1, its ``negatives_hard`` most similar non-relevant candidates (full-size cosine:
    what a reranker sees after first-stage retrieval) and ``negatives_random`` random
    non-relevant ones with label 0; negatives come from the whole candidate pool."""
    in_half = np.array([half is None or calibration_half(g, salt) == half for g in ps.group_names], dtype=bool)
    if ps.graded:
        m = in_half[ps.groups]
        return ps.pairs[m, 0], ps.pairs[m, 1], ps.scores[m].astype(np.float64)  # type: ignore[index,union-attr]
    rng = np.random.default_rng(seed)
    order = np.flatnonzero(in_half[ps.q_groups])
    if max_queries is not None and len(order) > max_queries:
        order = np.sort(rng.permutation(order)[:max_queries])
    qi: list[int] = []
    ci: list[int] = []
    lab: list[float] = []
    if len(order) == 0:
        return np.array(qi, dtype=np.int64), np.array(ci, dtype=np.int64), np.array(lab, dtype=np.float64)
    sim = truncate(q_emb[order], q_emb.shape[1]) @ truncate(c_emb, c_emb.shape[1]).T
    rel = ps.relevant()[order]
    for row, q in enumerate(order):
        pos = np.flatnonzero(rel[row])
        neg = np.flatnonzero(~rel[row])
        hard = neg[np.argsort(-sim[row, neg], kind="stable")[:negatives_hard]] if negatives_hard else neg[:0]
        rest = np.setdiff1d(neg, hard)
        rand = rng.choice(rest, size=min(negatives_random, len(rest)), replace=False) if negatives_random else rest[:0]
        for c, y in [(p, 1.0) for p in pos] + [(h, 0.0) for h in hard] + [(r, 0.0) for r in rand]:
            qi.append(int(q))
            ci.append(int(c))
            lab.append(y)
    return np.array(qi, dtype=np.int64), np.array(ci, dtype=np.int64), np.array(lab, dtype=np.float64)


def fit_logistic(x: np.ndarray, y: np.ndarray, *, ridge: float = 1e-6, iters: int = 100,
                 min_slope: float = 1e-3) -> tuple[float, float]:
    """Maximum-likelihood ``(a, b)`` of ``P(y=1 | x) = sigmoid(a x + b)`` (soft labels allowed)
    by Newton's method with a tiny ridge (keeps separable data finite); ``a`` is kept
    ``>= min_slope`` (calibration must be monotonic)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError("calibration needs at least two pairs")
    X = np.stack([x, np.ones_like(x)], axis=1)
    w = np.zeros(2)
    for _ in range(iters):
        z = X @ w
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))
        grad = X.T @ (p - y) / x.size + ridge * np.array([w[0], 0.0])
        h = (X * (p * (1 - p))[:, None]).T @ X / x.size + ridge * np.eye(2) + 1e-12 * np.eye(2)
        step = np.linalg.solve(h, grad)
        w = w - step
        if np.abs(step).max() < 1e-10:
            break
    a, b = float(w[0]), float(w[1])
    if not a >= min_slope:  # degenerate (anti-correlated) data: flattest monotonic map
        a = min_slope
        ybar = min(max(float(y.mean()), 1e-6), 1 - 1e-6)
        b = float(np.log(ybar / (1 - ybar)) - a * x.mean())
    return a, b


def fit_calibration(cos_by_dim: dict[int, np.ndarray], labels: np.ndarray) -> dict[str, list[float]]:
    """Per Matryoshka size, ``(a_d, b_d)`` by logistic regression of labels on cosine."""
    return {str(d): list(fit_logistic(c, labels)) for d, c in sorted(cos_by_dim.items())}


def pair_cosines(q_emb: np.ndarray, c_emb: np.ndarray, qi: np.ndarray, ci: np.ndarray,
                 dims: Sequence[int]) -> dict[int, np.ndarray]:
    """Cosine of each (query, candidate) pair at every size, from full-size embeddings."""
    out = {}
    for d in dims:
        q, c = truncate(q_emb, d), truncate(c_emb, d)
        out[int(d)] = (q[qi] * c[ci]).sum(axis=1)
    return out


def encode_pairset(ps: PairSet, encode: Callable[[list[Side]], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return encode(ps.queries), encode(ps.candidates)
