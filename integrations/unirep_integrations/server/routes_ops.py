"""Operations: ``GET /health`` (no auth) and ``GET /metrics`` (Prometheus text format)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from .routes_openai import get_service
from .service import EmbeddingService

__all__ = ["router"]

router = APIRouter(tags=["ops"])


@router.get("/health", summary="Liveness and the served model (no auth)")
async def health(svc: EmbeddingService = Depends(get_service)) -> dict[str, Any]:
    return {"status": "ok", "model": svc.model_name, "dims": list(svc.model.dims),
            "batching": svc.batcher.enabled, "queued_items": svc.batcher.queued_items}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
