"""``UniRepEmbeddings``: LangChain's standard ``EmbeddingsUnitTests`` and
``EmbeddingsIntegrationTests`` (tiny model saved to a directory, passed by path), plus tasks,
Matryoshka sizes, images, the shared model cache, batching and non-blocking async."""
from __future__ import annotations

import asyncio
import importlib
import sys
import time

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import EmbeddingsIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import EmbeddingsUnitTests  # noqa: E402

from unirep_integrations import langchain as lc  # noqa: E402
from unirep_integrations.langchain import UniRepEmbeddings  # noqa: E402
from tests.tiny_models import make_image  # noqa: E402

# The suite's async tests need pytest-asyncio: this mark, or ``asyncio_mode = "auto"`` in the
# pytest options (the mark on a sync test only raises a warning, silenced here).
pytestmark = [pytest.mark.asyncio, pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning")]

_TINY: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def tiny_dir(tiny_model, tmp_path_factory):
    """The session's tiny model saved to a directory: the suites construct from a path."""
    path = str(tiny_model.save_pretrained(tmp_path_factory.mktemp("lc_tiny") / "model"))
    _TINY["path"] = path
    return path


class TestUniRepEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self):
        return UniRepEmbeddings

    @property
    def embedding_model_params(self):
        return {"model": _TINY["path"], "dimensions": 16}


class TestUniRepEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self):
        return UniRepEmbeddings

    @property
    def embedding_model_params(self):
        return {"model": _TINY["path"], "dimensions": 16}


def test_init_does_not_load_and_models_are_shared(tiny_dir):
    a = UniRepEmbeddings(model=tiny_dir)
    assert a._client is None  # lazy
    b = UniRepEmbeddings(model=tiny_dir + "/", dimensions=8)
    assert a.client is b.client  # one model per directory, process-wide
    assert len(a.embed_query("x")) == 32 and len(b.embed_query("x")) == 8
    assert a.size == 32 and b.size == 8


def test_tasks_and_sizes_match_the_model(tiny_model):
    emb = UniRepEmbeddings(model=tiny_model, dimensions=16)
    docs = emb.embed_documents(["hello world", "xin chào"])
    np.testing.assert_allclose(docs, tiny_model.encode(text=["hello world", "xin chào"], task="document",
                                                       embedding_dim=16), atol=1e-6)
    q = emb.embed_query("hello world")
    np.testing.assert_allclose(q, tiny_model.encode(text=["hello world"], task="query", embedding_dim=16)[0],
                               atol=1e-6)
    assert not np.allclose(q, docs[0])  # query and document prefixes differ
    assert emb.embed_documents([]) == []


def test_bad_size_and_bad_model_are_clear_errors(tiny_model, tiny_dir):
    with pytest.raises(ValueError, match=r"allowed sizes: \[8, 16, 32\]"):
        UniRepEmbeddings(model=tiny_model, dimensions=12)
    lazy = UniRepEmbeddings(model=tiny_dir, dimensions=12)  # checked when the model loads
    with pytest.raises(ValueError, match="allowed sizes"):
        lazy.embed_query("x")
    with pytest.raises(ValueError, match="UniRep instance"):
        UniRepEmbeddings(model=42)
    with pytest.raises(ValueError, match="item 1"):
        UniRepEmbeddings(model=tiny_model).embed_documents(["ok", ""])


def test_embed_image(tiny_model, tmp_path):
    paths = []
    for seed in (1, 2):
        paths.append(str(tmp_path / f"{seed}.png"))
        make_image(seed).save(paths[-1])
    emb = UniRepEmbeddings(model=tiny_model, dimensions=8)
    vectors = emb.embed_image(uris=paths)
    assert len(vectors) == 2 and all(len(v) == 8 for v in vectors)
    np.testing.assert_allclose(vectors, tiny_model.encode(images=paths, embedding_dim=8), atol=1e-6)
    assert asyncio.run(emb.aembed_image(paths[:1]))[0] == pytest.approx(vectors[0], abs=1e-4)  # batch of 1 vs 2


def test_batching_and_progress_reach_the_encoder(tiny_model, monkeypatch):
    seen = {}
    real = tiny_model.encode

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "encode", spy)
    UniRepEmbeddings(model=tiny_model, batch_size=2, show_progress=True).embed_documents(["a", "b", "c"])
    assert seen["batch_size"] == 2 and seen["show_progress"] is True and seen["task"] == "document"


async def test_async_does_not_block_the_event_loop(tiny_model, monkeypatch):
    real = tiny_model.encode

    def slow(*args, **kwargs):
        time.sleep(0.3)  # a long encode holding the thread (as a big batch does)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "encode", slow)
    emb = UniRepEmbeddings(model=tiny_model)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    docs, query = await asyncio.gather(emb.aembed_documents(["a", "b"]), emb.aembed_query("a"))
    task.cancel()
    assert len(docs) == 2 and len(query) == 32
    assert ticks >= 10  # the loop kept running while the model worked in threads


def test_missing_langchain_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "langchain_core", None)
    monkeypatch.delitem(sys.modules, "unirep_integrations.langchain")
    with pytest.raises(ImportError, match=r'pip install "unirep\[langchain\]"'):
        importlib.import_module("unirep_integrations.langchain")
    monkeypatch.undo()
    assert importlib.import_module("unirep_integrations.langchain") is lc
