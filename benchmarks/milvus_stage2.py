"""Which stage 2 is faster on Milvus Lite: a second server-side search of the full field filtered
to the candidate keys (``rescore="server"``), or client-side rescoring of the full vectors returned
with the stage-1 hits (``rescore="client"``)?

Synthetic Matryoshka-like unit vectors (full 384, coarse 128), ``--n`` items, ``--queries``
queries, ``candidates`` 100, k 10. Both variants run through ``MilvusStore.search_vector`` on the
same collection, query by query in alternating order, twice: with the rows still in Milvus Lite's
memtable (as written; searched by brute force; ``--memtable-queries`` of the queries, as this is
slow) and after ``flush`` (sealed segments with HNSW indexes). Prints a table and writes
``benchmarks/results/milvus_stage2.json``.

    python benchmarks/milvus_stage2.py            # about two minutes on 2 cores
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "integrations")]

from unirep_core.calibration import Calibrator  # noqa: E402
from unirep_integrations.milvus import MilvusStore  # noqa: E402


class _VectorsOnlyModel:
    """What a store needs from a model when vectors come from elsewhere: name, sizes, calibrator."""

    def __init__(self, dims=(128, 384)):
        self.name = "bench"
        self.dims = tuple(dims)
        self.dim = self.dims[-1]
        self.calibrator = Calibrator(None, self.dims)
        self.config = type("Config", (), {"limits": {}})()

    def check_dim(self, d):
        if d is None:
            return self.dim
        if d not in self.dims:
            raise ValueError(f"embedding_dim={d!r} is not allowed; allowed sizes: {list(self.dims)}")
        return int(d)


def matryoshka_like(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)) * np.exp(-np.arange(dim) / (dim / 6.0))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def run_phase(stores, vecs, ids, queries, k, candidates):
    times = {name: [] for name in stores}
    recall = {name: [] for name in stores}
    for i, q in enumerate(queries):
        exact = {ids[j] for j in np.argsort(-(vecs @ q))[:k]}
        order = list(stores) if i % 2 == 0 else list(reversed(stores))
        for name in order:
            t0 = time.perf_counter()
            hits = stores[name].search_vector(q, k=k, candidates=candidates)
            times[name].append((time.perf_counter() - t0) * 1000)
            recall[name].append(len({h.id for h in hits} & exact) / k)
    return {name: {"median_ms": round(statistics.median(times[name]), 2),
                   "p90_ms": round(float(np.percentile(times[name], 90)), 2),
                   "recall_at_10": round(float(np.mean(recall[name])), 4)} for name in stores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--memtable-queries", type=int, default=20,
                        help="queries for the memtable phase (brute force in pure Python: slow)")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "milvus_stage2.json")
    args = parser.parse_args()

    model = _VectorsOnlyModel()
    vecs = matryoshka_like(args.n, model.dim, seed=0)
    queries = matryoshka_like(args.queries, model.dim, seed=1)
    ids = [f"v{i}" for i in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "bench.db")
        client_store = MilvusStore(model, uri=uri, collection="bench", coarse_dim=128, rescore="client")
        server_store = MilvusStore(model, collection="bench", coarse_dim=128, rescore="server",
                                   client=client_store.client)
        stores = {"server": server_store, "client": client_store}
        t0 = time.perf_counter()
        client_store.add_embeddings(ids, vecs)
        insert_s = time.perf_counter() - t0
        assert client_store.count() == args.n
        for name in stores:  # warm-up
            stores[name].search_vector(queries[0], k=args.k, candidates=args.candidates)
        results = {"memtable": run_phase(stores, vecs, ids, queries[: args.memtable_queries], args.k, args.candidates)}
        t0 = time.perf_counter()
        client_store.client.flush("bench")
        flush_s = time.perf_counter() - t0
        for name in stores:
            stores[name].search_vector(queries[0], k=args.k, candidates=args.candidates)
        results["flushed_hnsw"] = run_phase(stores, vecs, ids, queries, args.k, args.candidates)
        client_store.close()

    import milvus_lite
    import pymilvus
    report = {
        "setup": {"n": args.n, "full_dim": model.dim, "coarse_dim": 128, "queries": args.queries,
                  "memtable_queries": min(args.memtable_queries, args.queries),
                  "candidates": args.candidates, "k": args.k, "index": "HNSW (M 16, efConstruction 200)",
                  "pymilvus": pymilvus.__version__, "milvus_lite": milvus_lite.__version__,
                  "python": platform.python_version(), "cpus": os.cpu_count(),
                  "insert_s": round(insert_s, 2), "flush_s": round(flush_s, 2)},
        "results": results,
    }
    faster = {phase: min(r, key=lambda name: r[name]["median_ms"]) for phase, r in results.items()}
    report["faster"] = faster
    print(f"{args.n} items, {model.dim}/128-d, {args.queries} queries, candidates {args.candidates}, k {args.k} "
          f"(insert {insert_s:.1f}s, flush {flush_s:.1f}s)")
    print(f"{'phase':<14}{'stage 2':<9}{'median ms':>10}{'p90 ms':>9}{'recall@10':>11}")
    for phase, r in results.items():
        for name, m in r.items():
            print(f"{phase:<14}{name:<9}{m['median_ms']:>10.2f}{m['p90_ms']:>9.2f}{m['recall_at_10']:>11.3f}")
    print("faster:", faster)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
