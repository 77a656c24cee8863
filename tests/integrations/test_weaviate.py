"""WeaviateStore: the shared contract against an in-process fake Weaviate that the real
``weaviate-client`` talks to over REST + gRPC, the same contract against a real server
(``-m service`` with ``WEAVIATE_URL``), and Weaviate-specific behaviour."""
from __future__ import annotations

import math
import os
import time
import uuid

import pytest

pytest.importorskip("weaviate")
pytest.importorskip("grpc")

from unirep_integrations.weaviate import (  # noqa: E402
    WeaviateStore,
    vectorizer_config,
    weaviate_collection_name,
)
from tests.integrations.contract import DOCS, StoreContract, matryoshka_like  # noqa: E402
from tests.integrations.weaviate_server import FakeWeaviate  # noqa: E402

MODULES = ("text2vec-transformers", "multi2vec-clip", "text2vec-openai")


@pytest.fixture(scope="module")
def fake_weaviate():
    server = FakeWeaviate(modules=MODULES).start()
    yield server
    server.stop()


def _name(prefix: str = "Test") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _open(tiny_model, server: FakeWeaviate, **kwargs) -> WeaviateStore:
    return WeaviateStore(tiny_model, server.url, grpc_port=server.grpc_port, **kwargs)


@pytest.fixture
def fake_store(tiny_model, fake_weaviate):
    """An empty store over a fresh collection; dropped afterwards; no unknown endpoint was hit."""
    store = _open(tiny_model, fake_weaviate, collection=_name())
    yield store
    store.client.collections.delete(store.collection)
    store.close()
    assert fake_weaviate.unknown == [], f"the client called endpoints the fake does not serve: {fake_weaviate.unknown}"


class TestWeaviateContract(StoreContract):
    @pytest.fixture
    def store(self, fake_store):
        yield fake_store


@pytest.mark.service
@pytest.mark.skipif(not os.environ.get("WEAVIATE_URL"), reason="set WEAVIATE_URL (and WEAVIATE_GRPC_PORT) to run")
class TestWeaviateServiceContract(StoreContract):
    """The same contract against a real Weaviate: ``WEAVIATE_URL=http://localhost:8080 pytest -m service``."""

    @pytest.fixture
    def store(self, tiny_model):
        store = WeaviateStore(tiny_model, os.environ["WEAVIATE_URL"],
                              grpc_port=int(os.environ.get("WEAVIATE_GRPC_PORT", "50051")),
                              api_key=os.environ.get("WEAVIATE_API_KEY") or None, collection=_name("UnirepTest"))
        yield store
        store.client.collections.delete(store.collection)
        store.close()


# -- protocol use -------------------------------------------------------------------------------
def test_endpoints_used_and_writes_are_batched(fake_store, fake_weaviate):
    fake_weaviate.calls.clear()
    vecs = matryoshka_like(450, fake_store.model.dim, seed=5)
    res = fake_store.add_embeddings([f"e{i}" for i in range(450)], vecs, metadatas=[{"n": i} for i in range(450)])
    assert len(res.added) == 450 and not res.failed
    hits = fake_store.search_vector(vecs[7], k=3, filter={"n": {"lt": 100}})
    assert hits[0].id == "e7" and hits[0].payload == {"n": 7}
    fake_store.delete(["e7"])
    assert fake_store.count() == 449
    calls = dict(fake_weaviate.calls)
    assert calls["gRPC weaviate.v1.Weaviate/BatchObjects"] == math.ceil(450 / fake_store.write_batch_size) == 3
    assert calls["gRPC weaviate.v1.Weaviate/Search"] == 2  # stage 1 + stage 2
    assert calls["gRPC weaviate.v1.Weaviate/BatchDelete"] == 1
    assert calls["gRPC weaviate.v1.Weaviate/Aggregate"] == 1
    assert calls["REST POST /v1/schema/{class}/properties"] == 1  # "n" declared once, as int
    prop = {p.name: p for p in fake_store._col.config.get().properties}["n"]
    assert prop.data_type.value == "int"


def test_reserved_keys_are_stored_under_weaviate_names(fake_store):
    fake_store.add(texts=["hello world program"], metadatas=[{"lang": "en"}], ids=["doc-1"])
    obj = fake_store._col.query.fetch_objects(limit=5).objects[0]
    assert obj.properties == {"unirep_id": "doc-1", "unirep_text": "hello world program", "lang": "en"}
    config = fake_store._col.config.get()
    assert set(config.vector_config) == {fake_store.coarse_name, fake_store.full_name}
    assert {p.name: p.tokenization.value for p in config.properties if p.tokenization}["lang"] == "field"


def test_collection_names_are_normalised(tiny_model, fake_weaviate):
    assert weaviate_collection_name("unirep") == "Unirep"
    assert weaviate_collection_name("my-docs.v2") == "My_docs_v2"
    with pytest.raises(ValueError, match="must start with a letter"):
        weaviate_collection_name("1docs")
    name = "lower_" + uuid.uuid4().hex[:6]
    with _open(tiny_model, fake_weaviate, collection=name) as store:
        assert store.collection == name[0].upper() + name[1:]
        assert store.client.collections.exists(store.collection)
        store.client.collections.delete(store.collection)


def test_reopen_existing_collection_and_reject_other_model(tiny_model, fake_weaviate):
    name = _name()
    with _open(tiny_model, fake_weaviate, collection=name) as store:
        store.add(texts=["a dog runs on the beach"], metadatas=[{"year": 2001}])
    with _open(tiny_model, fake_weaviate, collection=name) as again:
        assert again.count() == 1
        assert again.add(texts=["a dog runs on the beach"]).skipped
        assert again.search(text="a dog", k=1)[0].payload == {"year": 2001}
    with pytest.raises(ValueError, match="without the named vector"):
        _open(tiny_model, fake_weaviate, collection=name, coarse_dim=16)
    with _open(tiny_model, fake_weaviate, collection=name) as store:
        store.client.collections.delete(name)


def test_equal_coarse_and_full_size_use_one_vector(tiny_model, fake_weaviate):
    with _open(tiny_model, fake_weaviate, collection=_name(), coarse_dim=32, full_dim=32) as store:
        assert store.coarse_name == store.full_name
        res = store.add(texts=[t for t, _ in DOCS], metadatas=[m for _, m in DOCS])
        assert len(res.added) == len(DOCS)
        assert store.search(text=DOCS[3][0], k=1)[0].text == DOCS[3][0]
        store.client.collections.delete(store.collection)


# -- metadata and filters -----------------------------------------------------------------------
def test_metadata_weaviate_cannot_store_is_reported(fake_store):
    fake_store.add(texts=["first"], metadatas=[{"year": 2001, "tags": ["a", "b"]}], ids=["ok0"])
    res = fake_store.add(
        texts=["t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9"],
        metadatas=[{"Year": 1}, {"id": "x"}, {"unirep_text": "x"}, {"note": None}, {"nested": {"a": 1}},
                   {"year": "2001"}, {"year": 2001.5}, {"big": 2**60}, {"year": 2002.0, "tags": ["c"]}],
        ids=[f"bad{i}" for i in range(8)] + ["ok1"])
    assert res.added == ["ok1"]
    assert "lower-case letter" in res.failed["bad0"]
    assert "reserved" in res.failed["bad1"] and "reserved" in res.failed["bad2"]
    assert "null" in res.failed["bad3"]
    assert "Weaviate stores" in res.failed["bad4"]
    assert "does not fit" in res.failed["bad5"] and "does not fit" in res.failed["bad6"]
    assert "2**53" in res.failed["bad7"]
    hit = fake_store.search(text="t9", k=1, filter={"tags": "c"})[0]
    assert hit.id == "ok1" and hit.payload == {"year": 2002, "tags": ["c"]}
    assert isinstance(hit.payload["year"], int)


def test_conflicting_types_in_one_batch_fail_per_item(fake_store):
    res = fake_store.add(texts=["one", "two", "three"], metadatas=[{"k": "text"}, {"k": 5}, {"k": "more"}],
                         ids=["a", "b", "c"])
    assert sorted(res.added) == ["a", "c"]
    assert "b" in res.failed and "string" in res.failed["b"]
    assert fake_store.count() == 2


def test_filter_semantics_match_the_reference(fake_store):
    fake_store.add(texts=[t for t, _ in DOCS],
                   metadatas=[dict(m, phrase=f"{m['lang']} {m['topic']}", ok=m["year"] > 2010) for _, m in DOCS])

    def texts(flt):
        return {h.text for h in fake_store.search(text="a dog", k=10, filter=flt)}

    assert texts({"year": {"gt": 2005.5}}) == {t for t, m in DOCS if m["year"] > 2005.5}
    assert texts({"year": {"lte": 2009.9}}) == {t for t, m in DOCS if m["year"] <= 2009.9}
    assert texts({"year": 2005.0}) == {DOCS[1][0]}
    assert texts({"year": 2005.5}) == set()
    assert texts({"lang": 5}) == set()  # wrong type for a text property: nothing matches
    assert texts({"lang": {"in": ["vi", 3]}}) == {t for t, m in DOCS if m["lang"] == "vi"}
    assert texts({"year": {"in": [2001, 2020, "x"]}}) == {DOCS[0][0], DOCS[4][0]}
    assert texts({"nosuchfield": "x"}) == set()
    assert texts({"lang": {"gt": 1}}) == set()  # range on text: no match
    assert texts({"ok": True}) == {t for t, m in DOCS if m["year"] > 2010}
    # field tokenization: equality compares whole values, not words (Weaviate's default "word" would match)
    assert texts({"phrase": "en"}) == set()
    assert texts({"phrase": "en pets"}) == {DOCS[0][0], DOCS[2][0]}


def test_fake_enforces_weaviate_rules_the_adapter_relies_on(fake_store):
    fake_store.add(texts=["x"], metadatas=[{"year": 2001}])
    from weaviate.classes.query import Filter
    from weaviate.exceptions import WeaviateQueryError

    with pytest.raises(WeaviateQueryError, match="floating point"):
        fake_store._col.query.fetch_objects(filters=Filter.by_property("year").greater_than(2000.5))
    with pytest.raises(WeaviateQueryError, match="no such prop"):
        fake_store._col.query.fetch_objects(filters=Filter.by_property("nope").equal("x"))
    with pytest.raises(WeaviateQueryError, match="maximum results"):
        fake_store._col.query.fetch_objects(limit=10_001)


def test_candidates_are_clamped_to_query_maximum_results(fake_store):
    vecs = matryoshka_like(20, fake_store.model.dim, seed=6)
    fake_store.add_embeddings([f"c{i}" for i in range(20)], vecs)
    hits = fake_store.search_vector(vecs[3], k=2, candidates=50_000)
    assert hits[0].id == "c3"


# -- connection ---------------------------------------------------------------------------------
def test_api_key_is_sent_over_rest_and_grpc(tiny_model):
    with FakeWeaviate(api_key="s3cret") as server:
        with WeaviateStore(tiny_model, server.url, grpc_port=server.grpc_port, api_key="s3cret",
                           collection="Keyed") as store:
            store.add(texts=["hello"])
            assert store.count() == 1
        with pytest.raises(Exception, match="api key|401"):
            WeaviateStore(tiny_model, server.url, grpc_port=server.grpc_port, collection="Keyed")
        assert server.unknown == []


def test_wrong_grpc_port_fails_fast(tiny_model, fake_weaviate):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="not gRPC"):
        WeaviateStore(tiny_model, fake_weaviate.url, grpc_port=free_port, collection=_name())
    assert time.perf_counter() - start < 10


def test_bad_url(tiny_model):
    with pytest.raises(ValueError, match="path prefix"):
        WeaviateStore(tiny_model, "http://localhost:8080/weaviate")


def test_transient_errors(fake_store):
    import httpx
    from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateQueryError

    def status(code):
        return UnexpectedStatusCodeError("x", httpx.Response(code, request=httpx.Request("GET", "http://x")))

    assert fake_store._is_transient(status(503)) and fake_store._is_transient(status(429))
    assert not fake_store._is_transient(status(422))
    assert fake_store._is_transient(httpx.ConnectError("refused"))
    assert fake_store._is_transient(WeaviateQueryError("StatusCode.UNAVAILABLE", "GRPC search"))
    assert not fake_store._is_transient(ValueError("bad"))


# -- vectorizer configuration for a UniRep inference server ----------------------------------------
def test_vectorizer_config_text2vec_transformers():
    cfg = vectorizer_config("http://unirep:8000/", kind="text2vec-transformers", name="uni", dimensions=256)
    d = cfg._to_dict()
    module = d["vectorizer"]["text2vec-transformers"]
    assert module["inferenceUrl"] == "http://unirep:8000"
    assert module["dimensions"] == 256 and module["vectorizeClassName"] is False
    assert d["vectorIndexType"] == "hnsw" and d["vectorIndexConfig"]["distance"] == "cosine"
    split = vectorizer_config("http://u:1", passage_url="http://p:1", query_url="http://q:1")._to_dict()
    assert split["vectorizer"]["text2vec-transformers"]["passageInferenceUrl"] == "http://p:1"
    assert split["vectorizer"]["text2vec-transformers"]["queryInferenceUrl"] == "http://q:1"
    assert "inferenceUrl" not in split["vectorizer"]["text2vec-transformers"]
    with pytest.raises(ValueError, match="both"):
        vectorizer_config("http://u:1", passage_url="http://p:1")


def test_vectorizer_config_multi2vec_clip_and_openai():
    clip = vectorizer_config("http://unirep:8000", kind="multi2vec-clip", name="mm",
                             text_fields=["caption"], image_fields=["image"])._to_dict()
    assert clip["vectorizer"]["multi2vec-clip"] == {"inferenceUrl": "http://unirep:8000", "textFields": ["caption"],
                                                    "imageFields": ["image"]}
    with pytest.raises(ValueError, match="no dimensions"):
        vectorizer_config("http://unirep:8000", kind="multi2vec-clip", dimensions=128)
    for url in ("http://unirep:8000", "http://unirep:8000/v1", "http://unirep:8000/v1/"):
        oa = vectorizer_config(url, kind="text2vec-openai", model="unirep-mini", dimensions=128)._to_dict()
        module = oa["vectorizer"]["text2vec-openai"]
        assert module["baseURL"].rstrip("/") == "http://unirep:8000"  # Weaviate appends /v1/embeddings
        assert module["model"] == "unirep-mini" and module["dimensions"] == 128
        assert module["vectorizeClassName"] is False
    with pytest.raises(ValueError, match="kind"):
        vectorizer_config("http://u:1", kind="text2vec-cohere")
    with pytest.raises(ValueError, match="http"):
        vectorizer_config("unirep:8000")


def test_vectorizer_config_creates_a_collection(fake_weaviate, tiny_model):
    """The configs go through the real client's REST schema call and read back from the server."""
    import weaviate

    client = weaviate.connect_to_local(host="127.0.0.1", port=fake_weaviate.http_port,
                                       grpc_port=fake_weaviate.grpc_port, skip_init_checks=True)
    try:
        name = _name("Vec")
        client.collections.create(name, vector_config=[
            vectorizer_config("http://unirep:8000", kind="text2vec-transformers", name="text", dimensions=32),
            vectorizer_config("http://unirep:8000", kind="multi2vec-clip", name="mm", image_fields=["image"]),
            vectorizer_config("http://unirep:8000/v1", kind="text2vec-openai", name="oa", model="m"),
        ])
        vectors = client.collections.use(name).config.get().vector_config
        assert vectors["text"].vectorizer.model["inferenceUrl"] == "http://unirep:8000"
        assert vectors["mm"].vectorizer.model["inferenceUrl"] == "http://unirep:8000"
        assert vectors["oa"].vectorizer.model["baseURL"].rstrip("/") == "http://unirep:8000"
        assert all(v.vector_index_config.distance_metric.value == "cosine" for v in vectors.values())
        client.collections.delete(name)
    finally:
        client.close()
    assert fake_weaviate.unknown == []


# -- the fake itself ------------------------------------------------------------------------------
def test_fake_reports_endpoints_it_does_not_serve():
    import grpc
    import httpx
    from weaviate.proto.v1 import tenants_pb2, weaviate_pb2_grpc

    with FakeWeaviate() as server:
        r = httpx.get(server.url + "/v1/nodes")
        assert r.status_code == 404 and "no handler for REST GET /v1/nodes" in r.json()["error"][0]["message"]
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                weaviate_pb2_grpc.WeaviateStub(channel).TenantsGet(tenants_pb2.TenantsGetRequest(collection="X"))
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary("/weaviate.v2.Other/Call")(b"")
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert server.unknown == ["REST GET /v1/nodes", "gRPC weaviate.v1.Weaviate/TenantsGet",
                                  "gRPC /weaviate.v2.Other/Call"]
