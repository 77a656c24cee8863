"""Vectors for ``benchmarks/search.py``: real unirep-mini embeddings of dev-split data, cached
by the model's weights hash, and a spectrum-preserving synthetic extension to any size.

Real items (dev splits only; the splits are the training package's own, so nothing here was
trained on):
- documents: Flickr8k dev photos and their captions 2-5, vi_captions dev photos and their
  captions 2-5 (the 15 % dev split of ``configs/mini.yaml``), STS-B dev sentences, the
  Vietnamese side of the en-vi parallel dev pages -- all encoded with ``task="document"``;
- queries (``task="query"``): a fixed-seed sample of the first caption of each Flickr8k and
  vi_captions dev photo and the English side of the en-vi dev pairs.

Extension (``extend``): a smoothed bootstrap in the PCA basis of the real documents -- pick a
real document at random, add Gaussian noise with the real documents' covariance scaled by
``bandwidth`` (0.4: drawn as independent normals times the square roots of the eigenvalues,
rotated by the eigenvectors), L2-normalise. Synthetic points keep the real mean, the
per-dimension variance profile, the cross-covariance between leading and trailing dimensions
(which decides how well a Matryoshka prefix ranks) and the real cluster structure around each
document. ``spectrum_check`` measures both at equal size; a Gaussian mixture (k-means centres +
pooled within-cluster covariance, ``method="mixture"``) is checked alongside for comparison.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RealSet",
    "encode_real",
    "extend",
    "normalize",
    "random_set",
    "real_items",
    "spectrum_check",
    "truncate",
    "weights_hash",
]

DATA_VERSION = "search-v1"  # bump when the item selection changes


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def truncate(x: np.ndarray, d: int) -> np.ndarray:
    """The Matryoshka rule (``unirep_core.head.truncate``): the first ``d`` dims, re-normalised."""
    return np.ascontiguousarray(normalize(x[:, :d]))


@dataclass
class RealSet:
    docs: np.ndarray  # (n_docs, dim) float32, unit norm
    queries: np.ndarray  # (n_queries, dim) float32, unit norm
    doc_kinds: list[str]  # source of each document, e.g. "flickr8k:image"
    query_kinds: list[str]
    info: dict[str, Any]


def weights_hash(model: Any) -> str:
    """A short hash of everything that decides the model's vectors: its config and the trained
    weights it loaded (head, projector); the frozen base weights are named in the config."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.trained_state_dict().items()):
        h.update(name.encode())
        h.update(tensor.float().numpy().tobytes())
    return h.hexdigest()[:16]


def real_items(data: Path, n_queries: int = 1000, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """``{"docs": [...], "queries": [...]}``; each item is ``{"text"|"image": ..., "kind": ...}``."""
    from unirep_training.data.readers import (
        read_en_vi_parallel,
        read_flickr8k,
        read_stsb,
        read_vi_captions,
    )

    docs: list[dict[str, Any]] = []
    pool: list[dict[str, Any]] = []
    for name, samples in (("flickr8k", read_flickr8k(data / "flickr8k", split="dev")),
                          ("vi_captions", read_vi_captions(data / "vi_captions", split="dev", dev_fraction=0.15, seed=0))):
        by_image: dict[str, list[str]] = {}
        for s in samples:
            by_image.setdefault(s.b.images[0], []).append(s.a.text)
        for image, captions in by_image.items():
            docs.append({"image": image, "kind": f"{name}:image"})
            pool.append({"text": captions[0], "kind": f"{name}:caption"})
            docs += [{"text": c, "kind": f"{name}:caption"} for c in captions[1:]]
    seen: set[str] = set()
    for s in read_stsb(data / "stsb", split="dev"):
        for t in (s.a.text, s.b.text):
            if t not in seen:
                seen.add(t)
                docs.append({"text": t, "kind": "stsb"})
    for s in read_en_vi_parallel(data / "en_vi_parallel", split="dev", dev_fraction=0.1, seed=0):
        docs.append({"text": s.b.text, "kind": "en_vi:vi"})
        pool.append({"text": s.a.text, "kind": "en_vi:en"})
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(pool), size=min(n_queries, len(pool)), replace=False).tolist())
    return {"docs": docs, "queries": [pool[i] for i in pick]}


def _encode_part(model: Any, items: list[dict[str, Any]], task: str, cache: Path, batch_size: int) -> np.ndarray:
    key = hashlib.sha256(json.dumps([task, items], sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{task}-{len(items)}-{key}.npy"
    if path.exists():
        return np.load(path)
    if "image" in items[0]:
        v = model.encode(images=[it["image"] for it in items], task=task, batch_size=batch_size, show_progress=True)
    else:
        v = model.encode(text=[it["text"] for it in items], task=task, batch_size=batch_size, show_progress=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, np.asarray(v, dtype=np.float32))
    tmp.replace(path)
    return np.asarray(v, dtype=np.float32)


def encode_real(model: Any, data: Path, cache: Path, n_queries: int = 1000, batch_size: int = 32) -> RealSet:
    """Encode (or load from ``cache/<weights hash>/``) the real documents and queries."""
    items = real_items(data, n_queries)
    wh = weights_hash(model)
    folder = cache / f"vectors-{model.name}-{wh}-{DATA_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    parts = {}
    for role, task in (("docs", "document"), ("queries", "query")):
        its = items[role]
        img = [i for i, it in enumerate(its) if "image" in it]
        txt = [i for i, it in enumerate(its) if "image" not in it]
        out = np.empty((len(its), model.dim), dtype=np.float32)
        for idx in (txt, img):
            if idx:
                out[idx] = _encode_part(model, [its[i] for i in idx], task, folder, batch_size)
        parts[role] = normalize(out)
    # The same caption text can occur twice (314 times in Flickr8k dev): keep the first, so
    # exact search has no ties that would make recall ill-defined.
    seen: set[str] = set()
    keep = []
    for i, it in enumerate(items["docs"]):
        t = it.get("text")
        if t is None or t not in seen:
            keep.append(i)
            if t is not None:
                seen.add(t)
    duplicates = len(items["docs"]) - len(keep)
    parts["docs"] = parts["docs"][keep]
    items["docs"] = [items["docs"][i] for i in keep]
    info = {"model": model.name, "weights_hash": wh, "data_version": DATA_VERSION,
            "docs": len(items["docs"]), "duplicate_texts_removed": duplicates, "queries": len(items["queries"]),
            "doc_kinds": _counts(it["kind"] for it in items["docs"]),
            "query_kinds": _counts(it["kind"] for it in items["queries"]),
            "encode_or_load_s": round(time.perf_counter() - t0, 1), "cache": str(folder)}
    return RealSet(parts["docs"], parts["queries"], [it["kind"] for it in items["docs"]],
                   [it["kind"] for it in items["queries"]], info)


def _counts(kinds: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in kinds:
        out[k] = out.get(k, 0) + 1
    return out


def random_set(n_docs: int, n_queries: int, dim: int = 384, seed: int = 0, clusters: int = 32) -> RealSet:
    """Stand-in 'real' vectors for ``--smoke`` (no model): clustered, with a decaying spectrum
    so that the leading dimensions carry most of the variance, as a Matryoshka model's do."""
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(1.0 + np.arange(dim) / 16.0)).astype(np.float32)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * scale
    def draw(n: int) -> np.ndarray:
        c = centres[rng.integers(0, clusters, n)]
        return normalize(c + 0.6 * rng.standard_normal((n, dim)).astype(np.float32) * scale)
    info = {"model": None, "weights_hash": None, "data_version": "random", "docs": n_docs, "queries": n_queries}
    return RealSet(draw(n_docs), draw(n_queries), ["random"] * n_docs, ["random"] * n_queries, info)


# -- extension ------------------------------------------------------------------------------
@dataclass
class Extender:
    centres: np.ndarray  # (c, dim)
    weights: np.ndarray  # (c,) cluster probabilities
    basis: np.ndarray  # (dim, dim) eigenvectors of the pooled within-cluster covariance (columns)
    scales: np.ndarray  # (dim,) square roots of its eigenvalues
    clusters: int


def fit_extender(docs: np.ndarray, clusters: int = 256, seed: int = 0) -> Extender:
    """k-means (spherical, FAISS) on the real documents + pooled within-cluster covariance."""
    import faiss

    x = np.ascontiguousarray(docs, dtype=np.float32)
    clusters = max(1, min(clusters, len(x) // 20))
    km = faiss.Kmeans(x.shape[1], clusters, niter=25, seed=seed, verbose=False, spherical=False,
                      min_points_per_centroid=1, max_points_per_centroid=10_000)
    km.train(x)
    _, assign = km.index.search(x, 1)
    assign = assign.ravel()
    centres = np.zeros_like(km.centroids)
    for c in range(clusters):  # exact cluster means (k-means stops before they settle)
        members = x[assign == c]
        centres[c] = members.mean(0) if len(members) else km.centroids[c]
    resid = x - centres[assign]
    cov = (resid.T.astype(np.float64) @ resid.astype(np.float64)) / max(1, len(x) - clusters)
    evals, evecs = np.linalg.eigh(cov)
    weights = np.bincount(assign, minlength=clusters).astype(np.float64)
    return Extender(centres.astype(np.float32), weights / weights.sum(), evecs.astype(np.float32),
                    np.sqrt(np.clip(evals, 0, None)).astype(np.float32), clusters)


def sample(ext: Extender, n: int, seed: int = 1, chunk: int = 65536) -> np.ndarray:
    """``n`` unit vectors: centre of a cluster (drawn by size) + pooled within-cluster noise."""
    rng = np.random.default_rng(seed)
    dim = ext.centres.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        c = rng.choice(ext.clusters, size=m, p=ext.weights)
        z = rng.standard_normal((m, dim), dtype=np.float32) * ext.scales
        out[start : start + m] = normalize(ext.centres[c] + z @ ext.basis.T)
    return out


@dataclass
class Smoother:
    docs: np.ndarray  # (n, dim) the real documents
    basis: np.ndarray  # (dim, dim) eigenvectors of their covariance (columns)
    scales: np.ndarray  # (dim,) square roots of the eigenvalues


def fit_smoother(docs: np.ndarray) -> Smoother:
    x = np.asarray(docs, dtype=np.float64)
    evals, evecs = np.linalg.eigh(np.cov(x.T))
    return Smoother(np.asarray(docs, dtype=np.float32), evecs.astype(np.float32),
                    np.sqrt(np.clip(evals, 0, None)).astype(np.float32))


def sample_smoothed(sm: Smoother, n: int, bandwidth: float, seed: int = 1, chunk: int = 65536) -> np.ndarray:
    """``n`` unit vectors: a random real document + ``bandwidth`` x real-covariance noise."""
    rng = np.random.default_rng(seed)
    dim = sm.docs.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        parent = sm.docs[rng.integers(0, len(sm.docs), m)]
        z = rng.standard_normal((m, dim), dtype=np.float32) * (bandwidth * sm.scales)
        out[start : start + m] = normalize(parent + z @ sm.basis.T)
    return out


def sample_interpolated(real_docs: np.ndarray, n: int, neighbours: int = 10, mix: int = 3, seed: int = 1,
                        chunk: int = 65536) -> np.ndarray:
    """``n`` unit vectors, each a random convex combination (Dirichlet(1) weights) of a random real
    document and ``mix - 1`` of its ``neighbours`` nearest real documents, re-normalised."""
    x = np.ascontiguousarray(real_docs, dtype=np.float32)
    nn = exact_topk(x, x, neighbours + 1)[:, 1:]  # drop the document itself
    rng = np.random.default_rng(seed)
    out = np.empty((n, x.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        parent = rng.integers(0, len(x), m)
        picks = nn[parent[:, None], rng.integers(0, neighbours, (m, mix - 1))]
        members = np.concatenate([parent[:, None], picks], axis=1)  # (m, mix)
        w = rng.dirichlet(np.ones(mix), size=m).astype(np.float32)
        out[start : start + m] = normalize(np.einsum("mk,mkd->md", w, x[members]))
    return out


def synthesize(real_docs: np.ndarray, n: int, method: str = "smoothed", bandwidth: float = 0.4,
               clusters: int = 256, seed: int = 1) -> np.ndarray:
    if method == "interpolated":
        return sample_interpolated(real_docs, n, seed=seed)
    if method == "smoothed":
        return sample_smoothed(fit_smoother(real_docs), n, bandwidth, seed=seed)
    if method == "mixture":
        return sample(fit_extender(real_docs, clusters=clusters, seed=seed), n, seed=seed)
    raise ValueError(f"unknown extension method {method!r}")


METHODS = {
    "interpolated": "convex combinations (Dirichlet(1) weights) of a random real document and 2 of its 10 "
                    "nearest real documents, L2-normalised",
    "smoothed": "smoothed bootstrap in the PCA basis: a random real document + Gaussian noise with "
                "bandwidth^2 x the real covariance (eigen-decomposed), L2-normalised",
    "mixture": "Gaussian mixture: k-means centres of the real documents + pooled within-cluster "
               "covariance (eigen-decomposed), L2-normalised",
}


def extend(real_docs: np.ndarray, n: int, cache: Path | None = None, key: str = "", seed: int = 1,
           method: str = "smoothed", bandwidth: float = 0.4) -> tuple[np.ndarray, dict[str, Any]]:
    """The real documents followed by ``n - len(real_docs)`` synthetic ones (cached as .npy)."""
    n_syn = max(0, n - len(real_docs))
    info: dict[str, Any] = {"real": min(n, len(real_docs)), "synthetic": n_syn, "method": method,
                            "description": METHODS[method], "seed": seed}
    if method == "smoothed":
        info["bandwidth"] = bandwidth
    # What the synthetic part depends on: files derived from the extended set carry it too.
    info["tag"] = (f"{method}-h{bandwidth}" if method == "smoothed" else method) + f"-s{seed}"
    if n_syn == 0:
        return np.ascontiguousarray(real_docs[:n]), info
    path = cache / f"extended-{key}-{n}-{info['tag']}.npy" if cache is not None and key else None
    if path is not None and path.exists():
        return np.load(path, mmap_mode="r"), info
    out = np.concatenate([real_docs, synthesize(real_docs, n_syn, method, bandwidth, seed=seed)])
    if path is not None:
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(path)
    return out, info


def exact_topk(docs: np.ndarray, queries: np.ndarray, k: int, threads: int = 0) -> np.ndarray:
    """Brute-force inner-product top-``k`` ids (FAISS flat, in chunks of documents)."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    d = docs.shape[1]
    best_d = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    step = 200_000
    q = np.ascontiguousarray(queries, dtype=np.float32)
    for start in range(0, len(docs), step):
        index = faiss.IndexFlatIP(d)
        index.add(np.ascontiguousarray(docs[start : start + step], dtype=np.float32))
        dd, ii = index.search(q, min(k, index.ntotal))
        cd = np.concatenate([best_d, dd], axis=1)
        ci = np.concatenate([best_i, ii + start], axis=1)
        order = np.argsort(-cd, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(cd, order, 1), np.take_along_axis(ci, order, 1)
    return best_i


def matryoshka_recall(docs: np.ndarray, queries: np.ndarray, dims: Sequence[int], candidates: Sequence[int],
                      k: int = 10, truth: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Exact two-stage recall@k (coarse top-C by brute force, rescored by the full vector)
    against exact full search: the model's Matryoshka behaviour, free of ANN error."""
    full = truth if truth is not None else exact_topk(docs, queries, k)
    out: dict[str, dict[str, float]] = {}
    for d in dims:
        cd = np.concatenate([truncate(np.asarray(docs[i : i + 200_000]), d) for i in range(0, len(docs), 200_000)])
        cq = truncate(queries, d)
        top = exact_topk(cd, cq, max(candidates))
        out[str(d)] = {}
        for c in candidates:
            best = np.empty((len(queries), k), dtype=np.int64)
            for s in range(0, len(queries), 64):  # chunks: docs[cand] is (queries, c, dim)
                cand = top[s : s + 64, :c]
                scores = np.einsum("qcd,qd->qc", np.asarray(docs[cand.ravel()]).reshape(*cand.shape, -1),
                                   queries[s : s + 64])
                best[s : s + 64] = np.take_along_axis(cand, np.argsort(-scores, axis=1)[:, :k], 1)
            out[str(d)][str(c)] = recall(best, full)
    return out


def local_intrinsic_dim(docs: np.ndarray, queries: np.ndarray, k: int = 20, exclude_self: bool = False) -> float:
    """Median maximum-likelihood local intrinsic dimensionality (Levina-Bickel) of the queries'
    ``k`` nearest documents: how hard nearest-neighbour search is around them."""
    ids = exact_topk(docs, queries, k + int(exclude_self))
    if exclude_self:
        ids = ids[:, 1:]
    sims = np.einsum("qkd,qd->qk", np.asarray(docs)[ids.ravel()].reshape(*ids.shape, -1), queries)
    dist = np.sqrt(np.clip(2 - 2 * sims, 1e-12, None))
    dist = np.sort(dist, axis=1)
    lid = -1.0 / np.mean(np.log(dist[:, :-1] / dist[:, -1:]), axis=1)
    return round(float(np.median(lid)), 2)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return round(hits / (len(truth) * k), 4)


def spectrum_check(real_docs: np.ndarray, queries: np.ndarray, synthetic: np.ndarray, dims: Sequence[int],
                   candidates: Sequence[int], k: int = 10) -> dict[str, Any]:
    """Does the synthetic set look like the real one where it matters here?

    - per-dimension variance profile (and the share of variance in each Matryoshka prefix);
    - exact Matryoshka recall@k of the real queries against an equal-sized synthetic set vs
      against the real documents;
    - local intrinsic dimensionality (how hard nearest-neighbour search is locally).
    """
    m = min(len(real_docs), len(synthetic))
    syn = np.asarray(synthetic[:m])
    vr, vs = real_docs.var(0), syn.var(0)
    prefix = {str(d): [round(float(vr[:d].sum() / vr.sum()), 4), round(float(vs[:d].sum() / vs.sum()), 4)]
              for d in dims}
    rec_real = matryoshka_recall(real_docs, queries, dims, candidates, k)
    rec_syn = matryoshka_recall(syn, queries, dims, candidates, k)
    gap = max(abs(rec_real[d][c] - rec_syn[d][c]) for d in rec_real for c in rec_real[d])
    eig_r = np.linalg.eigvalsh(np.cov(real_docs.T))[::-1]
    eig_s = np.linalg.eigvalsh(np.cov(syn.T))[::-1]
    return {
        "items_each": m,
        "per_dim_variance_correlation": round(float(np.corrcoef(vr, vs)[0, 1]), 4),
        "per_dim_variance_max_rel_diff": round(float(np.max(np.abs(vs - vr) / vr)), 4),
        "total_variance_real_synthetic": [round(float(vr.sum()), 4), round(float(vs.sum()), 4)],
        "prefix_variance_share_real_synthetic": prefix,
        "top10_eigenvalue_share_real_synthetic": [round(float(eig_r[:10].sum() / eig_r.sum()), 4),
                                                  round(float(eig_s[:10].sum() / eig_s.sum()), 4)],
        "mean_query_top1_similarity_real_synthetic": [
            round(float(np.max(queries @ real_docs[:m].T, axis=1).mean()), 4),
            round(float(np.max(queries @ syn.T, axis=1).mean()), 4)],
        "local_intrinsic_dim_docs_real_synthetic": [
            local_intrinsic_dim(real_docs, real_docs[: min(1000, m)], exclude_self=True),
            local_intrinsic_dim(syn, syn[: min(1000, m)], exclude_self=True)],
        "local_intrinsic_dim_queries_real_synthetic": [local_intrinsic_dim(real_docs[:m], queries),
                                                       local_intrinsic_dim(syn, queries)],
        "matryoshka_recall_real": rec_real,
        "matryoshka_recall_synthetic": rec_syn,
        "matryoshka_recall_max_abs_gap": round(float(gap), 4),
    }
