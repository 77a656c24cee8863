"""Qdrant local / Milvus Lite part of ``benchmarks/search.py``: the project's own stores
(``TwoStageStore.add_embeddings`` + ``search_vector``) against the same store's full-vector-only
search (``store_latency._full_only``), per coarse size and candidate count.

One collection per coarse size (a store has one coarse vector). Per query, the full-only
search and the two-stage search at every candidate count run back to back, so machine noise
hits them alike (as in ``store_latency.py``). Latency is per query (these engines take one
query vector per call through the store API); queries/s = 1000 / median ms.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from search_data import recall

__all__ = ["run_stores"]


def _open(engine: str, model: Any, d: int, tmp: Path, shared: dict[str, Any]) -> Any:
    if engine == "qdrant_local":
        from unirep_integrations.qdrant import QdrantStore

        store = QdrantStore(model, ":memory:", collection=f"bench{d}", coarse_dim=d, client=shared.get("qdrant"))
        shared.setdefault("qdrant", store.client)
    else:
        from unirep_integrations.milvus import MilvusStore

        store = MilvusStore(model, str(tmp / "bench.db"), collection=f"bench{d}", coarse_dim=d,
                            client=shared.get("milvus"))
        shared.setdefault("milvus", store.client)
    return store


def run_stores(model: Any, docs: np.ndarray, queries: np.ndarray, truth: np.ndarray, dims: Sequence[int],
               candidates: Sequence[int], k: int, engines: Sequence[str] = ("qdrant_local", "milvus_lite"),
               bar: Any = None) -> dict[str, Any]:
    from store_latency import _full_only, _time

    ids = [f"d{i}" for i in range(len(docs))]
    docs = np.ascontiguousarray(docs, dtype=np.float32)
    results: dict[str, Any] = {}
    for engine in engines:
        shared: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        full_rows: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory() as tmpdir:
            for d in dims:
                store = _open(engine, model, d, Path(tmpdir), shared)
                t0 = time.perf_counter()
                store.add_embeddings(ids, docs)
                if engine == "milvus_lite":  # seal the segment so its HNSW index is built and used
                    store.client.flush(store.collection)
                load_s = time.perf_counter() - t0
                full_only = _full_only(store)
                store.search_vector(queries[0], k=k, candidates=max(candidates))  # warm-up
                full_only(queries[0], k)
                ms: dict[int, list[float]] = {c: [] for c in candidates}
                found: dict[int, list[list[int]]] = {c: [] for c in candidates}
                full_ms: list[float] = []
                full_found: list[list[int]] = []
                for qi, q in enumerate(queries):
                    t, pts = _time(lambda q=q, run=full_only: run(q, k))
                    full_ms.append(t)
                    full_found.append(_ids(engine, pts))
                    order = list(candidates) if qi % 2 == 0 else list(reversed(candidates))
                    for c in order:
                        t, hits = _time(lambda q=q, c=c, st=store: st.search_vector(q, k=k, candidates=c))
                        ms[c].append(t)
                        found[c].append([int(h.id[1:]) for h in hits])
                    if bar is not None:
                        bar.update(1)
                full_med = statistics.median(full_ms)
                full_rows.append({"coarse_dim": d, "median_ms": round(full_med, 3), "qps": round(1000 / full_med, 1),
                                  "recall_at_10": recall(_pad(full_found, k), truth), "load_s": round(load_s, 1)})
                for c in candidates:
                    med = statistics.median(ms[c])
                    rows.append({"coarse_dim": d, "candidates": int(c), "median_ms": round(med, 3),
                                 "p90_ms": round(float(np.percentile(ms[c], 90)), 3), "qps": round(1000 / med, 1),
                                 "recall_at_10": recall(_pad(found[c], k), truth),
                                 "speedup_vs_full_only": round(full_med / med, 3)})
            for client in shared.values():
                client.close()
        results[engine] = {"full_only": full_rows, "two_stage": rows,
                           "full_only_median_ms": round(statistics.median([r["median_ms"] for r in full_rows]), 3)}
    return results


def _ids(engine: str, points: Any) -> list[int]:
    if engine == "qdrant_local":
        return [int(p.payload["_id"][1:]) for p in points]
    return [int(h["entity"]["_id"][1:]) for h in points]


def _pad(rows: list[list[int]], k: int) -> np.ndarray:
    return np.array([(r + [-1] * k)[:k] for r in rows], dtype=np.int64)
