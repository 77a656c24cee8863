"""``create_app``: one FastAPI app, several facades over one batched encoder."""
from __future__ import annotations

import inspect
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from unirep_core import UniRep, __version__
from unirep_core.optional import require

require("fastapi", extra="serve")

from fastapi import FastAPI  # noqa: E402

from . import routes_ops, routes_openai, routes_rerank, routes_tei, routes_weaviate  # noqa: E402
from .errors import GuardMiddleware, install_error_handlers  # noqa: E402
from .metrics import Metrics, MetricsMiddleware  # noqa: E402
from .security import AuthMiddleware, BodyLimitMiddleware, Limits  # noqa: E402
from .service import EmbeddingService  # noqa: E402

__all__ = ["create_app"]

logger = logging.getLogger("unirep_integrations.server")

_DESCRIPTION = """One UniRep model (text, image(s) or both -> one Matryoshka, calibrated vector) behind
several APIs: OpenAI embeddings (+ images, `dimensions`, `task`), TEI (`/embed`, `/rerank`, `/info`),
rerank (`/v1/rerank`, `/v1/score`, calibrated scores) and Weaviate's module inference API
(`/vectorize`, `/vectors`, `/meta`, `/.well-known/*`). Concurrent requests share model batches."""


def create_app(model: UniRep, *, api_key: str | None = None, max_batch_size: int = 32, max_wait_ms: float = 5.0,
               batching: bool = True, limits: Limits | None = None, model_name: str | None = None) -> FastAPI:
    """The server app for ``model``.

    ``api_key``: require ``Authorization: Bearer KEY`` everywhere except ``/health`` and the
    Weaviate probes. ``max_batch_size`` / ``max_wait_ms``: dynamic batching bounds;
    ``batching=False`` encodes each request alone (a baseline). ``limits``: request limits
    (:class:`Limits`). ``model_name``: the name reported to clients (default ``model.name``).
    """
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ValueError("api_key must be a non-empty string or None")
    limits = limits or Limits()
    metrics = Metrics()
    service = EmbeddingService(model, limits=limits, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                               batching=batching, metrics=metrics, model_name=model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.aclose()

    options: dict[str, Any] = {}
    if "strict_content_type" in inspect.signature(FastAPI.__init__).parameters:
        # Weaviate's text2vec-transformers client posts JSON without a Content-Type header.
        options["strict_content_type"] = False
    app = FastAPI(title="UniRep inference server", version=__version__, description=_DESCRIPTION,
                  lifespan=lifespan, **options)
    app.state.service = service
    app.state.metrics = metrics
    app.state.limits = limits
    install_error_handlers(app)
    paths = []
    for module in (routes_openai, routes_tei, routes_rerank, routes_weaviate, routes_ops):
        app.include_router(module.router)
        paths += [route.path for route in module.router.routes]
    # added last = outermost: metrics see every response, 500s included
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    if api_key is not None:
        app.add_middleware(AuthMiddleware, api_key=api_key)
    app.add_middleware(GuardMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=paths)
    logger.debug("UniRep server app for %s (auth %s, batching %s)", service.model_name,
                 "on" if api_key else "off", "on" if batching else "off")
    return app
