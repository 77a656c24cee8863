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
