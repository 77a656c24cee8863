"""The one contract every ``TwoStageStore`` passes. A test module subclasses ``StoreContract``
and provides a ``store`` fixture that yields an empty store over ``tiny_model``.

Model-made vectors test the write/read paths; the recall test uses synthetic vectors with a
decaying spectrum (what Matryoshka training produces: most variance in the leading
dimensions) through ``add_embeddings``/``search_vector``, because a tiny random model has no
Matryoshka structure to test a database's cascade with.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

from unirep_integrations.base import AddResult, content_id, matches, parse_filter
from tests.tiny_models import make_image

DOCS = [
    ("a dog runs on the beach", {"lang": "en", "year": 2001, "topic": "pets"}),
    ("con chó chạy trên bãi biển", {"lang": "vi", "year": 2005, "topic": "pets"}),
    ("the red cat sleeps", {"lang": "en", "year": 2010, "topic": "pets"}),
    ("hello world program", {"lang": "en", "year": 2015, "topic": "code"}),
    ("xin chào thế giới", {"lang": "vi", "year": 2020, "topic": "code"}),
    ("a blue bicycle", {"lang": "en", "year": 2024, "topic": "sport"}),
]


def matryoshka_like(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors whose per-dimension std decays like a trained Matryoshka embedding's."""
    rng = np.random.default_rng(seed)
    scale = np.exp(-np.arange(dim) / (dim / 6.0))
    v = rng.standard_normal((n, dim)) * scale
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    make_image(seed).save(buf, format="PNG")
    return buf.getvalue()


class StoreContract:
    """Tests every adapter must pass. Subclasses define the ``store`` fixture."""

    # -- basic lifecycle --------------------------------------------------------------------
    def test_add_search_count_delete(self, store):
        texts = [t for t, _ in DOCS]
        res = store.add(texts=texts, metadatas=[m for _, m in DOCS])
        assert isinstance(res, AddResult) and len(res.added) == len(DOCS) and not res.failed
        assert store.count() == len(DOCS)
        hits = store.search(text=texts[2], k=3)
        assert 1 <= len(hits) <= 3
        assert hits[0].text == texts[2]
        assert hits[0].payload == DOCS[2][1]
        assert all(0.0 <= h.score <= 1.0 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        # similarity is the full-vector cosine of query and document embeddings, score its calibration
        q = store.model.encode(text=texts[2], task="query", embedding_dim=store.full_dim)
        d = store.model.encode(text=texts[2], task="document", embedding_dim=store.full_dim)
        assert hits[0].similarity == pytest.approx(float(store.model.similarity(q, d)[0, 0]), abs=1e-4)
        assert hits[0].score == pytest.approx(float(store.model.score(q, d)[0, 0]), abs=1e-4)
        store.delete([res.added[2]])
        assert store.count() == len(DOCS) - 1
        assert all(h.id != res.added[2] for h in store.search(text=texts[2], k=len(DOCS)))

    def test_readd_is_idempotent(self, store):
        texts = [t for t, _ in DOCS]
        first = store.add(texts=texts)
        again = store.add(texts=texts)
        assert sorted(again.skipped) == sorted(first.added) and not again.added
        assert store.count() == len(DOCS)
        assert first.added[0] == content_id(store.model.name, texts[0], [])
        # explicit ids: same id twice in one call stores it once
        res = store.add(texts=["x one", "x two"], ids=["same", "same"])
        assert res.added == ["same"] and res.skipped == ["same"]
        assert store.count() == len(DOCS) + 1

    def test_explicit_ids_and_metadata_round_trip(self, store):
        meta = {"lang": "vi", "year": 2024, "rating": 4.5, "ok": True, "tags": "a,b"}
        store.add(texts=["một văn bản tiếng Việt"], metadatas=[meta], ids=["doc-42"])
        hit = store.search(text="một văn bản tiếng Việt", k=1)[0]
        assert hit.id == "doc-42"
        assert hit.payload == meta
        got = store.get(["doc-42", "no-such-id"])
        assert [(h.id, h.payload, h.text) for h in got] == [("doc-42", meta, "một văn bản tiếng Việt")]
        store.delete(["doc-42"])
        assert store.count() == 0
        assert store.get(["doc-42"]) == []

    @pytest.mark.parametrize(
        "flt",
        [
            {"lang": "vi"},
            {"lang": {"in": ["vi", "xx"]}},
            {"year": {"gte": 2005, "lt": 2020}},
            {"year": {"gt": 2005}, "lang": "en"},
            {"topic": {"eq": "code"}, "year": {"lte": 2015}},
        ],
    )
    def test_filters(self, store, flt):
        store.add(texts=[t for t, _ in DOCS], metadatas=[m for _, m in DOCS])
        hits = store.search(text="a dog", k=10, filter=flt)
        conditions = parse_filter(flt)
        expected = {t for t, m in DOCS if matches(m, conditions)}
        assert {h.text for h in hits} == expected
        assert all(matches(h.payload, conditions) for h in hits)

    def test_text_image_and_text_image_items(self, store, tmp_path):
        path = tmp_path / "pic.png"
        make_image(7).save(path)
        res = store.add(texts=["just text", None, "caption and picture"],
                        images=[None, str(path), [_png(8), _png(9)]],
                        metadatas=[{"kind": "t"}, {"kind": "i"}, {"kind": "ti"}])
        assert len(res.added) == 3 and not res.failed
        by_image = store.search(image=str(path), k=1)[0]
        assert by_image.payload == {"kind": "i"} and by_image.source == str(path)
        both = store.search(text="caption and picture", image=[_png(8), _png(9)], k=1)[0]
        assert both.payload == {"kind": "ti"}

    def test_bad_items_are_reported_and_the_rest_land(self, store):
        res = store.add(texts=["fine one", "", "fine two", None],
                        images=[None, None, None, b"this is not an image"],
                        ids=["a", "b", "c", "d"])
        assert sorted(res.added) == ["a", "c"]
        assert set(res.failed) == {"b", "d"}
        assert "cannot be decoded" in res.failed["d"]
        assert store.count() == 2

    def test_bad_arguments(self, store):
        with pytest.raises(ValueError, match="different lengths"):
            store.add(texts=["a", "b"], metadatas=[{}])
        with pytest.raises(ValueError, match="unknown operator"):
            store.search(text="a", filter={"year": {"between": [1, 2]}})
        with pytest.raises(ValueError, match="k must be a positive integer"):
            store.search(text="a", k=0)
        res = store.add(texts=["x"], metadatas=[{"_id": "evil"}])
        assert "reserved" in next(iter(res.failed.values()))

    # -- two-stage behaviour ---------------------------------------------------------------
    def test_two_stage_equals_exact_when_candidates_cover_collection(self, store):
        vecs = matryoshka_like(300, store.model.dim, seed=1)
        ids = [f"v{i}" for i in range(len(vecs))]
        store.add_embeddings(ids, vecs)
        queries = matryoshka_like(10, store.model.dim, seed=2)
        for q in queries:
            hits = store.search_vector(q, k=10, candidates=len(vecs))
            exact = np.argsort(-(vecs @ q))[:10]
            assert [h.id for h in hits] == [ids[i] for i in exact]
            np.testing.assert_allclose([h.similarity for h in hits], (vecs @ q)[exact], atol=1e-4)

    def test_two_stage_recall_on_5000_items(self, store):
        vecs = matryoshka_like(5000, store.model.dim, seed=3)
        ids = [f"v{i}" for i in range(len(vecs))]
        store.add_embeddings(ids, vecs)
        assert store.count() == 5000
        queries = matryoshka_like(50, store.model.dim, seed=4)
        recalls = []
        for q in queries:
            got = {h.id for h in store.search_vector(q, k=10, candidates=100)}
            exact = {ids[i] for i in np.argsort(-(vecs @ q))[:10]}
            recalls.append(len(got & exact) / 10)
        recall = float(np.mean(recalls))
        print(f"{type(store).__name__}: two-stage recall@10 on 5000 items = {recall:.3f}")
        assert recall >= 0.95
