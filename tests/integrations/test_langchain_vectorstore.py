"""``UniRepVectorStore``: LangChain's standard ``VectorStoreIntegrationTests`` on Qdrant local mode
and Milvus Lite, plus UniRep-specific behaviour (calibrated relevance scores, filters, images,
search by vector/image, retriever).

The standard suite runs twice per database:

* with the suite's own ``DeterministicFakeEmbedding`` (``get_embeddings()``, as the suite asks),
  through ``EmbeddingsModel``: the store holds the fake 6-d vectors, one size for both stages;
* with the tiny UniRep model: the real path (two vector sizes, 8-d coarse stage, 32-d full
  stage, calibrated scores). Its ranking assertions hold because the character-level tiny
  model ranks the identical text first for the suite's queries ("foo", "bar", "new foo").
"""
from __future__ import annotations

import itertools

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_tests.integration_tests import VectorStoreIntegrationTests  # noqa: E402

from unirep_integrations.langchain import (  # noqa: E402
    IMAGE_KEY, EmbeddingsModel, UniRepEmbeddings, UniRepVectorStore,
)
from tests.tiny_models import make_image  # noqa: E402

# The suite's async tests need pytest-asyncio: this mark, or ``asyncio_mode = "auto"`` in the
# pytest options (the mark on a sync test only raises a warning, silenced here).
pytestmark = [pytest.mark.asyncio, pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning")]

_names = itertools.count()


def _qdrant_cls():
    from unirep_integrations.qdrant import QdrantStore

    return QdrantStore


def _milvus_cls():
    from unirep_integrations.milvus import MilvusStore

    return MilvusStore


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def milvus_client(tmp_path_factory):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from pymilvus import MilvusClient

    client = MilvusClient(str(tmp_path_factory.mktemp("lc_milvus") / "m.db"))
    yield client
    client.close()


def _milvus_store(model, client):
    store = _milvus_cls()(model, client=client, collection=f"lc{next(_names)}", index="FLAT")
    return store


# -- the standard suite -------------------------------------------------------------------------
class TestQdrantFakeEmbeddings(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path):
        pytest.importorskip("qdrant_client")
        store = _qdrant_cls()(EmbeddingsModel(self.get_embeddings()), str(tmp_path / "q"), collection="lc")
        try:
            yield UniRepVectorStore(store)
        finally:
            store.close()


class TestMilvusFakeEmbeddings(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, milvus_client):
        store = _milvus_store(EmbeddingsModel(self.get_embeddings()), milvus_client)
        try:
            yield UniRepVectorStore(store)
        finally:
            milvus_client.drop_collection(store.collection)


class TestQdrantTinyUniRep(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tiny_model):
        pytest.importorskip("qdrant_client")
        store = _qdrant_cls()(tiny_model, ":memory:", collection="lc")
        try:
            yield UniRepVectorStore(store)
        finally:
            store.close()


class TestMilvusTinyUniRep(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tiny_model, milvus_client):
        store = _milvus_store(tiny_model, milvus_client)
        try:
            yield UniRepVectorStore(store)
        finally:
            milvus_client.drop_collection(store.collection)


# -- UniRep-specific behaviour ----------------------------------------------------------------
DOCS = [
    Document(page_content="a dog runs on the beach", metadata={"lang": "en", "year": 2001}),
    Document(page_content="con chó chạy trên bãi biển", metadata={"lang": "vi", "year": 2005}),
    Document(page_content="the red cat sleeps", metadata={"lang": "en", "year": 2010}),
    Document(page_content="xin chào thế giới", metadata={"lang": "vi", "year": 2020}),
]


@pytest.fixture
def vs(tiny_model):
    pytest.importorskip("qdrant_client")
    store = _qdrant_cls()(tiny_model, ":memory:", collection="extra")
    yield UniRepVectorStore(store)
    store.close()


def test_scores_are_the_calibrated_probability(vs, tiny_model):
    ids = vs.add_documents(DOCS)
    assert len(ids) == len(DOCS) and vs.store.count() == len(DOCS)
    with_score = vs.similarity_search_with_score("the red cat sleeps", k=4)
    relevance = vs.similarity_search_with_relevance_scores("the red cat sleeps", k=4)
    assert [d.id for d, _ in with_score] == [d.id for d, _ in relevance]
    assert [s for _, s in with_score] == [s for _, s in relevance]  # the score IS the relevance score
    assert with_score[0][0].page_content == "the red cat sleeps"
    q = tiny_model.encode(text=["the red cat sleeps"], task="query")
    d = tiny_model.encode(text=[with_score[0][0].page_content], task="document")
    assert with_score[0][1] == pytest.approx(float(tiny_model.score(q, d)[0, 0]), abs=1e-5)
    assert all(0.0 <= s <= 1.0 for _, s in with_score)
    assert [s for _, s in with_score] == sorted((s for _, s in with_score), reverse=True)


def test_relevance_threshold_and_retriever(vs):
    vs.add_documents(DOCS)
    top = vs.similarity_search_with_relevance_scores("a dog runs on the beach", k=4)
    cut = (top[0][1] + top[1][1]) / 2
    kept = vs.similarity_search_with_relevance_scores("a dog runs on the beach", k=4, score_threshold=cut)
    assert [d.id for d, _ in kept] == [top[0][0].id]
    retriever = vs.as_retriever(search_kwargs={"k": 2, "filter": {"lang": "vi"}})
    docs = retriever.invoke("con chó chạy trên bãi biển")
    assert [d.page_content for d in docs][0] == "con chó chạy trên bãi biển"
    assert all(d.metadata["lang"] == "vi" for d in docs)
    thresh = vs.as_retriever(search_type="similarity_score_threshold",
                             search_kwargs={"k": 4, "score_threshold": cut})
    assert [d.id for d in thresh.invoke("a dog runs on the beach")] == [top[0][0].id]


def test_filter_language_passes_through(vs):
    vs.add_documents(DOCS)
    docs = vs.similarity_search("hello", k=10, filter={"year": {"gte": 2005, "lt": 2020}})
    assert sorted(d.metadata["year"] for d in docs) == [2005, 2010]
    assert vs.similarity_search("hello", k=10, filter={"lang": {"in": ["vi"]}, "year": 2020})[0].metadata == \
        {"lang": "vi", "year": 2020}
    with pytest.raises(ValueError, match="unknown operator"):
        vs.similarity_search("hello", filter={"year": {"between": [1, 2]}})


def test_search_by_vector_matches_search_by_text(vs):
    vs.add_documents(DOCS)
    q = vs.embeddings.embed_query("the red cat sleeps")
    assert isinstance(vs.embeddings, UniRepEmbeddings)
    assert [d.id for d in vs.similarity_search_by_vector(q, k=3)] == \
        [d.id for d in vs.similarity_search("the red cat sleeps", k=3)]


def test_add_images_and_search_by_image(vs, tmp_path):
    paths = []
    for seed in range(3):
        p = tmp_path / f"img{seed}.png"
        make_image(seed).save(p)
        paths.append(str(p))
    vs.add_documents(DOCS[:2])
    ids = vs.add_images(paths, metadatas=[{"n": i} for i in range(3)])
    assert len(set(ids)) == 3
    assert vs.add_images(paths) == ids  # content-hash ids: re-adding stores nothing new
    assert vs.store.count() == 5
    docs = vs.similarity_search_by_image(paths[1], k=2)
    assert docs[0].id == ids[1] and docs[0].metadata == {"n": 1, IMAGE_KEY: paths[1]}
    assert docs[0].page_content == ""
    got = vs.get_by_ids([ids[2]])
    assert got == [Document(id=ids[2], page_content="", metadata={"n": 2, IMAGE_KEY: paths[2]})]
    # an explicit id that exists is replaced (LangChain's upsert semantics)
    vs.add_images([paths[0]], metadatas=[{"n": 9}], ids=[ids[2]])
    assert vs.get_by_ids([ids[2]])[0].metadata == {"n": 9, IMAGE_KEY: paths[0]}
    assert vs.store.count() == 5


def test_bad_input_is_a_clear_error(vs, tmp_path):
    with pytest.raises(ValueError, match="reserved keys"):
        vs.add_texts(["x"], metadatas=[{"_text": "y"}])
    with pytest.raises(ValueError, match="item 1"):
        vs.add_texts(["fine", ""])
    with pytest.raises(ValueError, match="metadatas has 1 entries for 2 items"):
        vs.add_texts(["a", "b"], metadatas=[{}])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="1 of 1 items could not be stored"):
        vs.add_images([str(bad)])
    with pytest.raises(ValueError, match="needs ids"):
        vs.delete()
    assert vs.store.count() == 0

def test_from_texts_with_unirep_embeddings(tiny_model, tmp_path):
    pytest.importorskip("qdrant_client")
    emb = UniRepEmbeddings(model=tiny_model, dimensions=16)
    vs = UniRepVectorStore.from_texts(["hello world", "xin chào"], emb, metadatas=[{"i": 0}, {"i": 1}],
                                      db=f"qdrant:{tmp_path / 'q'}", collection="ft")
    try:
        assert vs.store.full_dim == 16 and vs.store.coarse_dim == 8
        docs = vs.similarity_search("hello world", k=1)
        assert docs[0].page_content == "hello world" and docs[0].metadata == {"i": 0}
        assert len(vs.embeddings.embed_query("x")) == 16
    finally:
        vs.store.close()


async def test_async_variants(vs):
    ids = await vs.aadd_documents(DOCS, ids=["a", "b", "c", "d"])
    assert ids == ["a", "b", "c", "d"]
    docs = await vs.asimilarity_search("the red cat sleeps", k=1)
    assert docs[0].id == "c"
    scored = await vs.asimilarity_search_with_relevance_scores("the red cat sleeps", k=2)
    assert scored[0][0].id == "c" and 0 <= scored[0][1] <= 1
    await vs.adelete(["c"])
    assert {d.id for d in await vs.aget_by_ids(["a", "c"])} == {"a"}
