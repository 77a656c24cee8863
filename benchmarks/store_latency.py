"""Median search latency of two-stage Matryoshka search vs full-vector-only search, in the
embedded engines (Qdrant local mode, Milvus Lite), at 20,000 items of real unirep-mini vectors.

    python benchmarks/store_latency.py [--n 20000] [--queries 100] [--data ../shared/data]
    python benchmarks/store_latency.py --db qdrant+http://localhost:6333 --db weaviate+http://localhost:8080 \
        --out benchmarks/results/store_latency-servers.json      # database servers instead


Items are Flickr8k captions (train + dev); queries are other captions. Both variants run on the
same collection, interleaved query by query, so machine noise hits both alike. Also reports the
recall@10 of two-stage against exact full-vector search. Writes results/store_latency.json.
With ``--db URI`` (any ``unirep index`` URI, repeatable) the same run goes to those databases
(collection ``unirep_bench_latency``, emptied first); the full-vector-only baseline is measured
natively for Qdrant and Milvus, and left out (with the reason) for the others.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def _captions(data: Path) -> list[str]:
    out: list[str] = []
    for split in ("train", "dev"):
        with open(data / "flickr8k" / f"captions_{split}.tsv", encoding="utf-8") as f:
            out += [r[1] for r in csv.reader(f, delimiter="\t") if len(r) >= 2]
    return list(dict.fromkeys(out))


def _vectors(model, texts: list[str], cache: Path, task: str) -> np.ndarray:
    if cache.exists():
        v = np.load(cache)
        if len(v) == len(texts):
            return v
    v = model.encode(text=texts, task=task, batch_size=64, show_progress=True)
    np.save(cache, v)
    return v


def _time(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t) * 1000, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "unirep-bench"))
    ap.add_argument("--db", action="append", default=None, metavar="URI",
                    help="database URI(s) to measure instead of the embedded engines")
    ap.add_argument("--out", default=str(RESULTS / "store_latency.json"))
    args = ap.parse_args()

    from unirep_integrations.milvus import MilvusStore
    from unirep_integrations.qdrant import QdrantStore

    from unirep_core import UniRep

    model = UniRep.from_pretrained("unirep-mini")
    texts = _captions(Path(args.data))
    docs, queries = texts[: args.n], texts[args.n : args.n + args.queries]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    dv = _vectors(model, docs, cache / f"docs-{args.n}.npy", "document")
    qv = _vectors(model, queries, cache / f"queries-{args.n}-{args.queries}.npy", "query")
    ids = [f"d{i}" for i in range(len(docs))]
    exact = [set(np.argsort(-(dv @ q))[: args.k].tolist()) for q in qv]

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.db:
            from unirep_integrations.stores import open_store

            stores = {uri: open_store(uri, model, collection="unirep_bench_latency") for uri in args.db}
            for store in stores.values():
                existing = store.count()
                if existing:
                    print(f"emptying {existing} items of collection unirep_bench_latency")
                    store.delete(ids)
        else:
            stores = {
                "qdrant_local": QdrantStore(model, str(Path(tmp) / "q"), collection="bench"),
                "milvus_lite": MilvusStore(model, str(Path(tmp) / "m.db"), collection="bench"),
            }
        for name, store in stores.items():
            t0 = time.perf_counter()
            store.add_embeddings(ids, dv, texts=docs)
            load_s = time.perf_counter() - t0
            full_only = _full_only(store)
            two, full, recall = [], [], []
            for q, ex in zip(qv, exact):
                ms2, hits = _time(lambda: store.search_vector(q, k=args.k, candidates=args.candidates))
                if full_only is not None:
                    msf, _ = _time(lambda: full_only(q, args.k))
                    full.append(msf)
                two.append(ms2)
                recall.append(len({int(h.id[1:]) for h in hits} & ex) / args.k)
            results[name] = {
                "items": len(docs), "coarse_dim": store.coarse_dim, "full_dim": store.full_dim,
                "candidates": args.candidates, "k": args.k,
                "two_stage_median_ms": round(statistics.median(two), 2),
                "two_stage_recall_at_10": round(float(np.mean(recall)), 4),
                "load_s": round(load_s, 1),
            }
            if full:
                results[name].update({
                    "full_only_median_ms": round(statistics.median(full), 2),
                    "two_stage_over_full_ratio": round(statistics.median(two) / statistics.median(full), 3),
                })
            else:
                results[name]["full_only"] = f"no native full-vector-only search wired for {type(store).__name__}"
            print(name, json.dumps(results[name]))
            if hasattr(store, "close"):
                store.close()
    out = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
           "data": "Flickr8k captions encoded by unirep-mini (documents) and held-out captions (queries)",
           "results": results}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")


def _full_only(store):
    """The single-stage baseline: a top-k search on the full vector alone, natively (None where
    not wired)."""
    from unirep_integrations.milvus import MilvusStore
    from unirep_integrations.qdrant import QdrantStore

    if isinstance(store, QdrantStore):
        def run(q, k):
            return store.client.query_points(store.collection, query=q.tolist(), using=store.full_name,
                                             limit=k, with_payload=True).points
    elif isinstance(store, MilvusStore):  # same search parameters and consistency as its stage 1
        def run(q, k):
            return store._search(q.tolist(), store.full_name, k, "", ["_id", "_text", "meta"])
    else:
        return None
    return run


if __name__ == "__main__":
    main()
