"""Weaviate module inference API, so Weaviate can use UniRep as a named vector's vectorizer.

* ``multi2vec-clip`` (``inferenceUrl``): ``POST /vectorize`` ``{"texts": [...], "images": [base64...]}``
  (either may be null or absent) -> ``{"textVectors", "imageVectors"}``, one vector per text and per
  image.
* ``text2vec-transformers`` (``inferenceUrl`` or passage/query URLs): ``POST /vectors`` (and
  ``/vectors/``), one ``{"text", "config"}`` -> ``{"text", "vector", "dim"}`` (plus ``dims``, the name
  Weaviate's Go client reads), or a batch ``{"texts", "config"}`` -> ``{"vectors", "dims"}``.
  ``config.task_type`` ``passage`` (default) or ``query`` picks the task, ``config.dimensions`` a
  Matryoshka size; ``pooling_strategy`` is ignored. Weaviate sends the single form without a
  Content-Type header: the body is read as JSON anyway.
* ``GET /.well-known/live``, ``GET /.well-known/ready`` (204, no auth), ``GET /meta``.

Errors are ``{"error": "..."}`` with a status >= 400 (Weaviate reads that field).
"""
from __future__ import annotations

import asyncio
from typing import Any, Union

import numpy as np
from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse, Response

from .errors import ApiError
from .routes_openai import get_service
from .schemas import (BatchVectorsResponse, InputItem, SimpleError, SingleVectorResponse, VectorizeRequest,
                      VectorizeResponse, VectorsConfig, VectorsRequest)
from .service import EmbeddingService

__all__ = ["router"]

router = APIRouter(tags=["weaviate"], responses={code: {"model": SimpleError} for code in (400, 401, 413, 422, 500)})


def _options(svc: EmbeddingService, config: VectorsConfig | None) -> tuple[str, int]:
    config = config or VectorsConfig()
    task = svc.resolve_task(config.task_type, param="config.task_type")
    return task, svc.resolve_dim(config.dimensions, param="config.dimensions")


@router.get("/.well-known/live", status_code=204, response_class=Response, summary="Liveness probe")
async def live() -> Response:
    return Response(status_code=204)


@router.get("/.well-known/ready", status_code=204, response_class=Response, summary="Readiness probe")
async def ready(svc: EmbeddingService = Depends(get_service)) -> Response:
    return Response(status_code=204)


@router.get("/meta", summary="Model description (Weaviate module meta)")
async def meta(svc: EmbeddingService = Depends(get_service)) -> dict[str, Any]:
    return {"model": svc.describe()}


@router.post("/vectorize", response_model=VectorizeResponse, summary="Texts and images -> vectors (multi2vec-clip)")
async def vectorize(req: VectorizeRequest, svc: EmbeddingService = Depends(get_service)) -> JSONResponse:
    task, dim = _options(svc, req.config)
    texts, images = req.texts or [], req.images or []
    if len(texts) + len(images) > svc.limits.max_items:
        raise ApiError(413, f"{len(texts) + len(images)} texts and images, over the limit of "
                            f"{svc.limits.max_items} per request", code="too_many_items")
    text_items = await svc.prepare(svc.items_from(texts, "texts"), "texts", task=task) if texts else []
    image_items = (await svc.prepare(svc.items_from([InputItem(image=s) for s in images], "images"), "images",
                                     task=task) if images else [])

    async def run(items: list, param: str) -> list:
        return (await svc.embed(items, task, dim, param=param)).tolist() if items else []

    text_vectors, image_vectors = await asyncio.gather(run(text_items, "texts"), run(image_items, "images"))
    return JSONResponse({"textVectors": text_vectors, "imageVectors": image_vectors})


async def _vectors(req: VectorsRequest, svc: EmbeddingService) -> JSONResponse:
    task, dim = _options(svc, req.config)
    if req.text is not None and req.texts is not None:
        raise ApiError(422, "give 'text' (one) or 'texts' (a batch), not both")
    if req.texts is not None:
        if not req.texts:
            return JSONResponse({"vectors": [], "dims": dim})
        items = await svc.prepare(svc.items_from(req.texts, "texts"), "texts", task=task)
        vectors = await svc.embed(items, task, dim, param="texts")
        return JSONResponse({"vectors": vectors.tolist(), "dims": dim})
    if req.text is None:
        raise ApiError(422, "'text' (a string) or 'texts' (a list of strings) is required")
    items = await svc.prepare(svc.items_from(req.text, "text"), "text", task=task)
    vector: np.ndarray = (await svc.embed(items, task, dim, param="text"))[0]
    return JSONResponse({"text": req.text, "vector": vector.tolist(), "dim": dim, "dims": dim})


@router.post("/vectors", summary="Text(s) -> vector(s) (text2vec-transformers)",
             responses={200: {"model": Union[SingleVectorResponse, BatchVectorsResponse]}})
async def vectors(req: VectorsRequest, svc: EmbeddingService = Depends(get_service)) -> JSONResponse:
    return await _vectors(req, svc)


@router.post("/vectors/", include_in_schema=False)
async def vectors_slash(req: VectorsRequest, svc: EmbeddingService = Depends(get_service)) -> JSONResponse:
    return await _vectors(req, svc)
