"""Text Embeddings Inference facade: ``POST /embed``, ``POST /rerank``, ``GET /info``.

Errors are TEI's ``{"error": "...", "error_type": "Validation"}``.
"""
from __future__ import annotations

from typing import Any, List

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse

from unirep_core import __version__

from .ranking import ranking, score_matrix
from .routes_openai import get_service
from .schemas import TEIEmbedRequest, TEIError, TEIInfo, TEIRank, TEIRerankRequest
from .service import EmbeddingService

__all__ = ["router"]

TEI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": TEIError} for code in (400, 401, 413, 422, 500)
}

router = APIRouter(tags=["tei"], responses=TEI_ERRORS)


@router.post("/embed", response_model=List[List[float]], summary="Embed texts (TEI-compatible)")
async def embed(req: TEIEmbedRequest, svc: EmbeddingService = Depends(get_service)) -> JSONResponse:
    """Vectors are always unit norm (``normalize=false`` changes nothing). With ``truncate``
    false (TEI's default) an input over the model's token limit is refused with 413."""
    task = svc.resolve_task(req.prompt_name, param="prompt_name")
    dim = svc.resolve_dim(req.dimensions)
    items = await svc.prepare(svc.items_from(req.inputs, "inputs"), "inputs", task=task,
                              check_length=not req.truncate)
    vectors = await svc.embed(items, task, dim, param="inputs")
    return JSONResponse(vectors.tolist())


@router.post("/rerank", response_model=List[TEIRank], response_model_exclude_none=True,
             summary="Rerank texts against a query (TEI-compatible)")
async def rerank(req: TEIRerankRequest, svc: EmbeddingService = Depends(get_service)) -> JSONResponse:
    """``score`` is the calibrated probability of relevance (``raw_scores``: cosine similarity);
    sorted by descending score."""
    query = svc.items_from(req.query, "query")
    texts = svc.items_from(req.texts, "texts")
    scores, sims, _, _ = await score_matrix(svc, query, texts, svc.model.dim, query_param="query",
                                            document_param="texts")
    values = sims[0] if req.raw_scores else scores[0]
    out = []
    for i in ranking(scores[0]):
        row: dict[str, Any] = {"index": i, "score": float(values[i])}
        if req.return_text:
            row["text"] = req.texts[i]
        out.append(row)
    return JSONResponse(out)


@router.get("/info", response_model=TEIInfo, summary="Model and server limits (TEI-compatible)")
async def info(svc: EmbeddingService = Depends(get_service)) -> dict[str, Any]:
    max_len = svc.max_input_tokens or 0
    return {
        "model_id": svc.model_name,
        "model_sha": None,
        "model_dtype": str(next(svc.model.parameters()).dtype).replace("torch.", ""),
        "model_type": {"embedding": {"pooling": svc.model.config.pooling.get("mode", "mean")}},
        "max_concurrent_requests": 512,
        "max_input_length": max_len,
        "max_batch_tokens": max_len * svc.batcher.max_batch_size,
        "max_batch_requests": svc.batcher.max_batch_size,
        "max_client_batch_size": svc.limits.max_items,
        "auto_truncate": False,
        "tokenization_workers": 1,
        "version": __version__,
        "dimensions": list(svc.model.dims),
    }
