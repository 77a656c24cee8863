"""``unirep index --engine ray`` on a local 2-CPU Ray instance: the same rows as the local engine
in Qdrant local mode and Milvus Lite, a worker that dies mid-job, a failed job finished by a
re-run, corpus reading from an fsspec URL, and the benchmark's smoke mode."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("qdrant_client")

from unirep_integrations import ray as ray_ingest
from unirep_integrations.corpus import iter_corpus

from tests.tiny_models import make_image
from unirep_core.cli import main

ROOT = Path(__file__).resolve().parents[2]
N_RECORDS = 260


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    # Two worker CPUs and a small object store: what CI has, and enough to show the pool is parallel.
    ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    return str(tiny_model.save_pretrained(tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~290 items of every kind, a repeated passage, and two items that cannot be read."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "img").mkdir()
    for i in range(12):
        make_image(i).save(root / "img" / f"p{i:02d}.png")
    (root / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "a.txt").write_text("The dog runs on the beach with a red ball all day long.\n\n"
                                "Con chó chạy trên bãi biển với quả bóng đỏ cả ngày dài.\n", "utf-8")
    (root / "b.md").write_text("The dog runs on the beach with a red ball all day long.\n", "utf-8")  # a repeat
    lines = [json.dumps({"text": f"caption {i}: a {('red', 'blue')[i % 2]} photo of dog {i % 13}",
                         "metadata": {"n": i, "lang": "en"}}) for i in range(N_RECORDS)]
    lines += ["{not json", json.dumps({"id": "r1", "text": "red picture", "image": "img/p03.png"})]
    (root / "records.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    return root


def _counts(items: list) -> tuple[int, int]:
    """(distinct storable items, items that fail) of the corpus, by the local engine's rules."""
    good = [it for it in items if it.error is None and not (it.image or "").endswith("broken.jpg")]
    keys = {it.id or (it.text, it.image) for it in good}
    return len(keys), len(items) - len(good)


def _qdrant_rows(path: Path, model_dir: str) -> dict[str, tuple[np.ndarray, dict]]:
    from unirep_integrations.qdrant import QdrantStore

    from unirep_core import UniRep

    store = QdrantStore(UniRep.from_pretrained(model_dir), str(path))
    try:
        points, _ = store.client.scroll(store.collection, limit=10_000, with_payload=True, with_vectors=True)
        return {str(p.id): (np.asarray(p.vector[store.full_name]), dict(p.payload)) for p in points}
    finally:
        store.close()


def _milvus_rows(path: Path, model_dir: str) -> dict[str, tuple[np.ndarray, dict]]:
    from unirep_integrations.milvus import MilvusStore

    from unirep_core import UniRep

    store = MilvusStore(UniRep.from_pretrained(model_dir), str(path))
    try:
        rows = store.client.query(store.collection, filter="", limit=10_000,
                                  output_fields=["key", store.full_name, "meta", "_id", "_text", "_source"])
        return {r["key"]: (np.asarray(r[store.full_name]),
                           {**(r["meta"] or {}), **{k: r[k] for k in ("_id", "_text", "_source") if r[k]}})
                for r in rows}
    finally:
        store.close()


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, (vector, payload) in want.items():
        np.testing.assert_allclose(got[key][0], vector, atol=1e-5, err_msg=key)
        assert got[key][1] == payload, key


def test_embedded_uris_get_one_writer():
    assert ray_ingest.is_embedded("qdrant:./index") and ray_ingest.is_embedded("qdrant::memory:")
    assert ray_ingest.is_embedded("milvus:./x.db")
    for uri in ("qdrant+http://h:6333", "qdrant:http://h:6333", "milvus+http://h:19530",
                "weaviate+http://h:8080", "pinecone:idx"):
        assert not ray_ingest.is_embedded(uri), uri


def test_bad_arguments_fail_before_ray_starts(corpus, model_dir, capsys):
    assert main(["index", str(corpus / "missing"), "--engine", "ray", "--model", model_dir]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    with pytest.raises(ValueError, match="actors must be a positive integer"):
        ray_ingest.index_with_ray([corpus], "qdrant::memory:", model=model_dir, actors=0)
    assert not ray.is_initialized()


def test_fsspec_corpus_reads_like_a_local_one(corpus, tiny_model):
    """The scan step on ``memory://`` copies of the files: same items and ids, origins at the URL."""
    fsspec = pytest.importorskip("fsspec")
    pa = pytest.importorskip("pyarrow")
    fs = fsspec.filesystem("memory")
    for name in ("a.txt", "records.jsonl", "img/p03.png"):
        fs.pipe(f"/corpus/{name}", (corpus / name).read_bytes())
    files = ray_ingest._list_files(["memory://corpus"])
    assert files == ["memory:///corpus/a.txt", "memory:///corpus/img/p03.png", "memory:///corpus/records.jsonl"]
    remote = ray_ingest._scan(pa.table({"file_no": list(range(3)), "path": files}),
                              model_name=tiny_model.name).to_pylist()
    local = ray_ingest._scan(pa.table({"file_no": list(range(3)),
                                       "path": [str(corpus / n) for n in ("a.txt", "img/p03.png", "records.jsonl")]}),
                             model_name=tiny_model.name).to_pylist()
    assert [(r["id"], r["text"], r["error"]) for r in remote] == [(r["id"], r["text"], r["error"]) for r in local]
    assert len(remote) == 2 + 1 + N_RECORDS + 2
    r1 = next(r for r in remote if r["id"] == "r1")
    assert r1["image"] == "memory:///corpus/img/p03.png"
    assert r1["origin"] == f"memory:///corpus/records.jsonl:{N_RECORDS + 2}"
    assert json.loads(r1["meta"])["file"] == "memory:///corpus/records.jsonl"
    bad = next(r for r in remote if r["error"])
    assert bad["id"] is None and bad["origin"].endswith(f"records.jsonl:{N_RECORDS + 1}")


def test_qdrant_matches_local_engine_with_a_worker_killed(cluster, corpus, model_dir, tmp_path, capsys,
                                                          monkeypatch):
    stored, failing = _counts(list(iter_corpus([corpus])))
    local_db, ray_db = tmp_path / "local", tmp_path / "ray"
    assert main(["index", str(corpus), "--db", f"qdrant:{local_db}", "--model", model_dir]) == 0
    local_out = capsys.readouterr()
    summary = f"{stored} added, 1 skipped (already indexed), {failing} failed"
    assert summary in local_out.out

    marker = tmp_path / "crashed"
    monkeypatch.setenv(ray_ingest.CRASH_AFTER_ENV, "2")  # one actor dies at its 2nd batch; Ray retries it
    monkeypatch.setenv(ray_ingest.CRASH_ONCE_ENV, str(marker))
    assert main(["index", str(corpus), "--db", f"qdrant:{ray_db}", "--model", model_dir,
                 "--engine", "ray", "--actors", "2", "--batch-size", "16"]) == 0
    ray_out = capsys.readouterr()
    assert marker.exists(), "the fault was not injected"
    assert summary in ray_out.out
    failed_lines = sorted(line for line in ray_out.err.splitlines() if line.startswith("  failed: "))
    assert failed_lines == sorted(line for line in local_out.err.splitlines() if line.startswith("  failed: "))
    assert any("broken.jpg" in line for line in failed_lines) and any("records.jsonl:" in line for line in failed_lines)
    _assert_same(_qdrant_rows(ray_db, model_dir), _qdrant_rows(local_db, model_dir))


def test_milvus_failed_job_then_rerun_leaves_exactly_the_local_rows(cluster, corpus, model_dir, tmp_path,
                                                                    monkeypatch):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    stored, failing = _counts(list(iter_corpus([corpus])))
    local_db, ray_db = tmp_path / "local.db", tmp_path / "ray.db"
    assert main(["index", str(corpus), "--db", f"milvus:{local_db}", "--model", model_dir]) == 0

    monkeypatch.setenv(ray_ingest.CRASH_AFTER_ENV, "3")  # the actor dies at its 3rd batch, with no restart
    with pytest.raises(ray_ingest.IngestError, match="run the same command again") as failed:
        ray_ingest.index_with_ray([corpus], f"milvus:{ray_db}", model=model_dir, actors=1, batch_size=16,
                                  retries=0, progress=False)
    partial = len(_milvus_rows(ray_db, model_dir))
    assert partial < stored and f"{partial} items were stored" in str(failed.value)

    monkeypatch.delenv(ray_ingest.CRASH_AFTER_ENV)
    result = ray_ingest.index_with_ray([corpus], f"milvus:{ray_db}", model=model_dir, actors=1, batch_size=16,
                                       progress=False)
    assert len(result.added) == stored - partial and len(result.skipped) == partial + 1
    assert len(result.failed) == failing
    assert result.timings["batches"] >= 1 and result.timings["busy_s"] > 0
    _assert_same(_milvus_rows(ray_db, model_dir), _milvus_rows(local_db, model_dir))


def test_benchmark_smoke(cluster, model_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("ingest_scale", ROOT / "benchmarks" / "ingest_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "smoke.json"
    assert bench.main(["--smoke", "--model", model_dir, "--actors", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    runs = {r["engine"]: r for r in report["runs"]}
    assert set(runs) == {"local", "ray-1"}
    assert all(r["items"] == report["corpus"]["items"] and r["items_per_s"] > 0 for r in runs.values())
    assert runs["ray-1"]["ratio_vs_local"] == pytest.approx(
        runs["ray-1"]["items_per_s"] / runs["local"]["items_per_s"], rel=1e-3, abs=1e-4)  # JSON keeps 4 decimals
    costs = report["per_batch_ms"]
    assert all(costs[k] > 0 for k in ("decode", "encode", "write")) and "ray_overhead" in costs
    assert report["scaling"] and out.with_suffix(".png").stat().st_size > 0
