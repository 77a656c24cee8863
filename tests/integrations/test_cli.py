"""The main job: ``unirep index`` then ``unirep search`` on embedded Qdrant, with a tiny model."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("qdrant_client")

from unirep_core.cli import main  # noqa: E402
from unirep_integrations.corpus import iter_corpus, split_passages  # noqa: E402
from tests.tiny_models import make_image  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    return str(tiny_model.save_pretrained(tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("The dog runs on the beach with a red ball all day long.\n\n"
                                "Con chó chạy trên bãi biển với quả bóng đỏ cả ngày dài.\n", "utf-8")
    (root / "b.md").write_text("# Title\n\nA cat sleeps in the sun on a warm afternoon in May.\n", "utf-8")
    make_image(1).save(root / "sub" / "red.png")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "notes.bin").write_bytes(b"\x00\x01")
    (root / "records.jsonl").write_text(
        json.dumps({"id": "r1", "text": "a record with metadata", "metadata": {"lang": "en"}}) + "\n"
        + "{not json\n"
        + json.dumps({"id": "r2", "image": "sub/red.png", "text": "red picture"}) + "\n", "utf-8")
    return root


def test_split_passages():
    text = "# Heading\n\nFirst paragraph is long enough to stand on its own, surely.\n\nshort\n\n" + "x. " * 600
    parts = split_passages(text)
    assert parts[0].startswith("Heading First paragraph")
    assert all(len(p) <= 1200 for p in parts)
    assert sum(len(p) for p in parts) > 1500
    assert split_passages("tiny") == ["tiny"]


def test_iter_corpus_reads_every_kind(corpus):
    items = list(iter_corpus([corpus]))
    texts = [it.text for it in items if it.text]
    assert any("dog runs" in t for t in texts) and any("Con chó" in t for t in texts)
    assert any(t.startswith("Title A cat") for t in texts)
    assert sum(1 for it in items if it.image and it.image.endswith("red.png")) == 2  # file + jsonl record
    assert [it.error for it in items if it.error] == ["invalid JSON (Expecting property name enclosed in double quotes)"]
    r1 = next(it for it in items if it.id == "r1")
    assert r1.metadata["lang"] == "en"
    with pytest.raises(ValueError, match="no such file or directory"):
        list(iter_corpus([corpus / "missing"]))


def test_index_then_search_then_reindex(corpus, model_dir, tmp_path, capsys):
    db = f"qdrant:{tmp_path / 'db'}"
    assert main(["index", str(corpus), "--db", db, "--model", model_dir]) == 0
    out = capsys.readouterr()
    # 3 passages + 1 image + 2 jsonl records; broken.jpg and the bad JSON line fail, by file name
    assert "6 added, 0 skipped (already indexed), 2 failed" in out.out
    assert "broken.jpg: " in out.err and "records.jsonl:2: invalid JSON" in out.err
    assert main(["index", str(corpus), "--db", db, "--model", model_dir]) == 0
    assert "0 added, 6 skipped" in capsys.readouterr().out

    assert main(["search", "a record with metadata", "--db", db, "--model", model_dir, "--k", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and rows[0]["id"] == "r1" and rows[0]["payload"]["lang"] == "en"
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]

    assert main(["search", "--image", str(corpus / "sub" / "red.png"), "--db", db, "--model", model_dir]) == 0
    table = capsys.readouterr().out
    assert "red.png" in table.splitlines()[1]

    assert main(["search", "x", "--filter", "{bad", "--db", db, "--model", model_dir]) == 2
    assert "--filter is not valid JSON" in capsys.readouterr().err


def test_killed_index_run_resumes_without_duplicates_or_losses(model_dir, tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(400):
        (root / f"doc{i:03d}.txt").write_text(f"document number {i} talks about topic {i % 17} and item {i * 7}.",
                                              "utf-8")
    db = f"qdrant:{tmp_path / 'db'}"
    cmd = [sys.executable, "-m", "unirep_core", "index", str(root), "--db", db, "--model", model_dir,
           "--batch-size", "8"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    # kill -9 once the progress bar shows that some, but not all, chunks were written
    buf, deadline = "", time.time() + 120
    while time.time() < deadline:
        ch = proc.stderr.read(1)
        if not ch:
            break
        buf += ch
        if "| 128/400" in buf or "| 192/400" in buf:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"process ended before it could be killed: {buf[-300:]}"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    summary = done.stdout.strip().splitlines()[-1]
    added, skipped = int(summary.split()[0]), int(summary.split(",")[1].split()[0])
    assert skipped >= 128 and added + skipped == 400, summary

    from unirep_core import UniRep
    from unirep_integrations.qdrant import QdrantStore

    store = QdrantStore(UniRep.from_pretrained(model_dir), str(tmp_path / "db"))
    try:
        assert store.count() == 400
    finally:
        store.close()
