"""Fixtures for the inference server: in-process clients and a real uvicorn server on 127.0.0.1."""
from __future__ import annotations

import base64
import io
import socket
import threading
import time
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from fastapi.testclient import TestClient  # noqa: E402

from tests.tiny_models import make_image  # noqa: E402
from unirep_integrations.server import create_app  # noqa: E402

API_KEY = "test-key-0123456789"


def png_bytes(seed: int = 0, size: int = 48) -> bytes:
    buf = io.BytesIO()
    make_image(seed, size).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_url(seed: int = 0, size: int = 48) -> str:
    return "data:image/png;base64," + b64(png_bytes(seed, size))


class LiveServer:
    """A uvicorn server for ``app`` in a background thread, on a free port of 127.0.0.1."""

    def __init__(self, app: Any):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="session")
def app(tiny_model):
    return create_app(tiny_model)


@pytest.fixture(scope="session")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="session")
def auth_app(tiny_model):
    return create_app(tiny_model, api_key=API_KEY)


@pytest.fixture(scope="session")
def auth_client(auth_app):
    with TestClient(auth_app) as c:
        yield c


@pytest.fixture(scope="session")
def live(tiny_model):
    """A real server (API key ``API_KEY``) that other processes (Milvus Lite) can call over loopback."""
    with LiveServer(create_app(tiny_model, api_key=API_KEY)) as server:
        yield server
