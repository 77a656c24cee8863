"""Query-vs-documents scoring shared by ``/rerank`` (TEI) and ``/v1/rerank`` + ``/v1/score``.

Queries are embedded with the ``query`` task and documents with ``document``, both through the
batcher (concurrently); scores are ``model.score`` (calibrated P(relevant)) and ``model.similarity``
(cosine) of those vectors at the requested Matryoshka size.
"""
from __future__ import annotations

import asyncio
import numpy as np

from .service import EmbeddingService, Prepared, RawInput

__all__ = ["score_matrix", "ranking"]


async def score_matrix(svc: EmbeddingService, queries: list[RawInput], documents: list[RawInput], dim: int, *,
                       query_param: str, document_param: str
                       ) -> tuple[np.ndarray, np.ndarray, list[Prepared], list[Prepared]]:
    """(scores, similarities, prepared queries, prepared documents); matrices are queries x documents."""
    q_items = await svc.prepare(queries, query_param, task="query")
    d_items = await svc.prepare(documents, document_param, task="document")
    q, d = await asyncio.gather(svc.embed(q_items, "query", dim, param=query_param),
                                svc.embed(d_items, "document", dim, param=document_param))
    return svc.model.score(q, d), svc.model.similarity(q, d), q_items, d_items


def ranking(scores: np.ndarray) -> list[int]:
    """Indices by descending score; ties keep document order."""
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))

