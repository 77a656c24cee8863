"""``unirep serve``: the ``unirep.commands`` plugin builds the app and hands it to uvicorn."""
from __future__ import annotations

import argparse
from importlib.metadata import EntryPoint

import pytest
from fastapi.testclient import TestClient

from unirep_integrations.server import cli as serve_cli


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    return str(tiny_model.save_pretrained(tmp_path_factory.mktemp("serve") / "tiny"))


@pytest.fixture
def captured(monkeypatch):
    import uvicorn

    calls = {}

    def fake_run(app, **kwargs):
        calls["app"], calls["kwargs"] = app, kwargs

    monkeypatch.setattr(uvicorn, "run", fake_run)
    return calls


def _with_serve_entry_point(monkeypatch):
    import unirep_core.cli as core_cli

    real = core_cli.entry_points

    def entry_points(group):
        found = [ep for ep in real(group=group) if ep.name != "serve"]
        return found + [EntryPoint(name="serve", value="unirep_integrations.server.cli:register", group=group)]

    monkeypatch.setattr(core_cli, "entry_points", entry_points)
    return core_cli


def test_unirep_serve_defaults_to_loopback(monkeypatch, captured, model_dir, tiny_model):
    monkeypatch.delenv(serve_cli.API_KEY_ENV, raising=False)
    core_cli = _with_serve_entry_point(monkeypatch)
    assert core_cli.main(["serve", "--model", model_dir, "--port", "8123"]) == 0
    assert captured["kwargs"]["host"] == "127.0.0.1" and captured["kwargs"]["port"] == 8123
    with TestClient(captured["app"]) as c:
        assert c.post("/v1/embeddings", json={"input": "hi"}).status_code == 200  # no key: open
        assert c.get("/health").json()["model"] == tiny_model.name


def test_unirep_serve_api_key_flag_env_and_options(monkeypatch, captured, model_dir):
    core_cli = _with_serve_entry_point(monkeypatch)
    monkeypatch.setenv(serve_cli.API_KEY_ENV, "from-env")
    assert core_cli.main(["serve", "--model", model_dir, "--no-batching", "--max-items", "2",
                          "--served-name", "unirep-test"]) == 0
    app = captured["app"]
    assert app.state.service.batcher.enabled is False and app.state.limits.max_items == 2
    with TestClient(app) as c:
        assert c.get("/v1/models").status_code == 401
        models = c.get("/v1/models", headers={"Authorization": "Bearer from-env"}).json()
        assert models["data"][0]["id"] == "unirep-test"
    assert core_cli.main(["serve", "--model", model_dir, "--api-key", "flag-key"]) == 0
    with TestClient(captured["app"]) as c:
        assert c.get("/info", headers={"Authorization": "Bearer from-env"}).status_code == 401
        assert c.get("/info", headers={"Authorization": "Bearer flag-key"}).status_code == 200


def test_register_adds_the_subcommand():
    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve"])
    assert (args.model, args.host, args.port, args.api_key, args.max_batch_size, args.max_wait_ms) == \
        ("unirep-mini", "127.0.0.1", 8000, None, 32, 5.0)
    assert args.func is serve_cli.serve


def test_public_bind_without_key_warns(monkeypatch, captured, model_dir, caplog):
    monkeypatch.delenv(serve_cli.API_KEY_ENV, raising=False)
    core_cli = _with_serve_entry_point(monkeypatch)
    core_cli.main(["serve", "--model", model_dir, "--host", "0.0.0.0"])
    assert "without an API key" in caplog.text
