"""TEI facade (/embed, /rerank, /info) and the rerank facade (/v1/rerank, /v1/score)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.integrations.server.conftest import data_url, png_bytes

DOCS = ["a red cat sleeps on the mat", "the dog runs on the beach", "hello world", "a cat"]


def test_tei_embed(client, tiny_model):
    r = client.post("/embed", json={"inputs": ["hello world", "a cat"]})
    assert r.status_code == 200
    np.testing.assert_allclose(np.array(r.json()), tiny_model.encode(text=["hello world", "a cat"]), atol=1e-5)
    one = client.post("/embed", json={"inputs": "a cat", "dimensions": 8, "prompt_name": "query", "normalize": True})
    np.testing.assert_allclose(np.array(one.json()), tiny_model.encode(text="a cat", task="query", embedding_dim=8),
                               atol=1e-5)


def test_tei_truncate(client, tiny_model):
    long_text = "hello world " * 80  # ~160 tokens, over the tiny model's 128
    refused = client.post("/embed", json={"inputs": [long_text]})
    assert refused.status_code == 413
    body = refused.json()
    assert body["error_type"] == "Validation" and "over the model's limit of 128" in body["error"]
    cut = client.post("/embed", json={"inputs": [long_text], "truncate": True})
    assert cut.status_code == 200
    np.testing.assert_allclose(np.array(cut.json()), tiny_model.encode(text=[long_text]), atol=1e-5)


@pytest.mark.parametrize("body, status, fragment", [
    ({"inputs": [1, 2]}, 422, "token-id arrays"),
    ({"inputs": "x", "dimensions": 5}, 400, "allowed sizes: [8, 16, 32]"),
    ({"inputs": "x", "truncation_direction": "left"}, 422, "truncation_direction"),
    ({"inputs": [{"text": "x"}]}, 422, "item 0 is object; expected a string"),
    ({"inputs": ""}, 422, "text is empty"),
])
def test_tei_errors(client, body, status, fragment):
    r = client.post("/embed", json=body)
    assert r.status_code == status
    assert set(r.json()) == {"error", "error_type"} and fragment in r.json()["error"]


def test_tei_rerank_sorted_by_model_score(client, tiny_model):
    q = tiny_model.encode(text=["cat"], task="query")
    d = tiny_model.encode(text=DOCS, task="document")
    expected = tiny_model.score(q, d)[0]
    r = client.post("/rerank", json={"query": "cat", "texts": DOCS, "return_text": True})
    assert r.status_code == 200
    ranks = r.json()
    assert [x["index"] for x in ranks] == list(np.argsort(-expected, kind="stable"))
    for x in ranks:
        assert x["score"] == pytest.approx(float(expected[x["index"]]), abs=1e-5)
        assert x["text"] == DOCS[x["index"]]
    raw = client.post("/rerank", json={"query": "cat", "texts": DOCS, "raw_scores": True}).json()
    sims = tiny_model.similarity(q, d)[0]
    assert all("text" not in x for x in raw)
    assert [x["index"] for x in raw] == [x["index"] for x in ranks]
    for x in raw:
        assert x["score"] == pytest.approx(float(sims[x["index"]]), abs=1e-5)
    empty = client.post("/rerank", json={"query": "cat", "texts": []})
    assert empty.status_code == 422 and empty.json()["error_type"] == "Validation"


def test_tei_info(client, tiny_model):
    info = client.get("/info").json()
    assert info["model_id"] == tiny_model.name and info["dimensions"] == [8, 16, 32]
    assert info["max_input_length"] == 128 and info["max_batch_requests"] == 32
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}


def test_v1_rerank(client, tiny_model):
    q = tiny_model.encode(text=["cat"], task="query", embedding_dim=16)
    d = tiny_model.encode(text=DOCS, task="document", embedding_dim=16)
    expected = tiny_model.score(q, d)[0]
    docs = [DOCS[0], {"text": DOCS[1]}, DOCS[2], {"text": DOCS[3]}]
    r = client.post("/v1/rerank", json={"query": "cat", "documents": docs, "top_n": 3, "return_documents": True,
                                        "dimensions": 16, "model": "unirep"})
    assert r.status_code == 200
    body = r.json()
    order = list(np.argsort(-expected, kind="stable"))[:3]
    assert [x["index"] for x in body["results"]] == order
    for x in body["results"]:
        assert x["relevance_score"] == pytest.approx(float(expected[x["index"]]), abs=1e-5)
        assert 0 <= x["relevance_score"] <= 1
        assert x["document"] == {"text": DOCS[x["index"]]}
    assert body["model"] == tiny_model.name and body["usage"]["total_tokens"] > 0
    plain = client.post("/v1/rerank", json={"query": "cat", "documents": DOCS}).json()
    assert len(plain["results"]) == 4 and all("document" not in x for x in plain["results"])


def test_v1_rerank_with_images(client, tiny_model):
    docs = [{"text": "a picture", "image": data_url(1)}, {"image": data_url(2)}, "a cat"]
    r = client.post("/v1/rerank", json={"query": {"text": "a red picture", "image": data_url(1)}, "documents": docs})
    assert r.status_code == 200
    q = tiny_model.encode(text=["a red picture"], images=[[png_bytes(1)]], task="query")
    d = np.concatenate([tiny_model.encode(text=["a picture"], images=[[png_bytes(1)]]),
                        tiny_model.encode(images=[[png_bytes(2)]]), tiny_model.encode(text=["a cat"])])
    expected = tiny_model.score(q, d)[0]
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    assert [x["index"] for x in r.json()["results"]] == list(np.argsort(-expected, kind="stable"))
    np.testing.assert_allclose([got[i] for i in range(3)], expected, atol=1e-5)


def test_v1_score_matrix(client, tiny_model):
    queries, docs = ["cat", "a dog on the beach"], DOCS[:3]
    r = client.post("/v1/score", json={"queries": queries, "documents": docs, "dimensions": 8})
    assert r.status_code == 200
    body = r.json()
    q = tiny_model.encode(text=queries, task="query", embedding_dim=8)
    d = tiny_model.encode(text=docs, task="document", embedding_dim=8)
    np.testing.assert_allclose(np.array(body["scores"]), tiny_model.score(q, d), atol=1e-5)
    np.testing.assert_allclose(np.array(body["similarities"]), tiny_model.similarity(q, d), atol=1e-5)
    assert body["dimensions"] == 8 and np.array(body["scores"]).shape == (2, 3)


@pytest.mark.parametrize("path, body, status, fragment", [
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n"),
    ("/v1/rerank", {"query": "q", "documents": []}, 422, "documents"),
    ("/v1/rerank", {"query": "q", "documents": ["a", ""]}, 422, "documents: item 1: text is empty"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "dimensions": 9}, 400, "allowed sizes"),
    ("/v1/score", {"queries": "q", "documents": [[1, 2]]}, 422, "token-id arrays"),
    ("/v1/score", {"queries": "q"}, 422, "documents: field required"),
])
def test_rerank_score_errors(client, path, body, status, fragment):
    r = client.post(path, json=body)
    assert r.status_code == status
    assert fragment in r.json()["error"]["message"]
