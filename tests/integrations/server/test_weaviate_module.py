"""Weaviate's module calls, reproduced byte for byte as Weaviate's Go code sends them, over a real
socket to a real server.

From the Weaviate source (``usecases/modulecomponents/clients/transformers/transformers.go``,
``modules/multi2vec-clip/clients/vectorizer.go``, ``modules/text2vec-openai/clients/openai.go``):

* text2vec-transformers, one object: ``POST {inferenceUrl}/vectors`` with NO Content-Type header and
  the Go struct ``vecRequest`` marshalled compactly, extra fields included:
  ``{"text":..,"dims":0,"vector":null,"error":"","config":{"pooling_strategy":..,"task_type":"passage"|"query",
  "dimensions":N}}`` (``dimensions`` omitted when unset). Success must be exactly 200; the reply is read
  into the same struct (``text``, ``dims``, ``vector``, ``error``).
* text2vec-transformers, batch: ``{"texts":[..],"config":{..}}`` with ``Content-Type: application/json``
  -> ``{"vectors":[[..]],"dims":N}``, one vector per text.
* multi2vec-clip: ``POST {inferenceUrl}/vectorize`` ``{"texts":[..],"images":[base64..]}``; older releases
  send ``null`` for an empty list and no Content-Type, newer ones omit it and set the header. Errors are
  read from ``{"error": ".."}`` when the status is > 399.
* readiness: ``GET {url}/.well-known/ready`` must be 2xx (500 ms timeout); ``GET {url}/meta`` any JSON object.
* text2vec-openai with ``baseURL``: ``POST url.JoinPath(baseURL, "/v1/embeddings")``,
  ``Authorization: Bearer KEY``, ``Content-Type: application/json``,
  ``{"input":[..],"model":..,"dimensions":N}``; errors from ``error.message``.
"""
from __future__ import annotations

import base64
import http.client
import json
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np
import pytest

from tests.integrations.server.conftest import API_KEY, LiveServer, png_bytes
from unirep_integrations.server import create_app

GO_HEADERS = {"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip"}


def go_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def go_request(url: str, method: str, body: bytes | None = None, headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, str], Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    h = dict(GO_HEADERS)
    if body is not None:
        h["Content-Length"] = str(len(body))
    h.update(headers or {})
    conn.putrequest(method, parts.path or "/", skip_host=False, skip_accept_encoding=True)
    for k, v in h.items():
        conn.putheader(k, v)
    conn.endheaders(body)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    payload = json.loads(raw) if raw else None
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload


@pytest.fixture(scope="module")
def open_server(tiny_model):
    """Weaviate's local-inference modules send no credentials: a server without an API key."""
    with LiveServer(create_app(tiny_model)) as server:
        yield server


def _module_config(kind: str, url: str, **options: Any) -> dict[str, Any]:
    """The module settings Weaviate stores for a named vector (from the repo's helper when present)."""
    try:
        from unirep_integrations.weaviate import vectorizer_config
    except ImportError:  # pragma: no cover - the helper is optional here
        vectorizer_config = None
    if vectorizer_config is not None:
        try:
            return vectorizer_config(url, kind=kind, **options)._to_dict()["vectorizer"][kind]
        except ImportError:
            pass
    settings: dict[str, Any] = {"inferenceUrl": url.rstrip("/")} if kind != "text2vec-openai" else {"baseURL": url}
    if kind == "text2vec-transformers":
        settings["poolingStrategy"] = "masked_mean"
    for key in ("dimensions", "model"):
        if options.get(key) is not None:
            settings[key] = options[key]
    return settings


def _t2v_config(settings: dict[str, Any], task: str) -> dict[str, Any]:
    config: dict[str, Any] = {"pooling_strategy": settings.get("poolingStrategy", "masked_mean"), "task_type": task}
    if settings.get("dimensions") is not None:
        config["dimensions"] = settings["dimensions"]
    return config


def test_text2vec_transformers_single_object_and_query(open_server, tiny_model):
    settings = _module_config("text2vec-transformers", open_server.url, dimensions=16)
    url = settings["inferenceUrl"] + "/vectors"
    body = go_json({"text": "a red cat", "dims": 0, "vector": None, "error": "",
                    "config": _t2v_config(settings, "passage")})
    status, headers, reply = go_request(url, "POST", body)  # no Content-Type, as Weaviate
    assert status == 200 and headers["content-type"] == "application/json"
    assert set(reply) >= {"text", "vector", "dim", "dims"} and reply["text"] == "a red cat"
    assert reply["dims"] == reply["dim"] == 16 == len(reply["vector"])
    np.testing.assert_allclose(reply["vector"], tiny_model.encode(text="a red cat", embedding_dim=16)[0], atol=1e-5)

    body = go_json({"text": "cats", "dims": 0, "vector": None, "error": "", "config": _t2v_config(settings, "query")})
    status, _, reply = go_request(settings["inferenceUrl"] + "/vectors/", "POST", body)  # the trailing-slash path
    assert status == 200
    np.testing.assert_allclose(reply["vector"], tiny_model.encode(text="cats", task="query", embedding_dim=16)[0],
                               atol=1e-5)


def test_text2vec_transformers_batch(open_server, tiny_model):
    settings = _module_config("text2vec-transformers", open_server.url)
    texts = ["first object text", "second one", "xin chao"]
    body = go_json({"texts": texts, "config": _t2v_config(settings, "passage")})
    status, _, reply = go_request(settings["inferenceUrl"] + "/vectors", "POST", body,
                                  {"Content-Type": "application/json"})
    assert status == 200 and reply["dims"] == tiny_model.dim and len(reply["vectors"]) == len(texts)
    np.testing.assert_allclose(reply["vectors"], tiny_model.encode(text=texts), atol=1e-5)


def test_text2vec_transformers_errors_are_read_by_weaviate(open_server):
    url = open_server.url + "/vectors"
    empty = go_json({"text": "  ", "dims": 0, "vector": None, "error": "", "config": {"task_type": "passage"}})
    status, _, reply = go_request(url, "POST", empty)
    assert status == 422 and isinstance(reply["error"], str) and "text is empty" in reply["error"]
    bad_dim = go_json({"text": "x", "config": {"task_type": "passage", "dimensions": 100}})
    status, _, reply = go_request(url, "POST", bad_dim)
    assert status == 400 and "allowed sizes: [8, 16, 32]" in reply["error"]
    bad_task = go_json({"text": "x", "config": {"task_type": "summary"}})
    assert go_request(url, "POST", bad_task)[0] == 400
    status, _, reply = go_request(url, "POST", b"{not json")
    assert status == 400 and "not valid JSON" in reply["error"]


def test_multi2vec_clip_vectorize_old_and_new_clients(open_server, tiny_model):
    settings = _module_config("multi2vec-clip", open_server.url, image_fields=["img"])
    url = settings["inferenceUrl"] + "/vectorize"
    # older Weaviate: nil slice -> null, no Content-Type
    status, _, reply = go_request(url, "POST", go_json({"texts": ["a cat"], "images": None}))
    assert status == 200 and reply["imageVectors"] == []
    np.testing.assert_allclose(reply["textVectors"], tiny_model.encode(text=["a cat"]), atol=1e-5)
    # newer Weaviate: omitempty + Content-Type
    images = [png_bytes(1), png_bytes(2)]
    body = go_json({"texts": ["a cat", "a dog"], "images": [base64.b64encode(b).decode() for b in images]})
    status, _, reply = go_request(url, "POST", body, {"Content-Type": "application/json"})
    assert status == 200
    np.testing.assert_allclose(reply["textVectors"], tiny_model.encode(text=["a cat", "a dog"]), atol=1e-5)
    np.testing.assert_allclose(reply["imageVectors"], tiny_model.encode(images=images), atol=1e-5)
    status, _, reply = go_request(url, "POST", go_json({"images": [base64.b64encode(images[0]).decode()]}),
                                  {"Content-Type": "application/json"})
    assert status == 200 and reply["textVectors"] == [] and len(reply["imageVectors"]) == 1
    status, _, reply = go_request(url, "POST", go_json({}))
    assert status == 200 and reply == {"textVectors": [], "imageVectors": []}


def test_multi2vec_clip_bad_image_error(open_server):
    body = go_json({"texts": ["fine"], "images": ["aGVsbG8=", "@@@"]})
    status, _, reply = go_request(open_server.url + "/vectorize", "POST", body, {"Content-Type": "application/json"})
    assert status == 422 and "images: item 0: image 0: cannot be decoded" in reply["error"]


def test_probes_and_meta_need_no_key_except_meta(live, tiny_model):
    for path in ("/.well-known/ready", "/.well-known/live"):
        status, _, reply = go_request(live.url + path, "GET")
        assert status == 204 and reply is None
    status, _, reply = go_request(live.url + "/meta", "GET")
    assert status == 401 and "API key" in reply["error"]  # module shape even for 401
    status, _, reply = go_request(live.url + "/meta", "GET", headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 200 and reply["model"]["name"] == tiny_model.name and reply["model"]["dims"] == [8, 16, 32]


def test_text2vec_openai_module_call(live, tiny_model):
    settings = _module_config("text2vec-openai", live.url, model="unirep-mini", dimensions=16)
    url = urljoin(settings["baseURL"].rstrip("/") + "/", "v1/embeddings")  # Go: url.JoinPath(baseURL, "/v1/embeddings")
    assert url == live.url + "/v1/embeddings"
    body = go_json({"input": ["a red cat", "a dog"], "model": settings["model"], "dimensions": 16})
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    status, _, reply = go_request(url, "POST", body, headers)
    assert status == 200 and reply["object"] == "list"
    got = [d["embedding"] for d in reply["data"]]
    np.testing.assert_allclose(got, tiny_model.encode(text=["a red cat", "a dog"], embedding_dim=16), atol=1e-5)
    status, _, reply = go_request(url, "POST", body, {"Authorization": "Bearer wrong",
                                                      "Content-Type": "application/json"})
    assert status == 401 and reply["error"]["message"].startswith("missing or invalid API key")
