"""MilvusStore on Milvus Lite: the shared contract plus Milvus-specific behaviour (reopen, schema
mismatch, filter escaping, server-side rescoring, the embedding Function)."""
from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from unirep_integrations.base import parse_filter  # noqa: E402
from unirep_integrations.milvus import MilvusStore, embedding_function, filter_expression  # noqa: E402

from tests.integrations.contract import StoreContract, matryoshka_like  # noqa: E402

_names = itertools.count()


@pytest.fixture(scope="module")
def milvus_db(tmp_path_factory):
    """One Milvus Lite file for the module; every test gets a fresh collection in it."""
    return str(tmp_path_factory.mktemp("milvus") / "m.db")


@pytest.fixture
def make_store(tiny_model, milvus_db):
    made = []

    def make(**kwargs):
        kwargs.setdefault("collection", f"t{next(_names)}")
        store = MilvusStore(tiny_model, uri=kwargs.pop("uri", milvus_db), **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        if store.client.has_collection(store.collection):
            store.client.drop_collection(store.collection)
        store.close()


class TestMilvusContract(StoreContract):
    @pytest.fixture
    def store(self, make_store):
        return make_store()


def _release_lite_server(path: str) -> None:
    """Stop Milvus Lite's in-process server for ``path`` so the next client starts a new one from
    the files on disk, as a new process would."""
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(path)


def test_reopen_finds_data_and_loads(tiny_model, tmp_path):
    uri = str(tmp_path / "reopen.db")
    first = MilvusStore(tiny_model, uri=uri, collection="docs")
    res = first.add(texts=["a dog runs on the beach", "the red cat sleeps"], metadatas=[{"n": 1}, {"n": 2}])
    assert len(res.added) == 2
    first.client.release_collection("docs")  # what a new process finds: a released collection
    first.close()
    _release_lite_server(uri)

    again = MilvusStore(tiny_model, uri=uri, collection="docs")
    try:
        assert again.client.get_load_state("docs")["state"].name == "Loaded"
        assert again.count() == 2
        hit = again.search(text="the red cat sleeps", k=1)[0]
        assert hit.text == "the red cat sleeps" and hit.payload == {"n": 2}
        assert again.add(texts=["a dog runs on the beach"]).skipped == [res.added[0]]
    finally:
        again.close()
        _release_lite_server(uri)


def test_collection_of_another_model_or_size_is_refused(make_store, tiny_model, milvus_db):
    other = make_store(coarse_dim=16)
    assert other.coarse_name == "tiny_fusion_16"
    with pytest.raises(ValueError, match=r"has vector fields tiny_fusion_16 \(16\), tiny_fusion_32 \(32\).*"
                                         r"needs tiny_fusion_8 \(8\), tiny_fusion_32 \(32\)"):
        MilvusStore(tiny_model, uri=milvus_db, collection=other.collection)
    with pytest.raises(ValueError, match="tiny_fusion_16 \\(16\\)"):
        MilvusStore(tiny_model, collection=other.collection, coarse_dim=8, full_dim=16, client=other.client)


def test_filter_expression_translation():
    def expr(spec):
        return filter_expression(parse_filter(spec))

    assert expr({"lang": "vi"}) == 'meta["lang"] == "vi"'
    assert expr({"lang": {"in": ["vi", "en"]}}) == '(meta["lang"] == "vi" or meta["lang"] == "en")'
    assert expr({"year": {"gte": 2005, "lt": 2020}}) == 'meta["year"] >= 2005 and meta["year"] < 2020'
    assert expr({"ok": True, "r": {"gt": 4.5}}) == 'meta["ok"] == true and meta["r"] > 4.5'
    assert expr({"q": 'he said "hi" \\ x'}) == r'meta["q"] == "he said \"hi\" \\ x"'
    assert expr({"q": "a\tb\nc"}) == r'meta["q"] == "a\tb\nc"'
    assert expr({"q": {"in": ["only"]}}) == 'meta["q"] == "only"'
    assert expr(None) == ""


def test_filter_escaping_and_missing_fields_end_to_end(make_store):
    store = make_store()
    values = ['he said "hi"', "back\\slash", 'both \\"', "tab\tand\nnewline", "it's", "tiếng Việt"]
    metas = [{"q": v, "n": i} for i, v in enumerate(values)] + [{"n": "7"}, {}]
    vecs = matryoshka_like(len(metas), store.model.dim, seed=5)
    store.add_embeddings([f"e{i}" for i in range(len(metas))], vecs, metadatas=metas)
    q = vecs[0]
    for i, v in enumerate(values):
        assert [h.id for h in store.search_vector(q, k=10, filter={"q": v})] == [f"e{i}"]
    got = {h.id for h in store.search_vector(q, k=10, filter={"q": {"in": [values[0], values[1], "nope"]}})}
    assert got == {"e0", "e1"}
    # rows without the field, or with a string where a number is compared, do not match
    assert {h.id for h in store.search_vector(q, k=10, filter={"n": {"gte": 3}})} == {"e3", "e4", "e5"}
    assert store.search_vector(q, k=10, filter={"missing": "x"}) == []


@pytest.mark.parametrize("rescore", ["server", "client"])
def test_both_stage2_variants_are_exact_when_candidates_cover(make_store, rescore):
    store = make_store(rescore=rescore, index="FLAT" if rescore == "server" else "HNSW")
    vecs = matryoshka_like(200, store.model.dim, seed=6)
    ids = [f"v{i}" for i in range(len(vecs))]
    store.add_embeddings(ids, vecs, metadatas=[{"even": i % 2 == 0} for i in range(len(vecs))])
    for q in matryoshka_like(3, store.model.dim, seed=7):
        hits = store.search_vector(q, k=5, candidates=200, filter={"even": True})
        sims = vecs @ q
        exact = [i for i in np.argsort(-sims) if i % 2 == 0][:5]
        assert [h.id for h in hits] == [ids[i] for i in exact]
        np.testing.assert_allclose([h.similarity for h in hits], sims[exact], atol=1e-4)


def test_upsert_counts_and_limits(make_store):
    store = make_store()
    vecs = matryoshka_like(3, store.model.dim, seed=8)
    store.add_embeddings(["a", "b", "c"], vecs)
    store.add_embeddings(["a", "b"], vecs[:2], metadatas=[{"v": 2}, {"v": 2}])  # same keys: replaced
    assert store.count() == 3
    assert store.search_vector(vecs[0], k=1)[0].payload == {"v": 2}
    res = store.add_embeddings(["long", "odd", "ok"], matryoshka_like(3, store.model.dim, seed=9),
                               metadatas=[None, {"when": object()}, None], texts=["x" * 70000, "fine", "fine"])
    assert res.added == ["ok"]
    assert "over Milvus's limit" in res.failed["long"] and "JSON" in res.failed["odd"]
    assert store.count() == 4
    store.delete(["a", "unknown"])
    assert store.count() == 3


def test_transient_errors():
    from pymilvus import MilvusException, MilvusUnavailableException

    store = MilvusStore.__new__(MilvusStore)
    assert store._is_transient(ConnectionError("reset"))
    assert store._is_transient(MilvusUnavailableException(message="down"))
    assert store._is_transient(MilvusException(code=8, message="rate limit exceeded"))
    assert not store._is_transient(MilvusException(code=6, message="unexpected character"))
    assert not store._is_transient(ValueError("bad"))
    grpc = pytest.importorskip("grpc")
    assert store._is_transient(MilvusException(code=grpc.StatusCode.UNAVAILABLE, message="retries exhausted"))
    assert not store._is_transient(MilvusException(code=grpc.StatusCode.INVALID_ARGUMENT, message="bad"))


def test_bad_options(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="rescore"):
        MilvusStore(tiny_model, uri=str(tmp_path / "x.db"), rescore="both")
    with pytest.raises(ValueError, match="ending in .db"):
        MilvusStore(tiny_model, uri=str(tmp_path / "x"))


def test_missing_sdk_names_the_extra(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(ImportError, match=r'pip install "unirep\[milvus\]"'):
        MilvusStore(tiny_model, uri="unused.db")


def test_embedding_function_params():
    from pymilvus import FunctionType

    fn = embedding_function(base_url="http://127.0.0.1:8000", dimensions=256, api_key="k")
    d = fn.to_dict()
    assert d["type"] == FunctionType.TEXTEMBEDDING
    assert d["name"] == "unirep"
    assert d["input_field_names"] == ["text"] and d["output_field_names"] == ["vector"]
    assert d["params"] == {"provider": "openai", "model_name": "unirep-mini", "base_url": "http://127.0.0.1:8000/v1",
                           "api_key": "k", "dimensions": 256}
    fn = embedding_function("e", base_url="https://h/v1/", model_name="m", input_field="doc", output_field="emb")
    assert fn.to_dict()["params"] == {"provider": "openai", "model_name": "m", "base_url": "https://h/v1",
                                      "api_key": "EMPTY"}
    assert fn.to_dict()["input_field_names"] == ["doc"]
    with pytest.raises(ValueError, match="endpoint"):
        embedding_function(base_url="http://h/v1/embeddings")
    with pytest.raises(ValueError, match="http"):
        embedding_function(base_url="127.0.0.1:8000/v1")
    for bad in (True, 0, "256", 1.5):
        with pytest.raises(ValueError, match="dimensions"):
            embedding_function(base_url="http://h/v1", dimensions=bad)


def test_one_vector_field_when_coarse_is_full(make_store):
    store = make_store(coarse_dim=32, full_dim=32)
    fields = [f["name"] for f in store.client.describe_collection(store.collection)["fields"]]
    assert fields.count("tiny_fusion_32") == 1
    vecs = matryoshka_like(20, store.model.dim, seed=10)
    store.add_embeddings([f"s{i}" for i in range(20)], vecs)
    hits = store.search_vector(vecs[3], k=3)
    assert hits[0].id == "s3" and hits[0].similarity == pytest.approx(1.0, abs=1e-4)
