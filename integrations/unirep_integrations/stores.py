"""Open a ``TwoStageStore`` from a URI, importing only the adapter it names.

=============================  ==========================================
``qdrant:./dir``               Qdrant local mode on disk (the default)
``qdrant::memory:``            Qdrant in memory
``qdrant+http://host:6333``    Qdrant server
``milvus:./file.db``           Milvus Lite
``milvus+http://host:19530``   Milvus server
``weaviate+http://host:8080``  Weaviate server (gRPC on 50051)
``pinecone:INDEX``             Pinecone (``PINECONE_API_KEY``; ``PINECONE_HOST`` for a local/private control plane)
=============================  ==========================================
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from unirep_core import UniRep

from .base import TwoStageStore

__all__ = ["open_store", "SCHEMES"]

SCHEMES = ("qdrant", "milvus", "weaviate", "pinecone")


def open_store(uri: str, model: UniRep, *, collection: str = "unirep", **options: Any) -> TwoStageStore:
    scheme, _, rest = uri.partition(":")
    engine, _, transport = scheme.partition("+")
    if engine not in SCHEMES or not rest:
        raise ValueError(
            f"database URI {uri!r} not understood; use one of qdrant:./dir, qdrant+http://host:6333, "
            "milvus:./file.db, milvus+http://host:19530, weaviate+http://host:8080, pinecone:INDEX"
        )
    target = f"{transport}:{rest}" if transport else rest
    module = importlib.import_module(f"unirep_integrations.{engine}")
    if engine == "qdrant":
        return module.QdrantStore(model, target, collection=collection, **options)
    if engine == "milvus":
        return module.MilvusStore(model, target, collection=collection, **options)
    if engine == "weaviate":
        if not transport:
            raise ValueError("weaviate needs a server: weaviate+http://host:8080")
        return module.WeaviateStore(model, target, collection=collection, **options)
    options.setdefault("host", os.environ.get("PINECONE_HOST"))
    return module.PineconeStore(model, rest, namespace=collection if collection != "unirep" else "", **options)
