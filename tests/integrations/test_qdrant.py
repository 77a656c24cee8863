import pytest

pytest.importorskip("qdrant_client")

from unirep_integrations.qdrant import QdrantStore  # noqa: E402
from tests.integrations.contract import StoreContract  # noqa: E402


class TestQdrantMemory(StoreContract):
    @pytest.fixture
    def store(self, tiny_model):
        s = QdrantStore(tiny_model, ":memory:", collection="contract")
        yield s
        s.close()


class TestQdrantLocalPath(StoreContract):
    """Local mode on disk, with the coarse vector scalar-quantized."""

    @pytest.fixture
    def store(self, tiny_model, tmp_path):
        s = QdrantStore(tiny_model, str(tmp_path / "q"), collection="contract", quantization="scalar")
        yield s
        s.close()


def test_reopen_local_path_keeps_data(tiny_model, tmp_path):
    s = QdrantStore(tiny_model, str(tmp_path / "q"))
    s.add(texts=["persisted text"], ids=["p1"])
    s.close()
    again = QdrantStore(tiny_model, str(tmp_path / "q"))
    try:
        assert again.count() == 1
        assert again.search(text="persisted text", k=1)[0].id == "p1"
    finally:
        again.close()


def test_collection_of_other_sizes_is_a_clear_error(tiny_model, tmp_path):
    s = QdrantStore(tiny_model, str(tmp_path / "q"), coarse_dim=16)
    s.close()
    with pytest.raises(ValueError, match="use another collection name"):
        QdrantStore(tiny_model, str(tmp_path / "q"), coarse_dim=8).close()


def test_bad_quantization_name(tiny_model):
    with pytest.raises(ValueError, match="quantization='pq'"):
        QdrantStore(tiny_model, ":memory:", quantization="pq")


@pytest.mark.parametrize("quantization", [None, "scalar"])
def test_local_mode_rescoring_equals_qdrant_prefetch(tiny_model, tmp_path, quantization):
    """Local mode rescores the candidates itself (Qdrant's local re-query scans every point);
    the hits must be the ones Qdrant's own prefetch + re-query returns on the same data."""
    import numpy as np

    rng = np.random.default_rng(0)
    s = QdrantStore(tiny_model, str(tmp_path / "q"), quantization=quantization)
    try:
        assert s._local
        n = 300
        vectors = rng.normal(size=(n, s.full_dim)).astype(np.float32)
        s.add_embeddings([f"d{i}" for i in range(n)], vectors, [{"group": i % 3} for i in range(n)])
        for q in rng.normal(size=(5, s.full_dim)).astype(np.float32):
            for flt in (None, {"group": 1}):
                ours = s.search_vector(q, k=7, candidates=40, filter=flt)
                s._local = False  # the one-request path: Qdrant's prefetch + re-query
                try:
                    theirs = s.search_vector(q, k=7, candidates=40, filter=flt)
                finally:
                    s._local = True
                assert [h.id for h in ours] == [h.id for h in theirs]
                assert np.allclose([h.similarity for h in ours], [h.similarity for h in theirs], atol=1e-5)
                if flt:
                    assert all(h.payload["group"] == 1 for h in ours)
    finally:
        s.close()
