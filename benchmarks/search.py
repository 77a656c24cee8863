"""Two-stage Matryoshka search: HNSW on a 64/128/256-dim prefix of unirep-mini vectors +
exact rescoring with the full 384-dim vector, against HNSW on the full vector, in FAISS at
``--n`` vectors (default 1M), and in Qdrant local / Milvus Lite through the project's stores at
``--store-n`` (default 20k). Recall@10 is against exact full-vector search (brute force).

    python benchmarks/search.py                    # the full run (1M; first run ~30 min, then cached)
    python benchmarks/search.py --n 200000         # another scale
    python benchmarks/search.py --smoke            # seconds: random vectors, no model, tiny sizes

Vectors: ~11k real dev-split documents and 1000 queries encoded by unirep-mini (cached as
.npy under ``--cache`` keyed by the model's weights hash), extended to ``--n`` by a Gaussian
mixture fitted to the real documents (``search_data.py``; the report checks that the extension
keeps the per-dimension variance profile and the Matryoshka recall behaviour). HNSW indexes are
cached there too (M and efConstruction in the key).

Timing: one thread for every search (``faiss.omp_set_num_threads(1)`` and BLAS limited to
one thread), all queries in one batch call (FAISS), best of up to 3 runs; index builds use
``--build-threads``. The full-HNSW efSearch sweep runs before and after the two-stage sweep
and the faster pass of each setting is kept (a conservative baseline). Writes
``results/search.json``, ``search.png`` and ``search.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "integrations"), str(ROOT / "training")]

import search_data as sd
import search_faiss as sf

RESULTS = HERE / "results"
GOAL = {"recall_at_10": 0.98, "qps_ratio_vs_full_hnsw": 3.0, "coarse_memory_ratio": 1 / 3}


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    cache = Path(os.environ.get("UNIREP_CACHE", Path.home() / ".cache" / "unirep")) / "bench-search"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors in the FAISS benchmark")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dims", type=_ints, default=[64, 128, 256], help="coarse sizes")
    ap.add_argument("--candidates", type=_ints, default=[50, 100, 200, 300, 500, 1000, 2000])
    ap.add_argument("--ef-factors", type=_floats, default=[1.0, 2.0],
                    help="coarse efSearch = factor x candidates")
    ap.add_argument("--full-ef", type=_ints, default=[10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048],
                    help="efSearch values of the full-vector HNSW")
    ap.add_argument("--m", type=int, default=32, help="HNSW M (all indexes)")
    ap.add_argument("--ef-construction", type=int, default=100, help="HNSW efConstruction (all indexes)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--extend", choices=sorted(sd.METHODS), default="smoothed",
                    help="how real vectors are extended to --n (see search_data.py)")
    ap.add_argument("--bandwidth", type=float, default=0.4, help="noise scale of --extend smoothed")
    ap.add_argument("--store-n", type=int, default=20_000, help="vectors in the Qdrant/Milvus benchmark (0: skip)")
    ap.add_argument("--store-queries", type=int, default=30)
    ap.add_argument("--store-candidates", type=_ints, default=[50, 100, 200, 500, 1000])
    ap.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--model", default="unirep-mini")
    ap.add_argument("--render", type=Path, default=None, metavar="JSON",
                    help="only rebuild the .md and .png (and the goal check) from a results JSON")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=cache, help="vectors, ground truth and indexes (default %(default)s)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results; "
                                                           "with --smoke a temporary folder)")
    ap.add_argument("--smoke", action="store_true", help="seconds: random vectors, no model, tiny sizes")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n = min(args.n, 3000)
        args.queries = min(args.queries, 40)
        args.candidates = [10, 50, 200, args.n]
        args.full_ef = [10, 32, 128]
        args.ef_factors = [1.0]
        args.store_n = min(args.store_n, 400)
        args.store_queries = min(args.store_queries, 6)
        args.store_candidates = [10, 50, args.store_n]
        args.m = 8
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "unirep-search-smoke" if args.smoke else RESULTS
    return args


def machine() -> dict[str, Any]:
    import faiss

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": mem, "os": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "faiss": faiss.__version__}


def _versions() -> dict[str, str]:
    out = {}
    for mod in ("qdrant_client", "pymilvus", "milvus_lite"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except ImportError:
            out[mod] = "not installed"
    return out


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def interp_qps(curve: list[dict[str, Any]], r: float) -> float | None:
    """Queries/s of a recall/qps curve at recall ``r`` (its Pareto frontier, log-linear
    interpolation); None if the curve never reaches ``r``."""
    front = pareto(curve)
    if not front or front[-1]["recall_at_10"] < r:
        return None
    if front[0]["recall_at_10"] >= r:
        return float(front[0]["qps"])
    for a, b in itertools.pairwise(front):
        if a["recall_at_10"] <= r <= b["recall_at_10"]:
            if b["recall_at_10"] == a["recall_at_10"]:
                return float(b["qps"])
            t = (r - a["recall_at_10"]) / (b["recall_at_10"] - a["recall_at_10"])
            return float(np.exp(np.log(a["qps"]) + t * (np.log(b["qps"]) - np.log(a["qps"]))))
    return None


def pareto(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points not beaten on both recall and qps, by increasing recall."""
    pts = sorted(points, key=lambda p: (-p["qps"], -p["recall_at_10"]))
    front, best = [], -1.0
    for p in pts:
        if p["recall_at_10"] > best:
            front.append(p)
            best = p["recall_at_10"]
    return sorted(front, key=lambda p: p["recall_at_10"])


def merge_passes(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per efSearch, the faster of two passes (recall is the same: the search is deterministic)."""
    return [x if x["qps"] >= y["qps"] else y for x, y in zip(a, b)]


def goal_check(two: list[dict[str, Any]], full: list[dict[str, Any]], mem: dict[str, Any],
               dims: Sequence[int], flat: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per coarse size: the fastest two-stage setting with recall >= the goal, the full-vector
    baseline's queries/s at that same recall, and the memory ratio. The baseline is the full
    HNSW; where no efSearch of it reaches that recall, it is the fastest full-vector search that
    does, exact brute force (``flat``): a baseline that cannot get there does not make the
    speed goal met."""
    out: dict[str, Any] = {"goal": GOAL, "per_coarse_dim": {}}
    full_at_goal = [p for p in full if p["recall_at_10"] >= GOAL["recall_at_10"]]
    out["full_hnsw_fastest_at_goal"] = max(full_at_goal, key=lambda p: p["qps"]) if full_at_goal else None
    met_any = False
    for d in dims:
        pts = [p for p in two if p["coarse_dim"] == d and p["recall_at_10"] >= GOAL["recall_at_10"]]
        mem_ratio = mem[str(d)]["coarse_over_full_hnsw"]
        row: dict[str, Any] = {"coarse_memory_ratio": mem_ratio,
                               "memory_met": mem_ratio <= GOAL["coarse_memory_ratio"] + 1e-9}
        if not pts:
            row.update({"best": None, "recall_met": False, "speed_met": False, "met": False,
                        "max_recall": max((p["recall_at_10"] for p in two if p["coarse_dim"] == d), default=None)})
        else:
            best = max(pts, key=lambda p: p["qps"])
            fq = interp_qps(full, best["recall_at_10"])
            baseline = "full HNSW at equal recall"
            if fq is None and flat is not None:
                fq, baseline = flat["qps"], (f"exact brute force (full HNSW tops out at recall "
                                             f"{max(p['recall_at_10'] for p in full):.3f})")
            ratio = None if fq is None else round(best["qps"] / fq, 3)
            row.update({"best": best, "full_hnsw_qps_at_equal_recall": None if fq is None else round(fq, 1),
                        "baseline": baseline, "qps_ratio_at_equal_recall": ratio, "recall_met": True,
                        "speed_met": ratio is not None and ratio >= GOAL["qps_ratio_vs_full_hnsw"]})
            if out["full_hnsw_fastest_at_goal"]:
                row["qps_ratio_vs_full_hnsw_fastest_at_goal"] = round(best["qps"] / out["full_hnsw_fastest_at_goal"]["qps"], 3)
            row["met"] = bool(row["recall_met"] and row["speed_met"] and row["memory_met"])
        met_any = met_any or row["met"]
        out["per_coarse_dim"][str(d)] = row
    out["met"] = met_any
    return out


def run_faiss(args: argparse.Namespace, docs: np.ndarray, queries: np.ndarray, key: str,
              cache: Path | None) -> dict[str, Any]:
    import faiss
    from tqdm import tqdm

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # FAISS's own threads are limited anyway; BLAS only matters for brute force
        def threadpool_limits(_: int) -> Any:
            return contextlib.nullcontext()

    n, k = len(docs), args.k
    t0 = time.perf_counter()
    faiss.omp_set_num_threads(args.build_threads)
    gt_path = cache / f"truth-{key}-{n}-q{len(queries)}-k{k}.npy" if cache else None
    if gt_path is not None and gt_path.exists():
        truth = np.load(gt_path)
    else:
        truth = sd.exact_topk(docs, queries, k, threads=args.build_threads)
        if gt_path is not None:
            np.save(gt_path, truth)
    timings: dict[str, float] = {"ground_truth_s": round(time.perf_counter() - t0, 1)}

    indexes, build, mem = {}, {}, {}
    tag = f"M{args.m}-efc{args.ef_construction}"
    for d in [*args.dims, docs.shape[1]]:
        path = cache / f"hnsw-{key}-{n}-d{d}-{tag}.faiss" if cache else None
        x = docs if d == docs.shape[1] else sf.coarse_vectors(docs, d)
        index, seconds, cached = sf.build_hnsw(x, args.m, args.ef_construction, path, args.build_threads, f"d={d}")
        meta_path = path.with_suffix(".json") if path else None
        if cached and meta_path is not None and meta_path.exists():
            seconds = json.loads(meta_path.read_text())["build_s"]
        elif meta_path is not None:
            meta_path.write_text(json.dumps({"build_s": round(seconds, 1), "threads": args.build_threads}))
        indexes[d] = index
        build[str(d)] = {"build_s": round(seconds, 1), "from_cache": cached, "threads": args.build_threads}
        print(f"HNSW d={d}: {'loaded' if cached else 'built'} ({seconds:.0f} s build)", flush=True)
    full_dim = docs.shape[1]
    full_bytes = sf.index_bytes(indexes[full_dim])
    for d in args.dims:
        b = sf.index_bytes(indexes[d])
        mem[str(d)] = {"coarse_index_bytes": b, "coarse_over_full_hnsw": round(b / full_bytes, 4)}
    mem["full_hnsw_bytes"] = full_bytes
    mem["full_vectors_bytes"] = int(n * full_dim * 4)
    mem["note"] = ("coarse_index_bytes: vectors + HNSW graph of the coarse index (what must be in RAM); "
                   "two-stage also reads `candidates` full vectors per query from full_vectors_bytes, "
                   "which can stay on disk or be memory-mapped (here they are in RAM, as the full HNSW's storage)")

    # Exact two-stage recall (brute-force coarse search): the Matryoshka part of the recall loss.
    t0 = time.perf_counter()
    exact_two = sd.matryoshka_recall(docs, queries, args.dims, [c for c in args.candidates if c <= n], k, truth=truth)
    timings["exact_two_stage_recall_s"] = round(time.perf_counter() - t0, 1)

    faiss.omp_set_num_threads(1)
    timings["load_1min_before_sweeps"] = _loadavg()
    full_index = indexes[full_dim]
    steps = 2 * len(args.full_ef) + len(args.dims) * len(args.candidates) * len(args.ef_factors) + 1
    t0 = time.perf_counter()
    with threadpool_limits(1), tqdm(total=steps, desc="search sweeps", unit="setting") as bar:
        first = sf.sweep_full(full_index, queries, truth, args.full_ef, k, bar)
        two = []
        for d in args.dims:
            two += sf.sweep_two_stage(indexes[d], full_index, d, queries, truth,
                                      [c for c in args.candidates if c <= n], args.ef_factors, k, bar)
        second = sf.sweep_full(full_index, queries, truth, args.full_ef, k, bar)
        flat = sf.sweep_flat(full_index, queries, truth, k)
        bar.update(1)
    timings["search_sweeps_s"] = round(time.perf_counter() - t0, 1)
    timings["load_1min_after_sweeps"] = _loadavg()
    full = merge_passes(first, second)
    for p in two:
        fq = interp_qps(full, p["recall_at_10"])
        p["full_hnsw_qps_at_equal_recall"] = None if fq is None else round(fq, 1)
        p["qps_ratio_at_equal_recall"] = None if fq is None else round(p["qps"] / fq, 3)
    return {
        "n": n, "queries": len(queries), "k": k,
        "hnsw": {"M": args.m, "ef_construction": args.ef_construction, "metric": "inner product (unit vectors)"},
        "build": build, "memory": mem, "timings": timings,
        "flat_exact": flat,
        "full_hnsw": full, "full_hnsw_passes": {"before": first, "after": second},
        "two_stage": two,
        "exact_two_stage_recall": exact_two,
        "goal": goal_check(two, full, mem, args.dims, flat),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fx = report["faiss"]
    stores = report.get("stores") or {}
    check = report["data"].get("extension_check")
    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    colors = {64: "tab:blue", 128: "tab:orange", 256: "tab:green"}
    ax = axes[0][0]
    full = sorted(fx["full_hnsw"], key=lambda p: p["ef_search"])
    ax.plot([p["recall_at_10"] for p in full], [p["qps"] for p in full], "k-o", ms=4, label="HNSW full 384 (efSearch sweep)")
    for d in sorted({p["coarse_dim"] for p in fx["two_stage"]}):
        pts = [p for p in fx["two_stage"] if p["coarse_dim"] == d]
        front = pareto(pts)
        c = colors.get(d)
        ax.scatter([p["recall_at_10"] for p in pts], [p["qps"] for p in pts], s=10, alpha=0.35, color=c)
        ax.plot([p["recall_at_10"] for p in front], [p["qps"] for p in front], "-s", ms=4, color=c,
                label=f"HNSW {d} + rescore 384 (candidates x efSearch)")
    ax.scatter([fx["flat_exact"]["recall_at_10"]], [fx["flat_exact"]["qps"]], marker="*", s=120, color="red",
               label="exact brute force 384")
    ax.axvline(GOAL["recall_at_10"], color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 vs exact full-vector search")
    ax.set_ylabel("queries/s (1 thread, batch)")
    ax.set_title(f"FAISS, {fx['n']:,} vectors, M={fx['hnsw']['M']}, efC={fx['hnsw']['ef_construction']}")
    ax.set_xlim(max(0.5, min(p["recall_at_10"] for p in full + fx["two_stage"]) - 0.02), 1.005)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    markers = {"qdrant_local": "o", "milvus_lite": "s"}
    for engine, res in stores.items():
        for d in sorted({r["coarse_dim"] for r in res["two_stage"]}):
            rows = sorted([r for r in res["two_stage"] if r["coarse_dim"] == d], key=lambda r: r["candidates"])
            ax.plot([r["recall_at_10"] for r in rows], [r["qps"] for r in rows], "-", marker=markers[engine],
                    color=colors.get(d), ms=4, label=f"{engine} two-stage {d}")
        for r in res["full_only"]:
            ax.scatter([r["recall_at_10"]], [r["qps"]], marker=markers[engine], s=70, facecolors="none",
                       edgecolors="k")
        ax.scatter([], [], marker=markers[engine], s=70, facecolors="none", edgecolors="k",
                   label=f"{engine} full-vector only")
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 vs exact full-vector search")
    ax.set_ylabel("queries/s (1 query per call, 1000/median ms)")
    n_store = report["settings"]["store_n"]
    ax.set_title(f"Project stores, {n_store:,} vectors (candidates sweep)" if stores else "stores: not run")
    ax.grid(alpha=0.3, which="both")
    if stores:
        ax.legend(fontsize=7)

    ax = axes[1][0]
    if check:
        for d, c in colors.items():
            if str(d) not in check["matryoshka_recall_real"]:
                continue
            real = check["matryoshka_recall_real"][str(d)]
            syn = check["matryoshka_recall_synthetic"][str(d)]
            cs = sorted(int(x) for x in real)
            ax.plot(cs, [real[str(x)] for x in cs], "-o", color=c, ms=4, label=f"{d}: real")
            ax.plot(cs, [syn[str(x)] for x in cs], "--x", color=c, ms=5, label=f"{d}: synthetic (same size)")
        exact = fx["exact_two_stage_recall"]
        for d, c in colors.items():
            if str(d) in exact:
                cs = sorted(int(x) for x in exact[str(d)])
                ax.plot(cs, [exact[str(d)][str(x)] for x in cs], ":", color=c, lw=2, label=f"{d}: at {fx['n']:,}")
        ax.set_xscale("log")
        ax.set_xlabel("candidates (exact coarse search)")
        ax.set_ylabel("recall@10 after rescoring")
        ax.set_title(f"Matryoshka recall: real ({check['items_each']:,}) vs synthetic, and at full scale")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)

    ax = axes[1][1]
    prof = report["data"].get("variance_profile")
    if prof:
        ax.plot(prof["real"], lw=1, label="real documents")
        ax.plot(prof["synthetic"], lw=1, alpha=0.8, label="synthetic extension")
        for d in colors:
            ax.axvline(d, color="grey", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("dimension")
        ax.set_ylabel("variance")
        ax.set_title("per-dimension variance (unit vectors)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Two-stage Matryoshka search ({report['date']}, {report['machine']['cpu']}, "
                 f"{report['machine']['cores']} cores)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    fx = report["faiss"]
    g = fx["goal"]
    m = report["machine"]
    lines = [
        (f"Run {report['date']} on {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB; FAISS {m['faiss']}; "
         f"searches single-threaded, {fx['queries']} queries per batch call; HNSW M={fx['hnsw']['M']}, "
         f"efConstruction={fx['hnsw']['ef_construction']}."),
        "",
        (f"**FAISS, {fx['n']:,} vectors** (goal: recall@10 >= {GOAL['recall_at_10']}, >= "
         f"{GOAL['qps_ratio_vs_full_hnsw']:g}x the queries/s of full-vector HNSW at equal recall, coarse index "
         f"<= 1/3 of its memory; met: **{'yes' if g['met'] else 'no'}**)"),
        "",
        ("| search | candidates | efSearch | recall@10 | queries/s | full HNSW q/s at equal recall | speed ratio "
         "| index MB | memory ratio |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    full_mb = fx["memory"]["full_hnsw_bytes"] / 2**20
    fb = g.get("full_hnsw_fastest_at_goal")
    if fb:
        lines.append(f"| HNSW full 384 (fastest at >= {GOAL['recall_at_10']}) | - | {fb['ef_search']} | "
                     f"{fb['recall_at_10']:.4f} | {fb['qps']:,.0f} | - | 1 | {full_mb:,.0f} | 1 |")
    for d, row in g["per_coarse_dim"].items():
        mb = fx["memory"][d]["coarse_index_bytes"] / 2**20
        b = row.get("best")
        if b is None:
            lines.append(f"| HNSW {d} + rescore | - | - | max {row['max_recall']} | - | - | - | {mb:,.0f} | "
                         f"{row['coarse_memory_ratio']:.2f} |")
            continue
        fq = row.get("full_hnsw_qps_at_equal_recall")
        ratio = row.get("qps_ratio_at_equal_recall")
        star = "" if row.get("baseline", "full HNSW at equal recall").startswith("full HNSW") else " *"
        lines.append(f"| HNSW {d} + rescore 384 | {b['candidates']} | {b['ef_search']} | {b['recall_at_10']:.4f} | "
                     f"{b['qps']:,.0f} | {'-' if fq is None else f'{fq:,.0f}{star}'} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} | {mb:,.0f} | {row['coarse_memory_ratio']:.2f} |")
    fl = fx["flat_exact"]
    lines.append(f"| exact brute force 384 | - | - | {fl['recall_at_10']:.4f} | {fl['qps']:,.1f} | - | - | "
                 f"{fl['bytes'] / 2**20:,.0f} | - |")
    top = max(fx["full_hnsw"], key=lambda p: p["recall_at_10"])
    lines.append(f"| HNSW full 384 (highest recall) | - | {top['ef_search']} | {top['recall_at_10']:.4f} | "
                 f"{top['qps']:,.0f} | - | - | {full_mb:,.0f} | 1 |")
    notes = sorted({r["baseline"] for r in g["per_coarse_dim"].values() if r.get("baseline", "").startswith("exact")})
    if notes:
        lines += ["", f"\\* baseline: {notes[0]}."]
    stores = report.get("stores") or {}
    if stores:
        lines += ["", (f"**Project stores, {report['settings']['store_n']:,} vectors** "
                       f"({report['settings']['store_queries']} queries, one per call; median latency)"), "",
                  "| engine | coarse | candidates | recall@10 | median ms | full-only ms (recall) | speed-up |",
                  "|---|---|---|---|---|---|---|"]
        for engine, res in stores.items():
            full_by_d = {r["coarse_dim"]: r for r in res["full_only"]}
            for r in res["two_stage"]:
                f = full_by_d[r["coarse_dim"]]
                lines.append(f"| {engine} | {r['coarse_dim']} | {r['candidates']} | {r['recall_at_10']:.3f} | "
                             f"{r['median_ms']:.1f} | {f['median_ms']:.1f} ({f['recall_at_10']:.3f}) | "
                             f"{r['speedup_vs_full_only']:.2f}x |")
    return "\n".join(lines) + "\n"


def render(path: Path) -> dict[str, Any]:
    """Re-derive the goal check and rewrite ``<stem>.md`` / ``<stem>.png`` beside a results JSON."""
    report = json.loads(path.read_text())
    fx = report["faiss"]
    fx["goal"] = goal_check(fx["two_stage"], fx["full_hnsw"], fx["memory"], report["settings"]["coarse_dims"],
                            fx["flat_exact"])
    path.write_text(json.dumps(report, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(report))
    plot(report, path.with_suffix(".png"))
    print(markdown(report))
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render is not None:
        return render(args.render)
    t_start = time.perf_counter()
    load_start = _loadavg()
    run_s: dict[str, float] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory() if args.smoke else None
    cache = Path(tmp.name) if tmp else args.cache
    cache.mkdir(parents=True, exist_ok=True)

    # 1. real vectors
    t0 = time.perf_counter()
    model: Any
    if args.smoke:
        from milvus_stage2 import _VectorsOnlyModel

        model = _VectorsOnlyModel(dims=(64, 128, 256, 384))
        real = sd.random_set(n_docs=min(1500, args.n), n_queries=args.queries)
        key = "smoke"
    else:
        import torch

        from unirep_core import UniRep

        torch.set_num_threads(args.build_threads)
        model = UniRep.from_pretrained(args.model)
        real = sd.encode_real(model, args.data, cache, n_queries=args.queries)
        key = f"{real.info['model']}-{real.info['weights_hash']}-{real.info['data_version']}-q{args.queries}"
    run_s["real_vectors_s"] = round(time.perf_counter() - t0, 1)
    dims_ok = [d for d in args.dims if d < real.docs.shape[1]]
    args.dims = dims_ok
    print(f"real: {len(real.docs)} documents, {len(real.queries)} queries", flush=True)

    # 2. extension + check
    t0 = time.perf_counter()
    docs, ext_info = sd.extend(real.docs, max(args.n, args.store_n), cache=cache, key=key,
                               method=args.extend, bandwidth=args.bandwidth)
    check_cands = sorted({c for c in [10, 20, 50, 100, 200, 500, 1000] if c <= len(real.docs)})
    check = None
    profile = None
    if len(docs) > len(real.docs):
        # The check draws a fresh synthetic set of the real set's size (the real set's own ~1
        # child per document, not the ~n/real children each real document has at full scale).
        syn = sd.synthesize(real.docs, len(real.docs), args.extend, args.bandwidth, seed=2)
        check = sd.spectrum_check(real.docs, real.queries, syn, args.dims, check_cands, args.k)
        check["method"] = args.extend
        check["alternatives"] = {}
        for other in sorted(set(sd.METHODS) - {args.extend}):
            alt = sd.spectrum_check(real.docs, real.queries, sd.synthesize(real.docs, len(real.docs), other,
                                                                           args.bandwidth, seed=2),
                                    args.dims, check_cands, args.k)
            check["alternatives"][other] = {"description": sd.METHODS[other],
                                            **{k: v for k, v in alt.items() if k != "matryoshka_recall_real"}}
        profile = {"real": np.round(real.docs.var(0), 7).tolist(), "synthetic": np.round(syn.var(0), 7).tolist()}
        # At full scale every real document has ~n/real synthetic children: the neighbourhoods
        # search works in are theirs, so their local dimensionality is checked at that scale
        # too (a real corpus's stays near the real set's; noise blobs push it up).
        full_set = np.asarray(docs[: args.n])
        rng = np.random.default_rng(3)
        probe = full_set[np.sort(rng.choice(len(full_set), min(1000, len(full_set)), replace=False))]
        check["local_intrinsic_dim_at_full_scale"] = {
            "n": int(len(full_set)),
            "docs": sd.local_intrinsic_dim(full_set, probe, exclude_self=True),
            "queries": sd.local_intrinsic_dim(full_set, real.queries),
            "real_set_docs_queries": [check["local_intrinsic_dim_docs_real_synthetic"][0],
                                      check["local_intrinsic_dim_queries_real_synthetic"][0]],
        }
    run_s["extension_s"] = round(time.perf_counter() - t0, 1)

    # 3. FAISS
    t0 = time.perf_counter()
    # Indexes and ground truth depend on the extension too, not only on the real vectors.
    data_key = f"{key}-{ext_info['tag']}"
    faiss_res = run_faiss(args, np.asarray(docs[: args.n]) if args.smoke else docs[: args.n], real.queries, data_key,
                          cache)
    run_s["faiss_s"] = round(time.perf_counter() - t0, 1)

    # 4. stores
    stores = None
    if args.store_n:
        from search_stores import run_stores
        from tqdm import tqdm

        t0 = time.perf_counter()
        sdocs = np.asarray(docs[: args.store_n])
        pick = np.linspace(0, len(real.queries) - 1, min(args.store_queries, len(real.queries))).round().astype(int)
        sq = real.queries[np.unique(pick)]  # spread over the query kinds (they are stored grouped)
        struth = sd.exact_topk(sdocs, sq, args.k)
        engines = ("qdrant_local", "milvus_lite")
        with tqdm(total=len(engines) * len(args.dims) * len(sq), desc="stores", unit="query") as bar:
            stores = run_stores(model, sdocs, sq, struth, args.dims, [c for c in args.store_candidates if c <= args.store_n],
                                args.k, engines, bar)
        run_s["stores_s"] = round(time.perf_counter() - t0, 1)
    run_s["total_s"] = round(time.perf_counter() - t_start, 1)

    report = {
        "benchmark": "two-stage Matryoshka search (benchmarks/search.py)",
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": _versions(),
        "command": " ".join(["python", "benchmarks/search.py", *(argv if argv is not None else sys.argv[1:])]),
        "smoke": args.smoke,
        "settings": {"n": args.n, "queries": len(real.queries), "k": args.k, "coarse_dims": args.dims,
                     "full_dim": int(real.docs.shape[1]), "candidates": args.candidates, "ef_factors": args.ef_factors,
                     "full_ef_search": args.full_ef, "hnsw_M": args.m, "hnsw_ef_construction": args.ef_construction,
                     "store_n": args.store_n, "store_queries": min(args.store_queries, len(real.queries)),
                     "store_candidates": args.store_candidates, "build_threads": args.build_threads,
                     "search_threads": 1,
                     "timing": "searches on 1 thread (faiss.omp_set_num_threads(1), BLAS limited to 1 thread); "
                               "FAISS: all queries in one batch call, best of up to 3 runs per setting; full-HNSW "
                               "sweep run before and after the two-stage sweep, faster pass kept; stores: one query "
                               "per call, median latency"},
        "data": {"real": real.info, "extension": ext_info, "extension_check": check, "variance_profile": profile},
        "faiss": faiss_res,
        "stores": stores,
        "run_seconds": run_s,
        "load_average_1min": {"start": load_start, "end": _loadavg(),
                              "note": "other processes on the machine; above ~1 the single-thread timings are "
                                      "slowed for both sides alike"},
    }
    stem = "search"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    plot(report, args.out / f"{stem}.png")
    print(markdown(report))
    print(f"wrote {args.out / (stem + '.json')}, .md, .png in {run_s['total_s']:.0f} s", flush=True)
    if tmp:
        tmp.cleanup()
    return report


if __name__ == "__main__":
    main()
