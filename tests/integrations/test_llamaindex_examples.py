"""Smoke tests: ``examples/llamaindex_multimodal.py`` runs offline with a tiny model, and the
LlamaIndex snippet in the README's "Use with LangChain / LlamaIndex" section runs as written (with the tiny model's
directory in place of ``unirep-mini``)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("llama_index.vector_stores.qdrant")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tiny_model, tmp_path_factory):
    return str(tiny_model.save_pretrained(tmp_path_factory.mktemp("li_example") / "model"))


def test_llamaindex_multimodal_example(tiny_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "llamaindex_multimodal.py"), "--model", tiny_dir,
                          "--image", str(ROOT / "examples" / "images" / "pizza.png"), "bánh mì"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "indexed 20 nodes" in out.stdout
    sections = {}
    for block in out.stdout.split("\n\n")[1:]:
        title, *rows = block.strip().splitlines()
        sections[title] = rows
    assert len(sections) == 5 and all(len(rows) == 3 for rows in sections.values())
    assert ".png" in sections["text -> image: 'bánh mì'"][0]
    assert "pizza.png" in sections["image -> image: pizza.png"][0]  # the same image first
    assert "pizza.png" in sections["UniRepRetriever (calibrated): pizza.png"][0]


def test_llamaindex_snippet_runs(tiny_dir, monkeypatch, capsys):
    from llama_index.core import Settings

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Use with LangChain / LlamaIndex", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    code = blocks[1]
    assert '"unirep-mini"' in code
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(Settings, "_embed_model", Settings._embed_model)  # the snippet sets it: restore
    exec(compile(code.replace('"unirep-mini"', repr(tiny_dir)), "snippet-llamaindex", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert lines[4].endswith("examples/images/pizza.png") and lines[4].startswith("1.00")
