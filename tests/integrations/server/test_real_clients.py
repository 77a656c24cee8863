"""Real clients against a real server on 127.0.0.1: the OpenAI SDK and Milvus Lite's TEXTEMBEDDING
Function (Milvus Lite calls the server from its own code over loopback)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.integrations.server.conftest import API_KEY


@pytest.fixture(scope="module")
def sdk(live):
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=f"{live.url}/v1", api_key=API_KEY, max_retries=0, timeout=30) as client:
        yield client


def test_openai_sdk_default_base64(sdk, live, tiny_model):
    texts = ["hello world", "a red cat on the mat"]
    res = sdk.embeddings.create(model=tiny_model.name, input=texts)  # the SDK asks for base64 and decodes it
    assert res.model == tiny_model.name and res.object == "list"
    got = np.array([d.embedding for d in res.data], dtype=np.float32)
    np.testing.assert_allclose(got, tiny_model.encode(text=texts), atol=1e-6)
    assert res.usage.prompt_tokens == res.usage.total_tokens > 0


def test_openai_sdk_dimensions_float_and_extra_body(sdk, tiny_model):
    res = sdk.embeddings.create(model="whatever", input="find a cat", dimensions=16, encoding_format="float",
                                extra_body={"task": "query"})
    np.testing.assert_allclose(res.data[0].embedding, tiny_model.encode(text="find a cat", task="query",
                                                                        embedding_dim=16)[0], atol=1e-5)
    assert len(sdk.embeddings.create(model="m", input=["a", "b"], dimensions=8).data[1].embedding) == 8


def test_openai_sdk_errors(sdk, live):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        sdk.embeddings.create(model="m", input="x", dimensions=12)
    assert "allowed sizes: [8, 16, 32]" in e.value.message and e.value.code == "invalid_dimensions"
    with pytest.raises(openai.UnprocessableEntityError, match="token-id arrays"):
        sdk.embeddings.create(model="m", input=[[1, 2, 3]])
    with openai.OpenAI(base_url=f"{live.url}/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.embeddings.create(model="m", input="x")
    assert [m.id for m in sdk.models.list()] == [live.app.state.service.model_name]


def test_milvus_lite_text_embedding_function(live, tiny_model, tmp_path):
    pymilvus = pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from pymilvus import DataType, MilvusClient

    dim = 16
    try:
        from unirep_integrations.milvus import embedding_function
    except ImportError:  # pragma: no cover - the registration helper lives in the Milvus adapter
        embedding_function = None
    if embedding_function is not None:
        fn = embedding_function("unirep", base_url=f"{live.url}/v1", model_name=tiny_model.name, dimensions=dim,
                                api_key=API_KEY)
    else:  # pragma: no cover
        fn = pymilvus.Function(name="unirep", function_type=pymilvus.FunctionType.TEXTEMBEDDING,
                               input_field_names=["text"], output_field_names=["vector"],
                               params={"provider": "openai", "model_name": tiny_model.name,
                                       "base_url": f"{live.url}/v1", "api_key": API_KEY, "dimensions": dim})
    client = MilvusClient(str(tmp_path / "fn.db"))
    try:
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("text", DataType.VARCHAR, max_length=2000)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_function(fn)
        index = client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type="COSINE")
        client.create_collection("docs", schema=schema, index_params=index)
        docs = ["a red cat sleeps on the mat", "the dog runs on the beach", "hello world", "xin chao the gioi"]
        before = live.app.state.service.batcher.stats.items
        client.insert("docs", [{"id": i, "text": t} for i, t in enumerate(docs)])  # raw text: the server embeds it
        assert live.app.state.service.batcher.stats.items - before == len(docs)
        stored = client.query("docs", filter="id >= 0", output_fields=["vector"])
        vectors = np.array([r["vector"] for r in sorted(stored, key=lambda r: r["id"])], dtype=np.float32)
        np.testing.assert_allclose(vectors, tiny_model.encode(text=docs, embedding_dim=dim), atol=1e-5)
        hits = client.search("docs", data=["the dog runs on the beach"], anns_field="vector", limit=3,
                             output_fields=["text"])[0]
        assert hits[0]["entity"]["text"] == "the dog runs on the beach"
        assert hits[0]["distance"] == pytest.approx(1.0, abs=1e-4)
        expected = tiny_model.similarity(tiny_model.encode(text=["the dog runs on the beach"], embedding_dim=dim),
                                         tiny_model.encode(text=docs, embedding_dim=dim))[0]
        assert [h["id"] for h in hits] == list(np.argsort(-expected)[:3])
    finally:
        client.close()
