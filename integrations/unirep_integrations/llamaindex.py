"""LlamaIndex: ``UniRepEmbedding`` (a ``MultiModalEmbedding``) and ``UniRepRetriever``
(a ``BaseRetriever`` over any ``TwoStageStore``).

Install with ``pip install "unirep[llamaindex]"``.

``UniRepEmbedding`` serves as both ``embed_model`` and ``image_embed_model`` of
``MultiModalVectorStoreIndex``: texts and images land in one space, so text->text, text->image
and image->image retrieval all use the same model. Pass it explicitly (the index's default image
model is a CLIP that downloads) and set ``Settings.embed_model`` (its default is OpenAI).

``UniRepRetriever`` runs the store's two-stage Matryoshka search and returns ``NodeWithScore``
with the calibrated probability of relevance as the score: a ``TextNode`` for a text item, an
``ImageNode`` (``image_path`` set) for an item with an image.
"""
from __future__ import annotations

import asyncio
import io
import os
from typing import Any, List, Mapping, Optional

from unirep_core import UniRep
from unirep_core.shared import shared_model
from unirep_core.optional import require

require("llama_index.core", extra="llamaindex")

from llama_index.core.base.base_retriever import BaseRetriever  # noqa: E402
from llama_index.core.bridge.pydantic import Field, PrivateAttr  # noqa: E402
from llama_index.core.callbacks import CallbackManager  # noqa: E402
from llama_index.core.embeddings import MultiModalEmbedding  # noqa: E402
from llama_index.core.schema import ImageNode, ImageType, NodeWithScore, QueryBundle, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilters  # noqa: E402

from .base import Hit, TwoStageStore, parse_filter  # noqa: E402

__all__ = ["UniRepEmbedding", "UniRepRetriever", "to_store_filter"]

Embedding = List[float]

def _image_input(image: Any) -> Any:
    """LlamaIndex hands images as a path or a ``BytesIO``; UniRep takes paths, bytes or PIL."""
    if isinstance(image, io.IOBase):
        if hasattr(image, "getvalue"):
            return image.getvalue()
        return image.read()
    return image


class UniRepEmbedding(MultiModalEmbedding):
    """UniRep as a LlamaIndex ``MultiModalEmbedding``.

    ``model``: a registered name (``"unirep-mini"``), a saved model directory, or a ``UniRep``.
    ``dimensions``: Matryoshka size of the vectors (one of ``model.dims``; ``None`` = full).
    Queries use task ``query``, texts task ``document``; images carry no prefix.

    Example::

        emb = UniRepEmbedding("unirep-mini", dimensions=256)
        Settings.embed_model = emb
        index = MultiModalVectorStoreIndex.from_documents(docs, embed_model=emb, image_embed_model=emb)
    """

    dimensions: Optional[int] = Field(default=None, description="Matryoshka size; None = the model's full size.")
    device: Optional[str] = Field(default=None, description="Torch device; None = best available.")

    _model: Optional[UniRep] = PrivateAttr(default=None)

    def __init__(self, model: Any = "unirep-mini", *, dimensions: Optional[int] = None,
                 embed_batch_size: int = 32, device: Optional[str] = None, **kwargs: Any):
        if isinstance(model, (str, os.PathLike)):
            name, instance = os.fspath(model), None
        elif all(hasattr(model, a) for a in ("encode", "check_dim", "dims", "name")):
            name, instance = model.name, model
        else:
            raise ValueError(f"model must be a name, a directory or a UniRep instance, got {type(model).__name__}")
        kwargs.setdefault("model_name", name)
        super().__init__(dimensions=dimensions, embed_batch_size=embed_batch_size, device=device, **kwargs)
        if instance is not None:
            instance.check_dim(dimensions)  # fail now, not at the first call
            self._model = instance

    @classmethod
    def class_name(cls) -> str:
        return "UniRepEmbedding"

    @property
    def client(self) -> UniRep:
        """The UniRep model (loaded on first use, shared process-wide)."""
        if self._model is None:
            model = shared_model(self.model_name, device=self.device)
            model.check_dim(self.dimensions)
            self._model = model
        return self._model

    @property
    def size(self) -> int:
        """Length of the vectors this object returns."""
        return self.client.check_dim(self.dimensions)

    def _encode(self, *, text: Any = None, images: Any = None, task: str) -> List[Embedding]:
        return self.client.encode(text=text, images=images, task=task, embedding_dim=self.dimensions,
                                  batch_size=self.embed_batch_size, show_progress=False, convert_to="list")

    # -- text ---------------------------------------------------------------------------------
    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encode(text=[query], task="query")[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._encode(text=[text], task="document")[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        return self._encode(text=list(texts), task="document") if texts else []

    async def _aget_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    # -- images ------------------------------------------------------------------------------
    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._encode(images=[_image_input(img_file_path)], task="document")[0]

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return await asyncio.to_thread(self._get_image_embedding, img_file_path)

    def _get_image_embeddings(self, img_file_paths: List[ImageType]) -> List[Embedding]:
        images = [_image_input(p) for p in img_file_paths]
        return self._encode(images=images, task="document") if images else []

    async def _aget_image_embeddings(self, img_file_paths: List[ImageType]) -> List[Embedding]:
        return await asyncio.to_thread(self._get_image_embeddings, img_file_paths)


# -- retriever ------------------------------------------------------------------------------------
_OPS = {FilterOperator.EQ: "eq", FilterOperator.IN: "in", FilterOperator.GT: "gt", FilterOperator.GTE: "gte",
        FilterOperator.LT: "lt", FilterOperator.LTE: "lte"}


def to_store_filter(filters: MetadataFilters | Mapping[str, Any] | None) -> Optional[dict[str, Any]]:
    """The store's filter language from a dict (checked, passed through) or LlamaIndex
    ``MetadataFilters`` (AND of ``==``, ``in``, ``>``, ``>=``, ``<``, ``<=``)."""
    if filters is None:
        return None
    if isinstance(filters, Mapping):
        parse_filter(filters)
        return dict(filters)
    if not isinstance(filters, MetadataFilters):
        raise ValueError(f"filters must be a dict or MetadataFilters, got {type(filters).__name__}")
    if filters.condition not in (None, FilterCondition.AND) and len(filters.filters) > 1:
        raise ValueError(f"filter condition {filters.condition!r} is not supported; use AND")
    out: dict[str, dict[str, Any]] = {}
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            raise ValueError("nested MetadataFilters are not supported")
        if f.operator not in _OPS:
            raise ValueError(f"filter operator {f.operator.value!r} is not supported; use ==, in, >, >=, <, <=")
        conditions = out.setdefault(f.key, {})
        conditions[_OPS[f.operator]] = f.value
    spec = {k: (v["eq"] if list(v) == ["eq"] else v) for k, v in out.items()}
    parse_filter(spec)
    return spec


class UniRepRetriever(BaseRetriever):
    """Retrieve from any ``TwoStageStore`` (Qdrant, Milvus, Weaviate, Pinecone) by text, image
    (``QueryBundle.image_path``) or both; scores are calibrated probabilities.

    Example::

        retriever = UniRepRetriever(QdrantStore(model, "./index"), similarity_top_k=5)
        retriever.retrieve("Vietnamese noodle soup")
        retriever.retrieve(QueryBundle(query_str="", image_path="examples/images/pizza.png"))
    """

    def __init__(self, store: TwoStageStore, *, similarity_top_k: int = 4, candidates: int = 100,
                 filters: MetadataFilters | Mapping[str, Any] | None = None,
                 callback_manager: Optional[CallbackManager] = None, verbose: bool = False):
        for name, value in (("similarity_top_k", similarity_top_k), ("candidates", candidates)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.store = store
        self.similarity_top_k = similarity_top_k
        self.candidates = candidates
        self.filters = to_store_filter(filters)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        text = query_bundle.query_str or None
        image = query_bundle.embedding_image[0] if query_bundle.embedding_image else None
        options = dict(k=self.similarity_top_k, candidates=self.candidates, filter=self.filters)
        if text is None and image is None:
            if query_bundle.embedding is None:
                raise ValueError("the query has no text, no image_path and no embedding")
            hits = self.store.search_vector(query_bundle.embedding, **options)
        else:
            hits = self.store.search(text=text, image=_image_input(image), **options)
        return [NodeWithScore(node=_node(h), score=float(h.score)) for h in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)

    def retrieve_by_image(self, image: str | os.PathLike, text: Optional[str] = None) -> List[NodeWithScore]:
        """Retrieve with an image path (optionally together with a text)."""
        return self.retrieve(QueryBundle(query_str=text or "", image_path=os.fspath(image)))


def _node(hit: Hit) -> TextNode:
    if hit.source is not None:
        first = hit.source.split(" | ")[0]
        return ImageNode(id_=hit.id, text=hit.text or "", image_path=first, metadata=dict(hit.payload))
    return TextNode(id_=hit.id, text=hit.text or "", metadata=dict(hit.payload))
