"""LangChain: ``UniRepEmbeddings`` (an ``Embeddings`` with ``embed_image``) and
``UniRepVectorStore`` (a ``VectorStore`` over any ``TwoStageStore``).

Install with ``pip install "unirep[langchain]"``.

``UniRepEmbeddings`` loads its model lazily and shares it process-wide per name (or directory)
and device, so many objects cost one model. ``UniRepVectorStore`` keeps two-stage Matryoshka
search underneath: the truncated vector finds ``candidates``, the full vector ranks them, and the
score it returns is the model's calibrated probability of relevance, which is also LangChain's
relevance score in ``[0, 1]``.

A store may also hold vectors of another LangChain ``Embeddings`` (for instance the
deterministic fake one of ``langchain-tests``): build the ``TwoStageStore`` on
``EmbeddingsModel(embeddings)`` instead of a ``UniRep``. Such a store has one vector size (stage 1
and stage 2 use the same vector) and its score is ``(1 + cosine) / 2``, not a calibrated
probability.
"""
from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from unirep_core import UniRep
from unirep_core.shared import shared_model
from unirep_core.optional import require

require("langchain_core", extra="langchain")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.vectorstores import VectorStore  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator  # noqa: E402

from .base import RESERVED_KEYS, Hit, TwoStageStore, content_id, parse_filter  # noqa: E402

__all__ = ["UniRepEmbeddings", "UniRepVectorStore", "EmbeddingsModel", "IMAGE_KEY"]

#: Metadata key under which a hit's image path(s) appear in a ``Document``.
IMAGE_KEY = "image_uri"

# -- embeddings -----------------------------------------------------------------------------------
class UniRepEmbeddings(BaseModel, Embeddings):
    """UniRep as a LangChain ``Embeddings``.

    ``model``: a registered name (``"unirep-mini"``), a saved model directory, or a ``UniRep``.
    ``dimensions``: the Matryoshka size of the vectors (one of ``model.dims``; ``None`` = full).
    Documents are embedded with task ``document`` and queries with task ``query``;
    ``embed_image(uris)`` embeds image files (LangChain's multimodal convention).

    Example::

        emb = UniRepEmbeddings(model="unirep-mini", dimensions=128)
        emb.embed_query("xin chào")            # 128 floats, unit norm
        emb.embed_image(["examples/images/sun.png"])
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    model: Union[str, Any] = Field(default="unirep-mini",
                                   description="Registered name, saved model directory, or a UniRep instance.")
    dimensions: Optional[int] = Field(default=None, description="Matryoshka size; None = the model's full size.")
    batch_size: int = Field(default=32, gt=0, description="Items per encoder batch.")
    show_progress: Optional[bool] = Field(
        default=None, description="Progress bar; None = shown automatically for long inputs.")
    device: Optional[str] = Field(default=None, description="Torch device; None = best available.")

    _client: Optional[UniRep] = PrivateAttr(default=None)

    @field_validator("model", mode="before")
    @classmethod
    def _check_model(cls, value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str):
            if not value:
                raise ValueError("model must be a registered name, a directory or a UniRep instance")
            return value
        if isinstance(value, UniRep) or _is_unirep_like(value):
            return value
        raise ValueError(f"model must be a name, a directory or a UniRep instance, got {type(value).__name__}")

    def model_post_init(self, __context: Any) -> None:
        if not isinstance(self.model, str):
            self._client = self.model
            self._client.check_dim(self.dimensions)  # fail now, not at the first call

    # -- model ------------------------------------------------------------------------------------
    @property
    def client(self) -> UniRep:
        """The UniRep model (loaded on first use, shared process-wide)."""
        if self._client is None:
            model = shared_model(self.model, device=self.device)
            model.check_dim(self.dimensions)
            self._client = model
        return self._client

    @property
    def size(self) -> int:
        """Length of the vectors this object returns."""
        return self.client.check_dim(self.dimensions)

    def _encode(self, *, text: Any = None, images: Any = None, task: str) -> list[list[float]]:
        return self.client.encode(text=text, images=images, task=task, embedding_dim=self.dimensions,
                                  batch_size=self.batch_size, show_progress=self.show_progress,
                                  convert_to="list")

    # -- Embeddings -----------------------------------------------------------------------------
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed passages (task ``document``)."""
        texts = list(texts)
        return self._encode(text=texts, task="document") if texts else []

    def embed_query(self, text: str) -> list[float]:
        """Embed a search query (task ``query``)."""
        return self._encode(text=[text], task="query")[0]

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        """Embed images given as file paths (or PIL images / bytes)."""
        uris = list(uris)
        return self._encode(images=uris, task="document") if uris else []

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)

    async def aembed_image(self, uris: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_image, uris)


def _is_unirep_like(value: Any) -> bool:
    return all(hasattr(value, a) for a in ("encode", "check_dim", "dims", "name"))


# -- any LangChain Embeddings as the model of a TwoStageStore ---------------------------------------
class _UnitInterval:
    """Score of a store on foreign vectors: ``(1 + cosine) / 2`` (monotonic, in [0, 1], not calibrated)."""

    fitted = False

    def __call__(self, cosine: np.ndarray, dim: int) -> np.ndarray:
        return np.clip((np.asarray(cosine, dtype=np.float64) + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


class EmbeddingsModel:
    """Adapts a LangChain ``Embeddings`` to what a ``TwoStageStore`` needs from its model:
    ``name``, ``dims``/``dim``, ``check_dim``, ``encode(text=, task=)``, ``calibrator`` and
    ``config.limits``. Text only; one vector size (``size``, probed with one query if not given).

    Example::

        store = QdrantStore(EmbeddingsModel(OpenAIEmbeddings()), ":memory:")
        vs = UniRepVectorStore(store)
    """

    def __init__(self, embeddings: Embeddings, *, name: str | None = None, size: int | None = None):
        self.embeddings = embeddings
        self.name = name or f"lc-{type(embeddings).__name__}"
        if size is None:
            size = getattr(embeddings, "size", None)
        if size is None:
            size = len(embeddings.embed_query("dimension probe"))
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        self.dims = (size,)
        self.config = SimpleNamespace(limits={})
        self.calibrator = _UnitInterval()

    @property
    def dim(self) -> int:
        return self.dims[0]

    def check_dim(self, embedding_dim: int | None) -> int:
        if embedding_dim is not None and embedding_dim != self.dim:
            raise ValueError(f"embedding_dim={embedding_dim!r} is not allowed; allowed sizes: {list(self.dims)}")
        return self.dim

    def encode(self, text: Any = None, images: Any = None, *, task: str = "document",
               embedding_dim: int | None = None, **_: Any) -> np.ndarray:
        self.check_dim(embedding_dim)
        if images is not None and any(i is not None for i in images):
            raise ValueError(f"{type(self.embeddings).__name__} embeds text only")
        texts = [text] if isinstance(text, str) else list(text or [])
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"item {i}: text is empty or not a string")
        if task == "query":
            vectors = [self.embeddings.embed_query(t) for t in texts]
        elif task == "document":
            vectors = self.embeddings.embed_documents(texts)
        else:
            raise ValueError(f"unknown task {task!r}; expected one of ['query', 'document']")
        out = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
        if out.shape[1] != self.dim:
            raise ValueError(f"{type(self.embeddings).__name__} returned vectors of size {out.shape[1]}, "
                             f"expected {self.dim}")
        return out

    def __repr__(self) -> str:
        return f"EmbeddingsModel({type(self.embeddings).__name__}, size={self.dim})"


# -- vector store ---------------------------------------------------------------------------------
class UniRepVectorStore(VectorStore):
    """A LangChain ``VectorStore`` over any ``TwoStageStore`` (Qdrant, Milvus, Weaviate, Pinecone).

    Search is the store's two-stage search; scores are calibrated probabilities (higher is
    better), returned as they are by ``similarity_search_with_score`` and as relevance scores.
    ``filter`` is the store's filter language: ``{"lang": "vi"}``, ``{"year": {"gte": 2000}}``.
    Adding an id that exists replaces that item (LangChain's upsert semantics); texts without an
    id get a content-hash id, so adding the same text twice stores it once.

    Example::

        store = QdrantStore(UniRep.from_pretrained("unirep-mini"), "./index")
        vs = UniRepVectorStore(store)
        vs.add_texts(["Phở là món ăn Việt Nam."], metadatas=[{"lang": "vi"}])
        vs.add_images(["examples/images/steaming-bowl.png"])
        vs.similarity_search_with_relevance_scores("Vietnamese food", k=3, filter={"lang": "vi"})
    """

    def __init__(self, store: TwoStageStore, *, candidates: int = 100):
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be a positive integer, got {candidates!r}")
        self.store = store
        self.candidates = candidates

    @property
    def embeddings(self) -> Embeddings:
        model = self.store.model
        if isinstance(model, EmbeddingsModel):
            return model.embeddings
        return UniRepEmbeddings(model=model, dimensions=self.store.full_dim)

    # -- writes ------------------------------------------------------------------------------------
    def add_texts(self, texts: Iterable[str], metadatas: Optional[list[dict[str, Any]]] = None, *,
                  ids: Optional[list[Optional[str]]] = None, **kwargs: Any) -> list[str]:
        """Embed (task ``document``) and upsert texts; returns their ids in order."""
        texts = list(texts)
        metas = _column(metadatas, len(texts), "metadatas")
        given = _column(ids, len(texts), "ids")
        for i, meta in enumerate(metas):
            _check_metadata(i, meta)
        if not texts:
            return []
        final = [str(g) if g is not None else content_id(self.store.model.name, t, [])
                 for g, t in zip(given, texts)]
        vectors = self.store.model.encode(text=texts, task="document", embedding_dim=self.store.full_dim,
                                          batch_size=self.store.encode_batch_size)
        result = self.store.add_embeddings(final, vectors, metadatas=[dict(m or {}) for m in metas], texts=texts)
        _raise_failures(result.failed, len(texts))
        return final

    def add_images(self, uris: Sequence[Any], metadatas: Optional[list[dict[str, Any]]] = None, *,
                   ids: Optional[list[Optional[str]]] = None, **kwargs: Any) -> list[str]:
        """Embed and store images (file paths; one path or a list of paths per item).

        Ids default to a content hash of the image bytes. An explicit id that is already stored
        is replaced (delete, then add).
        """
        uris = list(uris)
        metas = _column(metadatas, len(uris), "metadatas")
        given = _column(ids, len(uris), "ids")
        if not uris:
            return []
        final = [str(g) if g is not None else content_id(self.store.model.name, None, _as_list(u))
                 for g, u in zip(given, uris)]
        result = self.store.add(images=uris, metadatas=metas, ids=final)
        replace = [i for i, item_id in enumerate(final) if given[i] is not None and item_id in set(result.skipped)]
        if replace:  # LangChain's upsert semantics for an explicit id that is already stored
            self.store.delete([final[i] for i in replace])
            again = self.store.add(images=[uris[i] for i in replace], metadatas=[metas[i] for i in replace],
                                   ids=[final[i] for i in replace])
            result.failed.update(again.failed)
        _raise_failures(result.failed, len(uris))
        return final

    def delete(self, ids: Optional[list[str]] = None, **kwargs: Any) -> bool:
        """Delete items by id (unknown ids are ignored). Deleting everything (``ids=None``) is
        not supported: drop the collection in the database instead."""
        if ids is None:
            raise ValueError("delete() needs ids; UniRepVectorStore does not delete a whole collection")
        self.store.delete(list(ids))
        return True

    # -- reads ---------------------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Stored documents for these ids, in the order given (unknown ids left out)."""
        wanted = list(dict.fromkeys(str(i) for i in ids))
        if not wanted:
            return []
        return [_to_document(h) for h in self.store.get(wanted)]

    def similarity_search(self, query: str, k: int = 4, filter: Optional[Mapping[str, Any]] = None,
                          **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: Optional[Mapping[str, Any]] = None, *,
                                     candidates: Optional[int] = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """Documents and their calibrated scores (probability of relevance, higher is better)."""
        parse_filter(filter)  # a bad filter fails before any encoding
        vector = self.store.model.encode(text=[query], task="query")[0]
        return self._search(vector, k, filter, candidates)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4,
                                    filter: Optional[Mapping[str, Any]] = None, *,
                                    candidates: Optional[int] = None, **kwargs: Any) -> list[Document]:
        """Search with a full-size query vector (e.g. from ``embeddings.embed_query``)."""
        return [doc for doc, _ in self._search(embedding, k, filter, candidates)]

    def similarity_search_by_image(self, uri: Any, k: int = 4, filter: Optional[Mapping[str, Any]] = None, *,
                                   candidates: Optional[int] = None, **kwargs: Any) -> list[Document]:
        """Search with an image (path, PIL image or bytes)."""
        return [doc for doc, _ in self.similarity_search_by_image_with_score(
            uri, k, filter, candidates=candidates)]

    def similarity_search_by_image_with_score(self, uri: Any, k: int = 4, filter: Optional[Mapping[str, Any]] = None,
                                              *, candidates: Optional[int] = None,
                                              **kwargs: Any) -> list[tuple[Document, float]]:
        parse_filter(filter)
        vector = self.store.model.encode(images=[uri], task="query")[0]
        return self._search(vector, k, filter, candidates)

    def _similarity_search_with_relevance_scores(self, query: str, k: int = 4,
                                                 **kwargs: Any) -> list[tuple[Document, float]]:
        # The calibrated score already is a relevance score in [0, 1]: no conversion.
        return self.similarity_search_with_score(query, k, **kwargs)

    def _select_relevance_score_fn(self):  # noqa: ANN202 - LangChain's signature
        return _identity

    def _search(self, vector: Any, k: int, filter: Optional[Mapping[str, Any]],
                candidates: Optional[int]) -> list[tuple[Document, float]]:
        hits = self.store.search_vector(vector, k=k, candidates=candidates or self.candidates, filter=filter)
        return [(_to_document(h), float(h.score)) for h in hits]

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: Optional[list[dict[str, Any]]] = None,
                   *, ids: Optional[list[Optional[str]]] = None, store: Optional[TwoStageStore] = None,
                   db: str = "qdrant::memory:", collection: str = "langchain", candidates: int = 100,
                   **store_options: Any) -> "UniRepVectorStore":
        """A store filled with ``texts``.

        Uses ``store`` if given, else opens ``db`` (``unirep_integrations.stores`` URIs:
        ``qdrant:./dir``, ``milvus:./x.db``, ...). With ``UniRepEmbeddings`` the store holds
        UniRep's two vector sizes; with another ``Embeddings`` it holds that model's vectors
        (see ``EmbeddingsModel``).
        """
        if store is None:
            from .stores import open_store

            if isinstance(embedding, UniRepEmbeddings):
                store_options.setdefault("full_dim", embedding.dimensions)
                model: Any = embedding.client
            else:
                model = EmbeddingsModel(embedding)
            store = open_store(db, model, collection=collection, **store_options)
        vs = cls(store, candidates=candidates)
        vs.add_texts(texts, metadatas, ids=ids)
        return vs


def _identity(score: float) -> float:
    return score


def _to_document(hit: Hit) -> Document:
    metadata = dict(hit.payload)
    if hit.source is not None:
        metadata.setdefault(IMAGE_KEY, hit.source)
    return Document(id=hit.id, page_content=hit.text or "", metadata=metadata)


def _column(values: Optional[Sequence[Any]], n: int, what: str) -> list[Any]:
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} items")
    return values


def _check_metadata(index: int, meta: Any) -> None:
    if meta is None:
        return
    if not isinstance(meta, Mapping):
        raise ValueError(f"item {index}: metadata must be a dict, got {type(meta).__name__}")
    bad = [k for k in meta if k in RESERVED_KEYS]
    if bad:
        raise ValueError(f"item {index}: metadata uses reserved keys {bad}")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _raise_failures(failed: Mapping[str, str], total: int) -> None:
    if failed:
        shown = "; ".join(f"{i}: {why}" for i, why in list(failed.items())[:5])
        raise ValueError(f"{len(failed)} of {total} items could not be stored ({shown}); the others were stored")
