"""Prometheus metrics: requests by endpoint and status, errors, latency, model batch sizes.

Each app owns its registry, so several apps (tests, benchmarks) never share counters.
Endpoints are labelled by route template (``/v1/embeddings``), never by raw path, so a
scanner cannot blow up the label set; unmatched paths share the label ``unmatched``.
"""
from __future__ import annotations

import time
from typing import Iterable

from unirep_core.optional import require

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "MetricsMiddleware"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        prom = require("prometheus_client", extra="serve")
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("unirep_requests", "HTTP requests by endpoint, method and status",
                                     ["endpoint", "method", "status"], registry=r)
        self.errors = prom.Counter("unirep_errors", "HTTP responses with status >= 400, by endpoint and status",
                                   ["endpoint", "status"], registry=r)
        self.latency = prom.Histogram("unirep_request_latency_seconds", "HTTP request latency by endpoint",
                                      ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = prom.Histogram("unirep_batch_size", "Items per model batch, by kind",
                                         ["kind"], buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = prom.Histogram("unirep_batch_seconds", "Model time per batch, by kind",
                                            ["kind"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_items = prom.Gauge("unirep_queue_items", "Items waiting for the model", registry=r)

    def observe_batch(self, kind: str, size: int, seconds: float) -> None:
        self.batch_size.labels(kind=kind).observe(size)
        self.batch_seconds.labels(kind=kind).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, paths: Iterable[str] = ()):
        self.app = app
        self.metrics = metrics
        #: the app's own fixed paths, to label requests answered before routing (401, 413)
        self._static_paths = frozenset(p for p in paths if "{" not in p)

    def _endpoint(self, scope: Scope) -> str:
        route = scope.get("route")
        if getattr(route, "path", None):
            return route.path  # type: ignore[union-attr]
        path = scope.get("path", "")
        return path if path in self._static_paths else "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            endpoint = self._endpoint(scope)
            m = self.metrics
            m.requests.labels(endpoint=endpoint, method=scope.get("method", ""), status=str(status)).inc()
            if status >= 400:
                m.errors.labels(endpoint=endpoint, status=str(status)).inc()
            m.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)
