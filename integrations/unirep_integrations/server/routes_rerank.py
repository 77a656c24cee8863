"""Rerank facade (Cohere/Jina shape) ``POST /v1/rerank`` and the score matrix ``POST /v1/score``.

``relevance_score`` is UniRep's calibrated probability of relevance: the same number a
two-stage search reports, comparable across queries.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse

from .errors import ApiError
from .ranking import ranking, score_matrix
from .routes_openai import OPENAI_ERRORS, get_service
from .schemas import RerankRequest, RerankResponse, ScoreRequest, ScoreResponse
from .service import EmbeddingService, usage

__all__ = ["router"]

router = APIRouter(tags=["rerank"], responses=OPENAI_ERRORS)

#: Largest score matrix one /v1/score request may ask for (queries x documents).
MAX_SCORE_CELLS = 1_000_000


@router.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True,
             summary="Rerank documents against a query (Cohere/Jina-compatible)")
async def rerank(req: RerankRequest, svc: EmbeddingService = Depends(get_service)) -> JSONResponse:
    dim = svc.resolve_dim(req.dimensions)
    query = svc.items_from(req.query, "query")
    documents = svc.items_from(req.documents, "documents")
    scores, _, q_items, d_items = await score_matrix(svc, query, documents, dim, query_param="query",
                                                     document_param="documents")
    order = ranking(scores[0])
    if req.top_n is not None:
        order = order[: req.top_n]
    results = []
    for i in order:
        row: dict[str, Any] = {"index": i, "relevance_score": float(scores[0, i])}
        if req.return_documents:
            row["document"] = {"text": documents[i].text}
        results.append(row)
    return JSONResponse({"results": results, "model": svc.model_name, "usage": usage(q_items + d_items)})


@router.post("/v1/score", response_model=ScoreResponse, summary="Calibrated score matrix of queries x documents")
async def score(req: ScoreRequest, svc: EmbeddingService = Depends(get_service)) -> JSONResponse:
    """``scores[i][j]`` = ``model.score(query_i, document_j)`` (calibrated P(relevant)) and
    ``similarities[i][j]`` their cosine, at the Matryoshka size ``dimensions`` (default: full)."""
    dim = svc.resolve_dim(req.dimensions)
    queries = svc.items_from(req.queries, "queries")
    documents = svc.items_from(req.documents, "documents")
    if len(queries) * len(documents) > MAX_SCORE_CELLS:
        raise ApiError(413, f"{len(queries)} queries x {len(documents)} documents is over the limit of "
                            f"{MAX_SCORE_CELLS} scores per request", code="too_many_items")
    scores, sims, q_items, d_items = await score_matrix(svc, queries, documents, dim, query_param="queries",
                                                        document_param="documents")
    return JSONResponse({"object": "score_matrix", "scores": scores.tolist(), "similarities": sims.tolist(),
                         "dimensions": dim, "model": svc.model_name, "usage": usage(q_items + d_items)})
