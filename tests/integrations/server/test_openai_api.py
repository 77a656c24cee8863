"""OpenAI facade: /v1/embeddings (texts, images, dimensions, base64, tasks), /v1/models, errors."""
from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.integrations.server.conftest import data_url, png_bytes


def _vectors(body):
    return np.array([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])], dtype=np.float32)


def test_texts_equal_model_encode(client, tiny_model):
    texts = ["hello world", "a red cat on the mat", "xin chao the gioi"]
    r = client.post("/v1/embeddings", json={"input": texts, "model": "anything"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == tiny_model.name
    assert [d["object"] for d in body["data"]] == ["embedding"] * 3
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    np.testing.assert_allclose(_vectors(body), tiny_model.encode(text=texts, task="document"), atol=1e-5)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 3


def test_single_string_and_dimensions(client, tiny_model):
    for dim in tiny_model.dims:
        r = client.post("/v1/embeddings", json={"input": "hello world", "dimensions": dim})
        assert r.status_code == 200
        v = _vectors(r.json())
        assert v.shape == (1, dim)
        np.testing.assert_allclose(v, tiny_model.encode(text="hello world", embedding_dim=dim), atol=1e-5)
        assert abs(np.linalg.norm(v) - 1) < 1e-5


def test_base64_is_little_endian_float32(client, tiny_model):
    r = client.post("/v1/embeddings", json={"input": ["a dog", "a cat"], "encoding_format": "base64",
                                            "dimensions": 16})
    assert r.status_code == 200
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]]
    np.testing.assert_allclose(np.stack(rows), tiny_model.encode(text=["a dog", "a cat"], embedding_dim=16),
                               atol=1e-6)


def test_task_and_input_type_alias(client, tiny_model):
    expected = tiny_model.encode(text=["find cats"], task="query")
    for extra in ({"task": "query"}, {"input_type": "query"}, {"input_type": "search_query"}):
        r = client.post("/v1/embeddings", json={"input": ["find cats"], **extra})
        assert r.status_code == 200, extra
        np.testing.assert_allclose(_vectors(r.json()), expected, atol=1e-5)
    doc = client.post("/v1/embeddings", json={"input": ["find cats"], "input_type": "passage"})
    np.testing.assert_allclose(_vectors(doc.json()), tiny_model.encode(text=["find cats"]), atol=1e-5)
    assert not np.allclose(_vectors(doc.json()), expected, atol=1e-4)  # the task really changes the vector


def test_multimodal_items(client, tiny_model):
    img1, img2 = png_bytes(1), png_bytes(2)
    items = [{"text": "a red square", "image": data_url(1)},
             {"images": [data_url(1), data_url(2)]},
             {"text": "two pictures", "images": [data_url(1), base64.b64encode(img2).decode()]},  # bare base64 too
             "just text"]
    r = client.post("/v1/embeddings", json={"input": items, "dimensions": 32})
    assert r.status_code == 200, r.text
    expected = np.concatenate([
        tiny_model.encode(text=["a red square"], images=[[img1]]),
        tiny_model.encode(images=[[img1, img2]]),
        tiny_model.encode(text=["two pictures"], images=[[img1, img2]]),
        tiny_model.encode(text=["just text"]),
    ])
    np.testing.assert_allclose(_vectors(r.json()), expected, atol=1e-5)


def test_models_endpoints(client, tiny_model):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert body["data"][0]["id"] == tiny_model.name and body["data"][0]["object"] == "model"
    assert client.get(f"/v1/models/{tiny_model.name}").json()["dimensions"] == list(tiny_model.dims)
    missing = client.get("/v1/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def _error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest.mark.parametrize("bad", [[1, 2, 3], [[1, 2], [3]]])
def test_token_arrays_are_refused_clearly(client, bad):
    err = _error(client.post("/v1/embeddings", json={"input": bad}), 422)
    assert "token-id arrays are not supported" in err["message"] and err["param"] == "input"


def test_dimension_not_allowed_lists_sizes(client):
    err = _error(client.post("/v1/embeddings", json={"input": "x", "dimensions": 12}), 400)
    assert "allowed sizes: [8, 16, 32]" in err["message"]
    assert err["param"] == "dimensions" and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, status, fragment, param", [
    ({"input": "x", "task": "summarise"}, 400, "unknown task 'summarise'", "task"),
    ({"input": "x", "input_type": "classification"}, 400, "unknown input_type", "input_type"),
    ({"input": ["ok", "  "]}, 422, "item 1: text is empty", "input"),
    ({"input": []}, 422, "must not be empty", "input"),
    ({"input": ["ok", 5]}, 422, "item 1 is integer", "input"),
    ({"input": 3.5}, 422, "expected a string or a list", "input"),
    ({"input": [{"text": "ok"}, {}]}, 422, "item 1: has neither text nor image", "input"),
    ({"input": "x", "encoding_format": "int8"}, 422, "encoding_format", "encoding_format"),
    ({"input": "x", "dimensions": "many"}, 422, "dimensions", "dimensions"),
    ({}, 422, "input: field required", "input"),
])
def test_bad_requests(client, body, status, fragment, param):
    err = _error(client.post("/v1/embeddings", json=body), status)
    assert fragment in err["message"] and err["param"] == param


@pytest.mark.parametrize("image, fragment", [
    ("data:image/png;base64,!!!notbase64", "item 1: image 0: not valid base64"),
    ("data:image/png;base64," + base64.b64encode(b"not an image at all").decode(), "item 1: image 0: cannot be decoded"),
    ("data:image/png;base64," + base64.b64encode(png_bytes(3)[:60]).decode(), "item 1: image 0:"),
    ("https://example.com/cat.png", "URLs and paths are not fetched"),
    ("data:text/plain;base64,aGVsbG8=", "is not an image"),
])
def test_bad_image_names_the_item(client, image, fragment):
    r = client.post("/v1/embeddings", json={"input": [{"text": "fine"}, {"text": "bad", "image": image}]})
    err = _error(r, 422)
    assert fragment in err["message"] and err["code"] == "invalid_image"


def test_malformed_bodies_are_4xx(client):
    bad_json = client.post("/v1/embeddings", content=b'{"input": [', headers={"content-type": "application/json"})
    assert "not valid JSON" in _error(bad_json, 400)["message"]
    not_object = client.post("/v1/embeddings", json=["a", "b"])
    assert _error(not_object, 422)["message"]
    text_plain = client.post("/v1/embeddings", content=b"hello", headers={"content-type": "text/plain"})
    assert "JSON object" in _error(text_plain, 422)["message"]
    assert _error(client.post("/v1/embeddings"), 422)["message"]
    assert _error(client.get("/v1/embeddings"), 405)["message"].startswith("method GET is not allowed")
    assert _error(client.post("/v1/nothing", json={}), 404)["message"] == "no such endpoint: POST /v1/nothing"


def test_raw_features_endpoint(client, tiny_model):
    import torch

    from unirep_core import Item, Pooler

    items = [{"text": "a dog", "image": data_url(4)}, {"text": "hello world"}]
    prefix = tiny_model.config.prefixes["document"]
    batch = tiny_model.prepare([Item(prefix + "a dog", [tiny_model_image(4)]), Item(prefix + "hello world", [])])
    with torch.inference_mode():
        out = tiny_model.backbone.encode_tokens(batch, output_hidden_states=True)
    expected = {
        "cls": Pooler("cls")(out), "mean": Pooler("mean")(out), "last_layer": Pooler("last")(out),
        "multi_layer": Pooler("multi_layer", [1, 2])(out),  # the tiny model has 2 layers
    }
    for kind, ref in expected.items():
        r = client.post("/v1/embeddings/multimodal", json={"input": items, "embedding_type": kind,
                                                          "normalize": False})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["embedding_type"] == kind and body["calibrated"] is False
        v = _vectors(body)
        assert body["dimensions"] == v.shape[1] == ref.shape[1]
        np.testing.assert_allclose(v, ref.numpy(), atol=1e-4)
    normed = _vectors(client.post("/v1/embeddings/multimodal", json={"input": items, "embedding_type": "mean"}).json())
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1, atol=1e-5)


def test_multimodal_endpoint_default_is_the_unirep_vector(client, tiny_model):
    r = client.post("/v1/embeddings/multimodal", json={"input": {"text": "a dog", "image": data_url(4)},
                                                      "dimensions": 8})
    body = r.json()
    assert r.status_code == 200 and body["embedding_type"] == "matryoshka" and body["calibrated"] is True
    np.testing.assert_allclose(_vectors(body), tiny_model.encode(text=["a dog"], images=[[png_bytes(4)]],
                                                                 embedding_dim=8), atol=1e-5)
    raw_with_dims = client.post("/v1/embeddings/multimodal", json={"input": "x", "embedding_type": "cls",
                                                                   "dimensions": 8})
    assert "raw features are not Matryoshka" in _error(raw_with_dims, 400)["message"]
    bad_type = client.post("/v1/embeddings/multimodal", json={"input": "x", "embedding_type": "pooler"})
    assert "embedding_type" in _error(bad_type, 422)["message"]


def tiny_model_image(seed):
    from tests.tiny_models import make_image

    return make_image(seed)
