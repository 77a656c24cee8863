"""OpenAI facade: ``POST /v1/embeddings``, ``POST /v1/embeddings/multimodal``, ``GET /v1/models``."""
from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse

from .errors import ApiError
from .schemas import (EmbeddingRequest, EmbeddingResponse, ModelCard, ModelList, MultimodalEmbeddingRequest,
                      MultimodalEmbeddingResponse, OpenAIErrorBody)
from .service import EmbeddingService, usage

__all__ = ["router", "get_service", "encode_vectors", "OPENAI_ERRORS"]

OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorBody, "description": text}
    for code, text in ((400, "invalid value (dimensions, task, JSON)"), (401, "missing or invalid API key"),
                       (413, "over a size limit"), (422, "invalid input"), (500, "internal error"))
}

router = APIRouter(tags=["openai"], responses=OPENAI_ERRORS)


def get_service(request: Request) -> EmbeddingService:
    return request.app.state.service


def encode_vectors(vectors: np.ndarray, encoding_format: str | None) -> list[Any]:
    if encoding_format == "base64":  # OpenAI: base64 of little-endian float32 bytes
        little = vectors.astype("<f4", copy=False)
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    return vectors.tolist()


def _body(svc: EmbeddingService, vectors: np.ndarray, fmt: str | None, items: list, **extra: Any) -> dict[str, Any]:
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encode_vectors(vectors, fmt))]
    return {"object": "list", "data": data, "model": svc.model_name, "usage": usage(items), **extra}


def _task(svc: EmbeddingService, req: EmbeddingRequest) -> str:
    if req.task is not None:
        return svc.resolve_task(req.task, param="task")
    return svc.resolve_task(req.input_type, param="input_type")


@router.post("/v1/embeddings", response_model=EmbeddingResponse, summary="Create embeddings (OpenAI-compatible)")
async def create_embeddings(req: EmbeddingRequest, svc: EmbeddingService = Depends(get_service)) -> JSONResponse:
    """Texts, images or both (items ``{"text", "image", "images"}``) -> one Matryoshka, calibrated
    vector each. ``dimensions`` picks a Matryoshka size; ``task`` / ``input_type`` picks the
    query or document side (default document)."""
    task = _task(svc, req)
    dim = svc.resolve_dim(req.dimensions)
    items = await svc.prepare(svc.items_from(req.input, "input"), "input", task=task)
    vectors = await svc.embed(items, task, dim, param="input")
    return JSONResponse(_body(svc, vectors, req.encoding_format, items))


@router.post("/v1/embeddings/multimodal", response_model=MultimodalEmbeddingResponse,
             summary="Embeddings of text+image items, or raw backbone features")
async def create_multimodal_embeddings(req: MultimodalEmbeddingRequest,
                                       svc: EmbeddingService = Depends(get_service)) -> JSONResponse:
    """``embedding_type=matryoshka`` (default) is the UniRep vector. ``cls``, ``mean``,
    ``last_layer`` and ``multi_layer`` are raw features pooled from the backbone's token states:
    uncalibrated (``model.score`` does not apply) and not Matryoshka (no ``dimensions``)."""
    task = _task(svc, req)
    raw = req.embedding_type != "matryoshka"
    if raw and req.dimensions is not None:
        raise ApiError(400, "dimensions applies to embedding_type=matryoshka only: raw features are not "
                            "Matryoshka", param="dimensions", code="invalid_dimensions")
    dim = None if raw else svc.resolve_dim(req.dimensions)
    items = await svc.prepare(svc.items_from(req.input, "input"), "input", task=task)
    if dim is not None:
        vectors = await svc.embed(items, task, dim, param="input")
        extra = {"embedding_type": "matryoshka", "calibrated": True, "dimensions": dim}
    else:
        vectors = await svc.features(items, task, req.embedding_type, normalize=req.normalize, param="input")
        extra = {"embedding_type": req.embedding_type, "calibrated": False, "dimensions": int(vectors.shape[1])}
    return JSONResponse(_body(svc, vectors, req.encoding_format, items, **extra))


def _card(svc: EmbeddingService) -> dict[str, Any]:
    return ModelCard(id=svc.model_name, dimensions=list(svc.model.dims)).model_dump()


@router.get("/v1/models", response_model=ModelList, summary="The served model")
async def list_models(svc: EmbeddingService = Depends(get_service)) -> dict[str, Any]:
    return {"object": "list", "data": [_card(svc)]}


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, summary="One model")
async def get_model(model_id: str, svc: EmbeddingService = Depends(get_service)) -> dict[str, Any]:
    if model_id != svc.model_name:
        raise ApiError(404, f"model {model_id!r} not found; this server serves {svc.model_name!r}",
                       param="model", code="model_not_found")
    return _card(svc)
