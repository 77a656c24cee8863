"""PineconeStore against the in-process fake Pinecone (the real SDK over real HTTP), and against a
real server in the ``service`` tests (``PINECONE_HOST`` + ``PINECONE_API_KEY``)."""
from __future__ import annotations

import os
import time
import uuid

import pytest

pytest.importorskip("pinecone")

from pinecone import Pinecone  # noqa: E402
from pinecone.errors.exceptions import ApiError, PayloadTooLargeError, RateLimitError  # noqa: E402

from tests.integrations.contract import StoreContract, matryoshka_like  # noqa: E402
from tests.integrations.pinecone_server import MAX_REQUEST_BYTES, FakePinecone  # noqa: E402
from unirep_integrations.base import Condition, id_to_uuid  # noqa: E402
from unirep_integrations.pinecone import PineconeStore, index_name, pinecone_filter  # noqa: E402

API_KEY = "test-key"


@pytest.fixture(scope="module")
def server():
    with FakePinecone(API_KEY) as srv:
        yield srv


def _name() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def make_store(server, tiny_model):
    """Stores over fresh indexes on the fake; their indexes are deleted after the test."""
    made: list[PineconeStore] = []

    def make(index: str | None = None, **options) -> PineconeStore:
        s = PineconeStore(tiny_model, index or _name(), api_key=API_KEY, host=server.url, **options)
        made.append(s)
        return s

    yield make
    for s in made:
        s.drop()


class TestPineconeTwoIndex(StoreContract):
    @pytest.fixture
    def store(self, make_store):
        return make_store()


class TestPineconeOneIndex(StoreContract):
    @pytest.fixture
    def store(self, make_store):
        return make_store(mode="one_index")


# -- layout and control plane -------------------------------------------------------------
def test_two_index_layout(make_store, server, tiny_model):
    s = make_store("layout")
    assert s.index_names == ["layout-tiny-fusion-32", "layout-tiny-fusion-8"]
    assert {"layout-tiny-fusion-32", "layout-tiny-fusion-8"} <= set(server.indexes)
    assert server.indexes["layout-tiny-fusion-8"].dimension == 8
    s.add(texts=["hello world"], metadatas=[{"lang": "en"}], ids=["h"])
    key = next(iter(server.indexes["layout-tiny-fusion-32"].namespaces[""].rows))
    _, full_meta = server.indexes["layout-tiny-fusion-32"].namespaces[""].rows[key]
    _, coarse_meta = server.indexes["layout-tiny-fusion-8"].namespaces[""].rows[key]
    assert full_meta == {"lang": "en", "_id": "h", "_text": "hello world", "_key": key}
    assert coarse_meta == {"lang": "en"}  # filter fields only: the text lives in the full index
    hit = s.search(text="hello world", k=1)[0]
    assert hit.payload == {"lang": "en"} and "_key" not in hit.payload
    # stage 1 asked the coarse index for ids only, stage 2 the full one for k matches
    server.clear_log()
    s.search(text="hello world", k=1, candidates=50)
    queries = server.requests("query")
    assert [q.index for q in queries] == ["layout-tiny-fusion-8", "layout-tiny-fusion-32"]


def test_one_index_mode_uses_only_the_full_index(make_store, server):
    s = make_store("solo", mode="one_index")
    assert s.index_names == ["solo-tiny-fusion-32"]
    assert "solo-tiny-fusion-8" not in server.indexes


def test_reopen_existing_indexes_and_wrong_dimension(make_store, tiny_model, server):
    s = make_store("reuse")
    s.add(texts=["kept"], ids=["k1"])
    again = PineconeStore(tiny_model, "reuse", api_key=API_KEY, host=server.url, create=False)
    try:
        assert again.count() == 1 and again.search(text="kept", k=1)[0].id == "k1"
    finally:
        again.close()
    # the same index name at another coarse size finds an 8-dim index where it wants 16
    pc = Pinecone(api_key=API_KEY, host=server.url)
    pc.indexes.create(name="reuse-tiny-fusion-16", dimension=8, metric="cosine", timeout=-1)
    with pytest.raises(ValueError, match="has dimension 8, this store needs 16"):
        PineconeStore(tiny_model, "reuse", api_key=API_KEY, host=server.url, coarse_dim=16)
    pc.indexes.delete("reuse-tiny-fusion-16")
    pc.close()


def test_missing_index_without_create_and_bad_names(tiny_model, server):
    with pytest.raises(ValueError, match="does not exist"):
        PineconeStore(tiny_model, "absent", api_key=API_KEY, host=server.url, create=False)
    with pytest.raises(ValueError, match="lowercase letters, digits and '-'"):
        PineconeStore(tiny_model, "x" * 40, api_key=API_KEY, host=server.url)
    with pytest.raises(ValueError, match="mode="):
        PineconeStore(tiny_model, "m", api_key=API_KEY, host=server.url, mode="three")
    assert index_name("My_Coll", "unirep_mini_128") == "my-coll-unirep-mini-128"


def test_wrong_api_key_is_reported(tiny_model, server):
    with pytest.raises(ApiError, match="Invalid API Key"):
        PineconeStore(tiny_model, "auth", api_key="wrong", host=server.url)


def test_filter_translation():
    assert pinecone_filter([]) is None
    assert pinecone_filter([Condition("lang", "eq", "vi")]) == {"lang": {"$eq": "vi"}}
    assert pinecone_filter([Condition("year", "gte", 2000), Condition("lang", "in", ["vi", "en"])]) == {
        "$and": [{"year": {"$gte": 2000}}, {"lang": {"$in": ["vi", "en"]}}]}


# -- limits --------------------------------------------------------------------------------
def test_metadata_over_40kb_fails_by_id_and_the_rest_land(make_store):
    s = make_store()
    res = s.add(texts=["small one", "big one", "small two"], ids=["a", "big", "c"],
                metadatas=[{"n": 1}, {"notes": "x" * 41_000}, {"tags": ["p", "q"]}])
    assert sorted(res.added) == ["a", "c"]
    assert set(res.failed) == {"big"} and "40960 bytes" in res.failed["big"]
    assert s.count() == 2


def test_bad_metadata_values_are_refused_per_item(make_store):
    s = make_store()
    res = s.add(texts=["one", "two", "three", "four", "five"], ids=["ok", "nested", "null", "mixed", "key"],
                metadatas=[{"x": ["a", "b"]}, {"x": {"y": 1}}, {"x": None}, {"x": ["a", 1]}, {"_key": "k"}])
    assert res.added == ["ok"]
    assert "strings, numbers, booleans and lists of strings" in res.failed["nested"]
    assert "null" in res.failed["null"]
    assert "list" in res.failed["mixed"]
    assert "reserved" in res.failed["key"]
    assert s.search(text="one", k=1)[0].payload == {"x": ["a", "b"]}


def test_server_side_rejection_isolates_the_bad_record(make_store, server, monkeypatch):
    """Were the client check bypassed, Pinecone's own 400 fails the batch; the store retries
    the items one by one, so only the offending item fails."""
    s = make_store()
    monkeypatch.setattr(s, "_validate", lambda record: None)
    res = s.add(texts=["fine a", "too big", "fine b"], ids=["a", "big", "b"],
                metadatas=[{}, {"notes": "y" * 41_000}, {}])
    assert sorted(res.added) == ["a", "b"]
    assert "Metadata size is" in res.failed["big"] and "exceeds the limit of 40960" in res.failed["big"]


def test_large_batch_is_split_under_2mb(make_store, server):
    s = make_store()
    n = 150  # ~30 KB of text each: ~4.5 MB in one store batch
    texts = [f"{i} " + "lorem ipsum " * 2_500 for i in range(n)]
    server.clear_log()
    res = s.add_embeddings([f"d{i}" for i in range(n)], matryoshka_like(n, 32, seed=5), texts=texts)
    assert len(res.added) == n and not res.failed
    ups = server.requests("upsert", index=s.full_index_name)
    assert len(ups) >= 3, [u.body_bytes for u in ups]
    assert all(u.status == 200 and u.body_bytes <= 2_000_000 for u in ups)
    assert sum(u.vectors for u in ups) == n
    assert s.count() == n


def test_more_than_1000_vectors_are_split(make_store, server):
    s = make_store()
    s.write_batch_size = 2_500
    server.clear_log()
    vecs = matryoshka_like(2_500, 32, seed=6)
    assert len(s.add_embeddings([f"v{i}" for i in range(2_500)], vecs).added) == 2_500
    ups = server.requests("upsert", index=s.full_index_name)
    assert [u.vectors for u in ups] == [1000, 1000, 500]
    # existence checks fetch in URL-sized chunks
    server.clear_log()
    keys = [str(uuid.uuid4()) for _ in range(400)] + [id_to_uuid("v1")]
    assert s._existing(keys) == {id_to_uuid("v1")}
    fetches = server.requests("fetch")
    assert len(fetches) >= 3 and all(f.status == 200 for f in fetches)


def test_fake_enforces_the_real_limits(server):
    """The fake answers over-limit requests the way Pinecone does, so the adapter's limits are real."""
    pc = Pinecone(api_key=API_KEY, host=server.url)
    pc.indexes.create(name="limits", dimension=4, metric="cosine", timeout=-1)
    idx = pc.index(host=pc.indexes.describe("limits").host)
    try:
        with pytest.raises(PayloadTooLargeError, match="exceeds the maximum supported size of 2MB"):
            idx.upsert(vectors=[{"id": f"i{i}", "values": [1.0, 0, 0, 0], "metadata": {"t": "z" * 30_000}}
                                for i in range(80)])
        with pytest.raises(ApiError, match="maximum of 1000 vectors"):
            idx.upsert(vectors=[{"id": f"i{i}", "values": [1.0, 0, 0, 0]} for i in range(1001)])
        with pytest.raises(ApiError, match="exceeds the limit of 40960 bytes"):
            idx.upsert(vectors=[{"id": "m", "values": [1.0, 0, 0, 0], "metadata": {"t": "z" * 41_000}}])
        assert MAX_REQUEST_BYTES == 2 * 1024 * 1024
    finally:
        pc.indexes.delete("limits")
        pc.close()


def test_candidates_are_clamped_to_topk_limit(make_store):
    s = make_store()
    s.add(texts=["alpha beta", "gamma"], ids=["a", "g"])
    assert s.search(text="alpha beta", k=1, candidates=50_000)[0].id == "a"
    with pytest.raises(ValueError, match="topK limit of 10000"):
        s.search(text="alpha beta", k=20_000, candidates=20_000)


# -- namespaces, retries -------------------------------------------------------------------
def test_namespaces_are_isolated(make_store):
    a = make_store("nsiso", namespace="alpha")
    b = make_store("nsiso", namespace="beta")
    a.add(texts=["shared text", "only in alpha"], ids=["s", "a1"])
    b.add(texts=["shared text"], ids=["s"], metadatas=[{"side": "b"}])
    assert (a.count(), b.count()) == (2, 1)
    assert {h.id for h in b.search(text="only in alpha", k=5)} == {"s"}
    assert b.search(text="shared text", k=1)[0].payload == {"side": "b"}
    a.delete(["s"])
    assert (a.count(), b.count()) == (1, 1)
    b.clear()
    assert (a.count(), b.count()) == (1, 0)


def test_429_is_retried_and_succeeds(make_store, server):
    s = make_store()
    s.add(texts=["warm up"], ids=["w"])
    server.clear_log()
    server.inject("upsert", status=429, times=6)  # more than the SDK's own 4 attempts
    res = s.add(texts=["after throttling"], ids=["t"])
    assert res.added == ["t"] and not res.failed
    statuses = [r.status for r in server.requests("upsert")]
    assert statuses.count(429) == 6 and statuses[-1] == 200
    assert s.count() == 2
    assert s._is_transient(RateLimitError(message="slow down", status_code=429))
    assert not s._is_transient(ApiError(message="bad", status_code=400))


def test_503_on_search_is_absorbed_by_sdk_retry(make_store, server):
    s = make_store()
    s.add(texts=["x"], ids=["x"])
    server.inject("query", status=503, times=1)
    assert s.search(text="x", k=1)[0].id == "x"  # one 503: the SDK's retry absorbs it


# -- a real server -------------------------------------------------------------------------
needs_pinecone = pytest.mark.skipif(
    not (os.environ.get("PINECONE_HOST") and os.environ.get("PINECONE_API_KEY")),
    reason="set PINECONE_HOST and PINECONE_API_KEY to run against a real Pinecone",
)


class _ConsistentStore(PineconeStore):
    """Waits after each write until the namespace count shows it: real Pinecone's reads,
    ``describe_index_stats`` most of all, are eventually consistent."""

    wait_s = 90.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stored: set[str] = set()

    def _upsert(self, records):
        super()._upsert(records)
        self._stored.update(r.key for r in records)
        self._settle()

    def _delete(self, keys):
        super()._delete(keys)
        self._stored.difference_update(keys)
        self._settle()

    def _settle(self) -> None:
        deadline = time.monotonic() + self.wait_s
        delay = 0.25
        while super().count() != len(self._stored) and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(2.0, delay * 1.5)
        time.sleep(0.5)  # queries catch up a little after the stats


@pytest.fixture(scope="module")
def service_indexes(tiny_model):
    """One pair of indexes for the whole module (index creation is slow on a real server);
    each test gets a fresh namespace."""
    stores: dict[str, PineconeStore] = {}
    yield stores
    for s in stores.values():
        if not os.environ.get("PINECONE_KEEP_INDEXES"):
            s.drop()


@needs_pinecone
@pytest.mark.service
class TestPineconeService(StoreContract):
    """The contract on a real Pinecone: ``PINECONE_HOST=https://api.pinecone.io`` (or a private
    control plane) and ``PINECONE_API_KEY``. Indexes ``$PINECONE_TEST_INDEX-tiny-fusion-{8,32}``
    (default ``unirep-test``) are created once, each test uses a fresh namespace, and the indexes
    are deleted at the end unless ``PINECONE_KEEP_INDEXES`` is set."""

    @pytest.fixture
    def store(self, tiny_model, service_indexes):
        prefix = os.environ.get("PINECONE_TEST_INDEX", "unirep-test")
        s = _ConsistentStore(tiny_model, prefix, host=os.environ["PINECONE_HOST"],
                             namespace="t-" + uuid.uuid4().hex[:12])
        service_indexes.setdefault("main", s)
        yield s
        s.clear()
        if service_indexes["main"] is not s:
            s.close()
