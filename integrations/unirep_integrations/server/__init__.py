"""UniRep inference server (FastAPI): OpenAI, TEI, rerank and Weaviate-module facades over one
dynamically batched encoder. ``unirep serve`` runs it; :func:`create_app` builds it for tests.

Modules: ``app`` (factory), ``batching`` (dynamic batcher), ``service`` (validation, decoding,
model calls), ``schemas`` (request/response bodies), ``security`` (API key, limits), ``errors``
(per-facade error shapes, 500 guard), ``metrics`` (Prometheus), ``routes_*`` (one router per
facade), ``cli`` (``unirep serve``).
"""
from __future__ import annotations

from typing import Any

__all__ = ["create_app", "Limits", "Batcher"]


def __getattr__(name: str) -> Any:  # lazy: importing the package never needs fastapi
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Limits":
        from .security import Limits

        return Limits
    if name == "Batcher":
        from .batching import Batcher

        return Batcher
    raise AttributeError(name)
