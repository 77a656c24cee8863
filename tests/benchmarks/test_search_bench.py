"""CI smoke test of benchmarks/search.py: a seconds-long run on random vectors (no model, no
shared data) through FAISS, Qdrant local and Milvus Lite, then sanity checks on the JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

for _module in ("faiss", "matplotlib", "qdrant_client", "milvus_lite", "tqdm"):
    pytest.importorskip(_module)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("search-bench")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search.py"), "--smoke", "--out", str(out),
                           "--cache", str(out / "cache")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("search.json", "search.png", "search.md"):
        assert (out / name).is_file(), name
    assert (out / "search.png").stat().st_size > 10_000
    return json.loads((out / "search.json").read_text())


def test_report_has_the_fields(report):
    for key in ("date", "machine", "settings", "data", "faiss", "stores", "run_seconds", "command"):
        assert key in report, key
    assert report["smoke"] is True
    assert report["machine"]["cores"] >= 1 and report["machine"]["faiss"]
    s = report["settings"]
    assert s["coarse_dims"] == [64, 128, 256] and s["full_dim"] == 384 and s["search_threads"] == 1
    f = report["faiss"]
    for key in ("build", "memory", "flat_exact", "full_hnsw", "two_stage", "exact_two_stage_recall", "goal"):
        assert key in f, key
    assert set(f["goal"]["per_coarse_dim"]) == {"64", "128", "256"}
    assert isinstance(f["goal"]["met"], bool)


def _sane(point: dict) -> None:
    assert 0.0 <= point["recall_at_10"] <= 1.0
    assert point["qps"] > 0


def test_recall_and_speed_values_are_sane(report):
    f = report["faiss"]
    n = f["n"]
    assert f["flat_exact"]["recall_at_10"] == 1.0
    for p in f["full_hnsw"] + f["two_stage"]:
        _sane(p)
    full = sorted(f["full_hnsw"], key=lambda p: p["ef_search"])
    assert full[-1]["recall_at_10"] >= full[0]["recall_at_10"]
    # Every document as a candidate: exact rescoring must find the exact top 10.
    for d, curve in f["exact_two_stage_recall"].items():
        assert curve[str(n)] == 1.0, d
        values = [curve[c] for c in sorted(curve, key=int)]
        assert values == sorted(values), d  # more candidates never hurt
    for p in f["two_stage"]:
        if p["candidates"] == n:
            assert p["recall_at_10"] >= 0.99, p


def test_memory_ratios(report):
    mem = report["faiss"]["memory"]
    ratios = [mem[d]["coarse_over_full_hnsw"] for d in ("64", "128", "256")]
    assert 0 < ratios[0] < ratios[1] < ratios[2] < 1
    assert mem["full_hnsw_bytes"] > mem["full_vectors_bytes"]


def test_stores(report):
    stores = report["stores"]
    n = report["settings"]["store_n"]
    assert set(stores) == {"qdrant_local", "milvus_lite"}
    for engine, res in stores.items():
        assert {r["coarse_dim"] for r in res["two_stage"]} == {64, 128, 256}
        for r in res["two_stage"] + res["full_only"]:
            _sane(r)
        for r in res["two_stage"]:
            if r["candidates"] == n:
                assert r["recall_at_10"] >= (1.0 if engine == "qdrant_local" else 0.95), (engine, r)


def test_extension_keeps_the_spectrum(report):
    check = report["data"]["extension_check"]
    assert check["per_dim_variance_correlation"] > 0.9
    assert check["matryoshka_recall_max_abs_gap"] < 0.2
