"""FAISS part of ``benchmarks/search.py``: HNSW on the full vector vs HNSW on a Matryoshka
prefix + exact rescoring of the candidates with the full vectors, swept over efSearch.

Two-stage search is FAISS's own ``IndexRefine``: the base index is an ``IndexPreTransform``
(``RemapDimensionsTransform`` keeps the query's first ``d`` dims; no re-normalisation is needed
for ranking by inner product) over an ``IndexHNSWFlat`` of the re-normalised ``d``-dim prefixes,
and the refine index is the flat store of full vectors (the full HNSW's own storage, so no copy).
``k_factor = candidates / k``: stage 1 returns ``candidates`` hits, stage 2 ranks them exactly.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from search_data import recall, truncate

__all__ = ["build_hnsw", "index_bytes", "sweep_flat", "sweep_full", "sweep_two_stage", "time_batch"]


def index_bytes(index: Any) -> int:
    """Bytes the index holds in RAM: vectors + graph (neighbour lists, levels, offsets)."""
    import faiss

    hnsw_index = faiss.downcast_index(index)
    storage = faiss.downcast_index(hnsw_index.storage)
    vec = storage.ntotal * storage.code_size
    h = hnsw_index.hnsw
    graph = h.neighbors.size() * 4 + h.levels.size() * 4 + h.offsets.size() * 8 + h.cum_nneighbor_per_level.size() * 4
    return int(vec + graph)


def build_hnsw(x: np.ndarray, m: int, ef_construction: int, path: Path | None, threads: int,
               desc: str = "") -> tuple[Any, float, bool]:
    """``IndexHNSWFlat`` (inner product) over ``x``, loaded from ``path`` when it is there.
    Returns (index, build seconds, loaded-from-cache)."""
    import faiss
    from tqdm import tqdm

    if path is not None and path.exists():
        return faiss.read_index(str(path)), 0.0, True
    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    t0 = time.perf_counter()
    step = max(50_000, len(x) // 20)
    with tqdm(total=len(x), desc=f"build {desc}", unit="vec", unit_scale=True, leave=False) as bar:
        for start in range(0, len(x), step):
            chunk = np.ascontiguousarray(x[start : start + step], dtype=np.float32)
            index.add(chunk)
            bar.update(len(chunk))
    seconds = time.perf_counter() - t0
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    return index, seconds, False


def time_batch(fn: Callable[[], Any], min_seconds: float = 1.0, max_runs: int = 3) -> tuple[float, Any]:
    """Best wall time of ``fn`` over up to ``max_runs`` runs (stops once ``min_seconds`` spent)."""
    best, out, spent = float("inf"), None, 0.0
    for _ in range(max_runs):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent >= min_seconds:
            break
    return best, out


def sweep_full(index: Any, queries: np.ndarray, truth: np.ndarray, efs: Sequence[int], k: int,
               bar: Any = None) -> list[dict[str, Any]]:
    """Full-vector HNSW at each efSearch: recall@k vs exact, queries/s (one batch call)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    out = []
    for ef in efs:
        index.hnsw.efSearch = int(ef)
        seconds, (_, ids) = time_batch(lambda: index.search(q, k))
        out.append({"ef_search": int(ef), "recall_at_10": recall(ids, truth), "qps": round(len(q) / seconds, 1),
                    "ms_per_query": round(1000 * seconds / len(q), 4)})
        if bar is not None:
            bar.update(1)
    return out


def two_stage_index(coarse: Any, full: Any, d: int) -> Any:
    """Stage 1 on ``coarse`` (d-dim HNSW), stage 2 exact on ``full``'s stored full vectors."""
    import faiss

    base = faiss.IndexPreTransform(faiss.RemapDimensionsTransform(full.d, d, False), coarse)
    store = faiss.downcast_index(full.storage)
    refine = faiss.IndexRefine(base, store)
    refine.referenced_objects = [base, coarse, store, full]  # keep the wrapped C++ objects alive
    return refine


def sweep_two_stage(coarse: Any, full: Any, d: int, queries: np.ndarray, truth: np.ndarray,
                    candidates: Sequence[int], ef_factors: Sequence[float], k: int,
                    bar: Any = None) -> list[dict[str, Any]]:
    """Two-stage search at each (candidates, efSearch = factor x candidates)."""
    index = two_stage_index(coarse, full, d)
    base = index.referenced_objects[0]
    q = np.ascontiguousarray(queries, dtype=np.float32)
    out = []
    for c in candidates:
        for f in ef_factors:
            ef = max(round(c * f), c)
            coarse.hnsw.efSearch = ef
            index.k_factor = float(c) / k
            seconds, (_, ids) = time_batch(lambda: index.search(q, k))
            stage1, _ = time_batch(lambda c=c: base.search(q, c))  # stage 1 alone: what the rescoring adds
            out.append({"coarse_dim": d, "candidates": int(c), "ef_search": ef, "recall_at_10": recall(ids, truth),
                        "qps": round(len(q) / seconds, 1), "ms_per_query": round(1000 * seconds / len(q), 4),
                        "stage1_ms_per_query": round(1000 * stage1 / len(q), 4)})
            if bar is not None:
                bar.update(1)
    return out


def sweep_flat(full: Any, queries: np.ndarray, truth: np.ndarray, k: int) -> dict[str, Any]:
    """Exact brute force for reference, on the full HNSW's own flat storage (no copy)."""
    import faiss

    index = faiss.downcast_index(full.storage)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    seconds, (_, ids) = time_batch(lambda: index.search(q, k), min_seconds=0.0, max_runs=1)
    return {"recall_at_10": recall(ids, truth), "qps": round(len(q) / seconds, 1),
            "ms_per_query": round(1000 * seconds / len(q), 4), "bytes": int(index.ntotal * index.d * 4)}


def coarse_vectors(docs: np.ndarray, d: int, chunk: int = 200_000) -> np.ndarray:
    """The re-normalised ``d``-dim prefixes of ``docs`` (chunked: ``docs`` may be memory-mapped)."""
    out = np.empty((len(docs), d), dtype=np.float32)
    for start in range(0, len(docs), chunk):
        out[start : start + chunk] = truncate(np.asarray(docs[start : start + chunk]), d)
    return out
