"""Smoke tests: ``examples/langchain_rag.py`` runs offline with a tiny model, and the LangChain
snippet in the README's "Use with LangChain / LlamaIndex" section runs as written (with the tiny model's directory in
place of ``unirep-mini``)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("qdrant_client")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tiny_model, tmp_path_factory):
    return str(tiny_model.save_pretrained(tmp_path_factory.mktemp("lc_example") / "model"))


def snippet(n: int) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Use with LangChain / LlamaIndex", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return blocks[n]


def test_langchain_rag_example(tiny_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "langchain_rag.py"), "--model", tiny_dir,
                          "--k", "3", "Ai ăn phở vào bữa sáng?"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "indexed 10 passages and 10 images" in out.stdout
    prompt = out.stdout.split("--- prompt for the LLM ---", 1)[1]
    assert "[system]" in prompt and "Question: Ai ăn phở vào bữa sáng?" in prompt
    assert len(re.findall(r"^\[\d\] \(", prompt, re.M)) == 3


def test_langchain_snippet_runs(tiny_dir, monkeypatch, capsys):
    code = snippet(0)
    assert '"unirep-mini"' in code
    monkeypatch.chdir(ROOT)
    exec(compile(code.replace('"unirep-mini"', repr(tiny_dir)), "snippet-langchain", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "steaming-bowl.png" in "\n".join(lines[:3])
    assert "Xe đạp có hai bánh." in lines[3]  # the filter keeps the Vietnamese text only
