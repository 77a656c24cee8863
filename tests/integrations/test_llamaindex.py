"""LlamaIndex: ``UniRepEmbedding`` as both ``embed_model`` and ``image_embed_model`` of
``MultiModalVectorStoreIndex`` (``SimpleVectorStore`` and llama-index-vector-stores-qdrant on Qdrant
local mode), and ``UniRepRetriever`` over a ``TwoStageStore``.

About text->image with a tiny *random* model: no text is "about" any image, so no test can
expect a semantically right image. What these tests pin down instead is the plumbing that makes
text->image retrieval work with a trained model: the index embeds the text query with
``UniRepEmbedding`` (task ``query``) and the images with ``UniRepEmbedding``, in one space, and
ranks by that similarity. So the expected first image is computed directly from the model
(argmax of its cosine, with a margin so float noise cannot decide it) and the score must equal
that cosine: a CLIP default, the wrong task, a text embedding of the path or a different
vector size would all break it. Image->image with the same image is a fair test of any model
(cosine 1), and so is text->text with the identical text (checked for the character-level tiny
model, margin > 0.01).
"""
from __future__ import annotations

import asyncio
import io
import itertools

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Settings, StorageContext  # noqa: E402
from llama_index.core.indices import MultiModalVectorStoreIndex  # noqa: E402
from llama_index.core.schema import Document, ImageDocument, ImageNode, QueryBundle, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterOperator, MetadataFilter, MetadataFilters,
)

from unirep_integrations.llamaindex import UniRepEmbedding, UniRepRetriever, to_store_filter  # noqa: E402
from tests.tiny_models import make_image  # noqa: E402

TEXTS = ["a dog runs on the beach", "the red cat sleeps", "xin chào thế giới", "hello world program"]
QUERIES = ["a red dog", "a blue cat", "the sun", "a bicycle", "hello world", "xin chao"]
_names = itertools.count()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("li_images")
    paths = []
    for seed in range(5):
        paths.append(str(folder / f"img{seed}.png"))
        make_image(seed).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def emb(tiny_model):
    return UniRepEmbedding(tiny_model)


@pytest.fixture(scope="module")
def text_to_image_case(tiny_model, images):
    """(query, expected image index, cosine) with the widest top-1 margin under the tiny model."""
    q = tiny_model.encode(text=QUERIES, task="query")
    sims = tiny_model.similarity(q, tiny_model.encode(images=images))
    order = np.sort(sims, axis=1)
    best = int(np.argmax(order[:, -1] - order[:, -2]))
    assert order[best, -1] - order[best, -2] > 0.01
    return QUERIES[best], int(np.argmax(sims[best])), float(sims[best].max())


def _documents(images):
    # Image documents need some metadata (file_path) or text: without either LlamaIndex skips
    # them as "missing content" (see test_image_documents_without_metadata_are_dropped).
    return [Document(text=t) for t in TEXTS] + [ImageDocument(image_path=p, metadata={"file_path": p})
                                                  for p in images]


def _check_retrievals(index, tiny_model, images, case):
    retriever = index.as_retriever(similarity_top_k=2, image_similarity_top_k=2)
    # text -> text (identical text first)
    text_hits = retriever.text_retrieve("the red cat sleeps")
    assert isinstance(text_hits[0].node, TextNode) and text_hits[0].node.get_content() == "the red cat sleeps"
    q = tiny_model.encode(text=["the red cat sleeps"], task="query")
    d = tiny_model.encode(text=["the red cat sleeps"], task="document")
    assert text_hits[0].score == pytest.approx(float(tiny_model.similarity(q, d)[0, 0]), abs=1e-4)
    # text -> image (the model's own ranking, see the module docstring)
    query, expected, cosine = case
    image_hits = retriever.text_to_image_retrieve(query)
    assert isinstance(image_hits[0].node, ImageNode)
    assert image_hits[0].node.image_path == images[expected]
    assert image_hits[0].score == pytest.approx(cosine, abs=1e-4)
    # image -> image (the same image first)
    same = retriever.image_to_image_retrieve(images[3])
    assert same[0].node.image_path == images[3] and same[0].score == pytest.approx(1.0, abs=1e-4)
    # retrieve() returns both kinds
    both = retriever.retrieve(query)
    assert {type(n.node) for n in both} == {TextNode, ImageNode}


# -- UniRepEmbedding ----------------------------------------------------------------------------
def test_embedding_matches_the_model(tiny_model, images):
    emb = UniRepEmbedding(tiny_model, dimensions=16)
    assert emb.size == 16 and emb.class_name() == "UniRepEmbedding"
    q = emb.get_query_embedding("hello world")
    t = emb.get_text_embedding("hello world")
    np.testing.assert_allclose(q, tiny_model.encode(text=["hello world"], task="query", embedding_dim=16)[0],
                               atol=1e-5)
    np.testing.assert_allclose(t, tiny_model.encode(text=["hello world"], task="document", embedding_dim=16)[0],
                               atol=1e-5)
    assert not np.allclose(q, t)
    batch = emb.get_text_embedding_batch(TEXTS)
    np.testing.assert_allclose(batch, tiny_model.encode(text=TEXTS, task="document", embedding_dim=16), atol=1e-4)
    expected = tiny_model.encode(images=images[:2], embedding_dim=16)
    np.testing.assert_allclose(emb.get_image_embedding_batch(images[:2]), expected, atol=1e-4)
    with open(images[0], "rb") as fh:  # LlamaIndex passes BytesIO for base64 image nodes
        np.testing.assert_allclose(emb.get_image_embedding(io.BytesIO(fh.read())), expected[0], atol=1e-4)


def test_async_variants(emb, tiny_model, images):
    async def run():
        return await asyncio.gather(
            emb.aget_query_embedding("hello"), emb.aget_text_embedding("hello"),
            emb.aget_text_embedding_batch(TEXTS), emb.aget_image_embedding(images[0]),
            emb.aget_image_embedding_batch(images[:2]))

    q, t, batch, img, imgs = asyncio.run(run())
    assert q == pytest.approx(emb.get_query_embedding("hello"), abs=1e-5)
    assert t == pytest.approx(emb.get_text_embedding("hello"), abs=1e-5)
    assert len(batch) == len(TEXTS) and len(imgs) == 2
    assert img == pytest.approx(imgs[0], abs=1e-4)


def test_bad_arguments(tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"allowed sizes: \[8, 16, 32\]"):
        UniRepEmbedding(tiny_model, dimensions=10)
    with pytest.raises(ValueError, match="UniRep instance"):
        UniRepEmbedding(3.5)
    lazy = UniRepEmbedding(str(tmp_path / "nothing-here"))  # lazy: fails at first use, clearly
    with pytest.raises(ValueError, match="unknown model|no config.json"):
        lazy.get_query_embedding("x")


# -- MultiModalVectorStoreIndex -----------------------------------------------------------------
def test_multimodal_index_simple_vector_store(emb, tiny_model, images, text_to_image_case):
    index = MultiModalVectorStoreIndex.from_documents(_documents(images), embed_model=emb, image_embed_model=emb)
    assert index.image_embed_model is emb
    _check_retrievals(index, tiny_model, images, text_to_image_case)


def test_multimodal_index_qdrant_local(emb, tiny_model, images, text_to_image_case, tmp_path):
    pytest.importorskip("llama_index.vector_stores.qdrant")
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    path = str(tmp_path / "qdrant")
    client = QdrantClient(path=path)
    storage = StorageContext.from_defaults(vector_store=QdrantVectorStore("text", client=client),
                                           image_store=QdrantVectorStore("images", client=client))
    with pytest.warns(UserWarning, match="Payload indexes have no effect"):  # local mode says so
        index = MultiModalVectorStoreIndex.from_documents(_documents(images), storage_context=storage,
                                                          embed_model=emb, image_embed_model=emb)
    _check_retrievals(index, tiny_model, images, text_to_image_case)
    client.close()
    # reopen from disk: the index comes back from the two collections
    client = QdrantClient(path=path)
    index = MultiModalVectorStoreIndex.from_vector_store(
        QdrantVectorStore("text", client=client), embed_model=emb,
        image_vector_store=QdrantVectorStore("images", client=client), image_embed_model=emb)
    _check_retrievals(index, tiny_model, images, text_to_image_case)
    client.close()


def test_settings_embed_model_is_used(emb, images, monkeypatch):
    monkeypatch.setattr(Settings, "_embed_model", emb)  # restored after the test
    index = MultiModalVectorStoreIndex.from_documents(
        [Document(text=t) for t in TEXTS], image_embed_model=emb)
    assert index._embed_model is emb
    assert index.as_retriever(similarity_top_k=1).text_retrieve("hello world program")[0].node.get_content() == \
        "hello world program"


def test_image_documents_without_metadata_are_dropped(emb, images):
    bare = MultiModalVectorStoreIndex.from_documents([ImageDocument(image_path=p) for p in images],
                                                     embed_model=emb, image_embed_model=emb)
    assert bare.image_vector_store.data.embedding_dict == {}  # skipped: give them file_path metadata
    kept = MultiModalVectorStoreIndex.from_documents(
        [ImageDocument(image_path=p, metadata={"file_path": p}) for p in images],
        embed_model=emb, image_embed_model=emb)
    assert len(kept.as_retriever(image_similarity_top_k=10).image_to_image_retrieve(images[0])) == len(images)


# -- UniRepRetriever over a TwoStageStore -------------------------------------------------------
@pytest.fixture
def store(tiny_model, images):
    pytest.importorskip("qdrant_client")
    from unirep_integrations.qdrant import QdrantStore

    s = QdrantStore(tiny_model, ":memory:", collection=f"li{next(_names)}")
    s.add(texts=TEXTS, metadatas=[{"kind": "text", "n": i} for i in range(len(TEXTS))])
    s.add(images=images, metadatas=[{"kind": "image", "n": i} for i in range(len(images))])
    yield s
    s.close()


def test_retriever_nodes_and_calibrated_scores(store, tiny_model, images, text_to_image_case):
    retriever = UniRepRetriever(store, similarity_top_k=3)
    hits = retriever.retrieve("the red cat sleeps")
    assert isinstance(hits[0].node, TextNode) and not isinstance(hits[0].node, ImageNode)
    assert hits[0].node.get_content() == "the red cat sleeps" and hits[0].node.metadata == {"kind": "text", "n": 1}
    q = tiny_model.encode(text=["the red cat sleeps"], task="query")
    d = tiny_model.encode(text=["the red cat sleeps"], task="document")
    assert hits[0].score == pytest.approx(float(tiny_model.score(q, d)[0, 0]), abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # text -> image among images only (the model's own ranking, see the module docstring)
    query, expected, _ = text_to_image_case
    only_images = UniRepRetriever(store, similarity_top_k=2, filters={"kind": "image"})
    top = only_images.retrieve(query)[0]
    assert isinstance(top.node, ImageNode) and top.node.image_path == images[expected]
    assert top.node.metadata == {"kind": "image", "n": expected}
    # image -> image
    same = retriever.retrieve_by_image(images[2])[0]
    assert same.node.image_path == images[2] and same.node.node_id == store.search(image=images[2], k=1)[0].id


def test_retriever_filters_and_async(store):
    filters = MetadataFilters(filters=[MetadataFilter(key="kind", value="text"),
                                       MetadataFilter(key="n", value=2, operator=FilterOperator.GTE)])
    assert to_store_filter(filters) == {"kind": "text", "n": {"gte": 2}}
    retriever = UniRepRetriever(store, similarity_top_k=10, filters=filters)
    got = asyncio.run(retriever.aretrieve("hello"))
    assert sorted(n.node.metadata["n"] for n in got) == [2, 3]
    with pytest.raises(ValueError, match="not supported"):
        UniRepRetriever(store, filters=MetadataFilters(filters=[
            MetadataFilter(key="kind", value="x", operator=FilterOperator.NE)]))
    vector = store.model.encode(text=["hello world program"], task="query")[0].tolist()
    by_vector = UniRepRetriever(store, similarity_top_k=1).retrieve(QueryBundle(query_str="", embedding=vector))
    assert by_vector[0].node.get_content() == "hello world program"
