"""API key, request limits, the 500 guard, /health and /metrics."""
from __future__ import annotations

import hmac
import logging

import pytest
from fastapi.testclient import TestClient

from tests.integrations.server.conftest import API_KEY, data_url
from unirep_integrations.server import Limits, create_app

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROTECTED = [("POST", "/v1/embeddings", {"input": "x"}), ("POST", "/v1/embeddings/multimodal", {"input": "x"}),
             ("GET", "/v1/models", None), ("POST", "/embed", {"inputs": "x"}), ("GET", "/info", None),
             ("POST", "/rerank", {"query": "q", "texts": ["a"]}), ("POST", "/v1/rerank", {"query": "q", "documents": ["a"]}),
             ("POST", "/v1/score", {"queries": "q", "documents": "a"}), ("GET", "/meta", None),
             ("POST", "/vectorize", {"texts": ["a"]}), ("POST", "/vectors", {"text": "a"}), ("GET", "/metrics", None),
             ("GET", "/openapi.json", None)]


@pytest.mark.parametrize("method, path, body", PROTECTED)
def test_every_endpoint_needs_the_key(auth_client, method, path, body):
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": API_KEY},
                    {"Authorization": f"Basic {API_KEY}"}):
        r = auth_client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (path, headers)
        assert r.headers["www-authenticate"] == "Bearer"
        assert API_KEY not in r.text
    ok = auth_client.request(method, path, json=body, headers=AUTH)
    assert ok.status_code == 200, ok.text
    lower = auth_client.request(method, path, json=body, headers={"authorization": f"bearer {API_KEY}"})
    assert lower.status_code == 200


def test_public_endpoints_and_error_shapes(auth_client):
    assert auth_client.get("/health").json()["status"] == "ok"
    assert auth_client.get("/.well-known/live").status_code == 204
    assert auth_client.get("/.well-known/ready").status_code == 204
    assert auth_client.post("/v1/embeddings", json={"input": "x"}).json()["error"]["code"] == "invalid_api_key"
    assert auth_client.post("/embed", json={"inputs": "x"}).json()["error_type"] == "Unauthorized"
    assert isinstance(auth_client.post("/vectors", json={"text": "x"}).json()["error"], str)
    metrics = auth_client.get("/metrics", headers=AUTH).text
    assert 'unirep_errors_total{endpoint="/v1/embeddings",status="401"}' in metrics  # labelled before routing


def test_key_compare_is_constant_time(monkeypatch, auth_client):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((type(a), type(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    auth_client.get("/v1/models", headers={"Authorization": "Bearer guess"})
    auth_client.get("/v1/models", headers=AUTH)
    assert calls == [(bytes, bytes), (bytes, bytes)]


def test_key_is_never_logged(tiny_model, caplog):
    app = create_app(tiny_model, api_key=API_KEY)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("kaboom")

    with caplog.at_level(logging.DEBUG), TestClient(app, raise_server_exceptions=False) as c:
        c.get("/boom", headers=AUTH)
        c.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer not-the-key"})
    assert "kaboom" in caplog.text  # the traceback is logged...
    assert API_KEY not in caplog.text and "not-the-key" not in caplog.text  # ...never a key


def test_unexpected_exception_is_500_json_and_server_keeps_serving(tiny_model, monkeypatch):
    app = create_app(tiny_model)
    with TestClient(app, raise_server_exceptions=False) as c:
        svc = app.state.service

        def broken(*args, **kwargs):
            raise RuntimeError("model exploded")

        monkeypatch.setattr(svc.model, "encode", broken)
        r = c.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "server_error" and "model exploded" not in r.text
        assert c.post("/embed", json={"inputs": "x"}).json()["error_type"] == "Backend"
        assert c.post("/vectors", json={"text": "x"}).status_code == 500
        monkeypatch.undo()
        assert c.post("/v1/embeddings", json={"input": "x"}).status_code == 200
        metrics = c.get("/metrics").text
        assert 'unirep_errors_total{endpoint="/v1/embeddings",status="500"} 1.0' in metrics


@pytest.fixture(scope="module")
def limited(tiny_model):
    limits = Limits(max_body_bytes=20_000, max_items=3, max_text_chars=50, max_images_per_item=2,
                    max_image_pixels=64 * 64)
    with TestClient(create_app(tiny_model, limits=limits)) as c:
        yield c


def test_body_size_limit(limited):
    r = limited.post("/v1/embeddings", json={"input": "x" * 30_000})
    assert r.status_code == 413 and "exceeds the limit of 20000 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: counted while reading
        for _ in range(30):
            yield b" " * 1000
        yield b'{"input": "x"}'

    r = limited.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert limited.post("/embed", json={"inputs": "x" * 30_000}).json()["error_type"] == "Validation"


@pytest.mark.parametrize("path, body, fragment", [
    ("/v1/embeddings", {"input": ["a", "b", "c", "d"]}, "input has 4 items, over the limit of 3"),
    ("/v1/embeddings", {"input": ["ok", "y" * 51]}, "item 1: text has 51 characters, over the limit of 50"),
    ("/v1/embeddings", {"input": [{"images": [data_url(1, 16)] * 3}]}, "item 0: 3 images, over the limit of 2"),
    ("/v1/embeddings", {"input": ["ok", {"image": data_url(1, 65)}]},
     "item 1: image 0: 65x65 = 4225 pixels exceeds the limit of 4096"),
    ("/v1/rerank", {"query": "q", "documents": ["a", "b", "c", "d"]}, "documents has 4 items"),
    ("/vectorize", {"texts": ["a", "b"], "images": [data_url(1, 8), data_url(2, 8)]}, "over the limit of 3"),
])
def test_item_text_and_pixel_limits(limited, path, body, fragment):
    r = limited.post(path, json=body)
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert fragment in (err if isinstance(err, str) else err["message"])


def test_decompression_bomb_is_refused_before_decoding(limited):
    import base64
    import zlib

    # a PNG header claiming 30000 x 30000 pixels; its pixel data is never decoded
    def chunk(kind, data):
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    def png_claiming(side):
        ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
               + chunk(b"IEND", b""))
        return "data:image/png;base64," + base64.b64encode(png).decode()

    r = limited.post("/v1/embeddings", json={"input": [{"image": png_claiming(3000)}]})
    assert r.status_code == 413
    assert "3000x3000 = 9000000 pixels exceeds the limit of 4096" in r.json()["error"]["message"]
    r = limited.post("/v1/embeddings", json={"input": [{"image": png_claiming(30000)}]})
    assert r.status_code == 413 and "decompression bomb" in r.json()["error"]["message"]


def test_limits_validation():
    with pytest.raises(ValueError, match="max_items"):
        Limits(max_items=0)
    with pytest.raises(ValueError, match="api_key"):
        create_app(object(), api_key="  ")  # type: ignore[arg-type]


def test_health_and_metrics(client, tiny_model):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == tiny_model.name and health["batching"] is True
    client.post("/v1/embeddings", json={"input": ["a", "b"]})
    client.post("/v1/embeddings", json={"input": "x", "dimensions": 3})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'unirep_requests_total{endpoint="/v1/embeddings",method="POST",status="200"}' in text
    assert 'unirep_errors_total{endpoint="/v1/embeddings",status="400"}' in text
    assert 'unirep_request_latency_seconds_bucket{endpoint="/v1/embeddings",le="+Inf"}' in text
    assert 'unirep_batch_size_bucket{kind="embed",le="2.0"}' in text
    assert "unirep_batch_seconds_count" in text and "unirep_queue_items" in text
    client.get("/no/such/path")
    assert 'unirep_requests_total{endpoint="unmatched",method="GET",status="404"}' in client.get("/metrics").text
