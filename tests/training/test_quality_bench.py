"""Smoke run of ``benchmarks/quality.py``: the tiny model on the tiny data set, JSON + MD + PNG."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quality_benchmark_smoke(tiny_model_dir, tiny_data, tmp_path):
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "benchmarks" / "quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "quality.json"
    assert bench.main(["--models", str(tiny_model_dir), "--data", str(tiny_data), "--out", str(out),
                       "--batch-size", "8"]) == 0
    result = json.loads(out.read_text())[str(tiny_model_dir)]
    sizes = list(result["metrics"])
    assert len(sizes) >= 2  # every Matryoshka size of the tiny model
    for metrics in result["metrics"].values():
        assert 0.0 <= metrics["flickr8k_t2i_R@10"] <= 1.0 and -1.0 <= metrics["sts_spearman"] <= 1.0
    table = out.with_suffix(".md").read_text().splitlines()
    assert len(table) == 2 + len(sizes)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --merge with --labels: the re-measured model is renamed and listed first, others are kept
    kept = {"earlier model": result}
    out.write_text(json.dumps(kept))
    assert bench.main(["--models", str(tiny_model_dir), "--labels", "tiny (again)", "--merge", "--data",
                       str(tiny_data), "--out", str(out), "--batch-size", "8"]) == 0
    merged = json.loads(out.read_text())
    assert list(merged) == ["tiny (again)", "earlier model"]
    assert merged["tiny (again)"]["metrics"] == result["metrics"]
    assert len(out.with_suffix(".md").read_text().splitlines()) == 2 + 2 * len(sizes)
