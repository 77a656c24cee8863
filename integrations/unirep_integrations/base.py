"""What every vector-database adapter shares: the ``TwoStageStore`` contract, content-hash
ids, the small filter language, batching with retries, and per-item failure reports.

Stage 1 searches the truncated (coarse) vector for ``candidates`` hits; stage 2 ranks those by
the full vector; ``Hit.score`` is the model's calibrated probability for the full similarity.
Adapters implement the native calls (``_upsert``, ``_two_stage``, ...); the model, ids, batching
and scoring live here so every database behaves the same.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from unirep_core import UniRep
from unirep_core.inputs import DEFAULT_MAX_IMAGE_PIXELS, load_image

__all__ = [
    "Hit", "AddResult", "Record", "Condition", "TwoStageStore",
    "parse_filter", "content_id", "id_to_uuid", "vector_name", "default_coarse_dim", "RESERVED_KEYS",
]

logger = logging.getLogger(__name__)

#: Payload keys the stores use for themselves; user metadata may not use them.
RESERVED_KEYS = ("_id", "_text", "_source")
_ID_NAMESPACE = uuid.UUID("6f1c1d3e-55a4-4c1b-9f0e-2b7f3c1a9e10")


@dataclass
class Hit:
    """One search result. ``score``: calibrated P(relevant); ``similarity``: full-vector cosine;
    ``payload``: the metadata stored with the item; ``text``/``source``: what was embedded."""

    id: str
    score: float
    similarity: float
    payload: dict[str, Any]
    text: str | None = None
    source: str | None = None


@dataclass
class AddResult:
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already stored (same id)
    failed: dict[str, str] = field(default_factory=dict)  # id -> reason

    def merge(self, other: "AddResult") -> None:
        self.added += other.added
        self.skipped += other.skipped
        self.failed.update(other.failed)


@dataclass
class Record:
    """A row ready for a database: both vectors and the payload (with reserved keys)."""

    id: str  # the user-facing id
    key: str  # the database key (a UUID string derived from ``id``)
    coarse: list[float]
    full: list[float]
    payload: dict[str, Any]


@dataclass(frozen=True)
class Condition:
    """``field op value`` with op in ``eq``, ``in``, ``gt``, ``gte``, ``lt``, ``lte``."""

    field: str
    op: str
    value: Any


_RANGE_OPS = ("gt", "gte", "lt", "lte")


def parse_filter(spec: Mapping[str, Any] | None) -> list[Condition]:
    """The filter language: ``{"lang": "vi"}`` (equality), ``{"lang": {"in": ["vi", "en"]}}``,
    ``{"year": {"gte": 2000, "lt": 2020}}``; several keys are ANDed."""
    if not spec:
        return []
    if not isinstance(spec, Mapping):
        raise ValueError(f"filter must be a dict, got {type(spec).__name__}")
    out: list[Condition] = []
    for key, value in spec.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key):
            raise ValueError(f"filter field {key!r}: use letters, digits and '_' (starting with a letter)")
        if isinstance(value, Mapping):
            if not value:
                raise ValueError(f"filter field {key!r}: empty condition")
            for op, operand in value.items():
                if op == "in":
                    if not isinstance(operand, (list, tuple)) or not operand:
                        raise ValueError(f"filter field {key!r}: 'in' needs a non-empty list")
                    _check_scalar(key, operand)
                    out.append(Condition(key, "in", list(operand)))
                elif op in _RANGE_OPS:
                    if isinstance(operand, bool) or not isinstance(operand, (int, float)):
                        raise ValueError(f"filter field {key!r}: {op!r} needs a number, got {operand!r}")
                    out.append(Condition(key, op, operand))
                elif op == "eq":
                    _check_scalar(key, [operand])
                    out.append(Condition(key, "eq", operand))
                else:
                    raise ValueError(f"filter field {key!r}: unknown operator {op!r}; use eq, in, gt, gte, lt, lte")
        else:
            _check_scalar(key, [value])
            out.append(Condition(key, "eq", value))
    return out


def _check_scalar(key: str, values: Iterable[Any]) -> None:
    for v in values:
        if not isinstance(v, (str, int, float, bool)):
            raise ValueError(f"filter field {key!r}: values must be strings, numbers or booleans, got {v!r}")


def matches(payload: Mapping[str, Any], conditions: Sequence[Condition]) -> bool:
    """Reference semantics of the filter language (used by tests and client-side fallbacks)."""
    for c in conditions:
        if c.field not in payload:
            return False
        v = payload[c.field]
        if c.op == "eq" and v != c.value:
            return False
        if c.op == "in" and v not in c.value:
            return False
        if c.op in _RANGE_OPS:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return False
            if not {"gt": v > c.value, "gte": v >= c.value, "lt": v < c.value, "lte": v <= c.value}[c.op]:
                return False
    return True


def _image_bytes(image: Any) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    return Path(os.fspath(image)).read_bytes()


def content_id(model_name: str, text: str | None, images: Sequence[Any]) -> str:
    """Stable id of an item's content: the same text and image bytes under the same model
    always give the same id, so re-adding an item stores it once."""
    h = hashlib.sha256(model_name.encode())
    h.update(b"\0text\0" + (text or "").encode())
    for img in images:
        h.update(b"\0image\0" + hashlib.sha256(_image_bytes(img)).digest())
    return h.hexdigest()[:32]


def id_to_uuid(item_id: str) -> str:
    """Database key for a user id: content ids are already 32 hex digits (used as they are);
    any other string maps deterministically through UUID5."""
    if re.fullmatch(r"[0-9a-f]{32}", item_id):
        return str(uuid.UUID(item_id))
    return str(uuid.uuid5(_ID_NAMESPACE, item_id))


def vector_name(model_name: str, dim: int) -> str:
    """Vector/field name for a model and size, e.g. ``unirep_mini_128``: one collection can
    hold vectors of several models side by side."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", model_name).strip("_").lower() + f"_{dim}"


def default_coarse_dim(dims: Sequence[int]) -> int:
    """The largest allowed size at most a third of the full one (so the coarse index is
    <= 1/3 of the memory), or the smallest size if none is that small."""
    full = dims[-1]
    small = [d for d in dims[:-1] if d * 3 <= full]
    return small[-1] if small else dims[0]


def _source_of(image: Any) -> str | None:
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return None


class TwoStageStore(ABC):
    """Base class of the database adapters. Subclasses implement the ``_`` methods."""

    #: Items per write request; adapters lower it to their database's request limits.
    write_batch_size = 256
    #: Attempts per write request on transient errors (connection, 429, 5xx).
    max_attempts = 4

    def __init__(self, model: UniRep, *, collection: str = "unirep", coarse_dim: int | None = None,
                 full_dim: int | None = None, encode_batch_size: int = 32):
        self.model = model
        self.collection = collection
        self.full_dim = model.check_dim(full_dim)
        self.coarse_dim = model.check_dim(coarse_dim if coarse_dim is not None else default_coarse_dim(model.dims))
        if self.coarse_dim > self.full_dim:
            raise ValueError(f"coarse_dim {self.coarse_dim} is larger than full_dim {self.full_dim}")
        self.coarse_name = vector_name(model.name, self.coarse_dim)
        self.full_name = vector_name(model.name, self.full_dim)
        self.encode_batch_size = encode_batch_size
        self.max_image_pixels = int(model.config.limits.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))

    # -- what adapters implement ------------------------------------------------------------
    @abstractmethod
    def _upsert(self, records: Sequence[Record]) -> None:
        """Write records (insert or replace by key). Raise on failure."""

    @abstractmethod
    def _existing(self, keys: Sequence[str]) -> set[str]:
        """Which of these keys are stored."""

    @abstractmethod
    def _two_stage(self, coarse: list[float], full: list[float], k: int, candidates: int,
                   conditions: Sequence[Condition]) -> list[tuple[str, float, dict[str, Any]]]:
        """(key, full cosine, payload) of the best ``k`` by full vector among the best
        ``candidates`` by coarse vector, natively in the database."""

    @abstractmethod
    def _delete(self, keys: Sequence[str]) -> None: ...

    @abstractmethod
    def count(self) -> int:
        """Number of stored items."""

    @abstractmethod
    def _get(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``{key: payload}`` (reserved keys included) for the stored keys among ``keys``."""

    def _validate(self, record: Record) -> str | None:
        """Reason this record cannot be stored (e.g. metadata over a size limit), else None."""
        return None

    def _is_transient(self, error: BaseException) -> bool:
        """Whether a failed write is worth retrying."""
        return isinstance(error, (ConnectionError, TimeoutError))

    # -- the contract -----------------------------------------------------------------------
    def add(self, texts: Sequence[str | None] | None = None, images: Sequence[Any] | None = None,
            metadatas: Sequence[Mapping[str, Any] | None] | None = None, ids: Sequence[str] | None = None,
            *, progress: Callable[[int], None] | None = None) -> AddResult:
        """Embed and store items (text, image(s) or both, zipped by position).

        Ids default to a content hash, so adding the same item again is skipped, not duplicated.
        Items that cannot be embedded or stored are reported in ``AddResult.failed`` by id;
        the rest still land. ``progress`` is called with the number of items handled.
        """
        n = _common_length(texts=texts, images=images, metadatas=metadatas, ids=ids)
        result = AddResult()
        for start in range(0, n, self.write_batch_size):
            stop = min(n, start + self.write_batch_size)
            result.merge(self._add_batch(
                [texts[i] if texts is not None else None for i in range(start, stop)],
                [_image_list(images[i]) if images is not None else [] for i in range(start, stop)],
                [dict(metadatas[i] or {}) if metadatas is not None else {} for i in range(start, stop)],
                [ids[i] if ids is not None else None for i in range(start, stop)],
            ))
            if progress is not None:
                progress(stop - start)
        return result

    def search(self, text: str | None = None, image: Any = None, *, k: int = 10, candidates: int = 100,
               filter: Mapping[str, Any] | None = None) -> list[Hit]:
        """Two-stage search by text, image or both; hits sorted by calibrated score."""
        parse_filter(filter)  # fail on a bad filter before encoding
        query = self.model.encode(text=[text] if text is not None else None,
                                  images=[image] if image is not None else None, task="query")[0]
        return self.search_vector(query, k=k, candidates=candidates, filter=filter)

    def get(self, ids: Sequence[str]) -> list[Hit]:
        """Stored items by id, in the order given (unknown ids left out); score and
        similarity are NaN since there is no query."""
        if isinstance(ids, str):
            ids = [ids]
        keys = list(dict.fromkeys(id_to_uuid(str(i)) for i in ids))
        rows: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), self.write_batch_size):
            rows.update(self._retry(self._get, keys[start : start + self.write_batch_size]))
        return [_hit(k, math.nan, math.nan, rows[k]) for k in keys if k in rows]

    def delete(self, ids: Sequence[str]) -> None:
        """Remove items by id (unknown ids are ignored)."""
        if isinstance(ids, str):
            ids = [ids]
        keys = [id_to_uuid(i) for i in ids]
        for start in range(0, len(keys), self.write_batch_size):
            self._retry(self._delete, keys[start : start + self.write_batch_size])

    # -- internals ------------------------------------------------------------------------
    def _add_batch(self, texts: list[str | None], images: list[list[Any]], metas: list[dict[str, Any]],
                   ids: list[str | None]) -> AddResult:
        result = AddResult()
        todo: list[int] = []
        final_ids: list[str] = []
        max_chars = int(self.model.config.limits.get("max_text_chars", 0))
        for i, (t, ims, meta, given) in enumerate(zip(texts, images, metas, ids)):
            try:
                bad = [k for k in meta if k in RESERVED_KEYS]
                if bad:
                    raise ValueError(f"metadata uses reserved keys {bad}")
                if t is None and not ims:
                    raise ValueError("item has neither text nor image")
                if t is not None and (not isinstance(t, str) or not t.strip()):
                    raise ValueError("text is empty or not a string")
                if t is not None and max_chars and len(t) > max_chars:
                    raise ValueError(f"text has {len(t)} characters, over the limit of {max_chars}")
                item_id = str(given) if given is not None else content_id(self.model.name, t, ims)
            except (ValueError, OSError) as e:
                item_id = str(given) if given is not None else f"#{i}"
                result.failed[item_id] = str(e)
                final_ids.append(item_id)
                continue
            final_ids.append(item_id)
            todo.append(i)
        existing = self._retry(self._existing, [id_to_uuid(final_ids[i]) for i in todo]) if todo else set()
        decoded: dict[int, list[Image.Image]] = {}
        ready: list[int] = []
        for i in todo:
            key = id_to_uuid(final_ids[i])
            if key in existing:  # stored before, or earlier in this batch
                result.skipped.append(final_ids[i])
                continue
            existing.add(key)
            try:  # decode here so one bad image fails its item, not the batch
                decoded[i] = [load_image(im, index=i, position=j, max_pixels=self.max_image_pixels)
                              for j, im in enumerate(images[i])]
            except ValueError as e:
                result.failed[final_ids[i]] = str(e).split(": ", 1)[-1]
                continue
            ready.append(i)
        if not ready:
            return result
        vectors = self.model.encode(
            text=[texts[i] for i in ready], images=[decoded[i] or None for i in ready],
            task="document", embedding_dim=self.full_dim, batch_size=self.encode_batch_size, show_progress=False,
        )
        payloads = []
        for i in ready:
            payload = dict(metas[i])
            payload["_id"] = final_ids[i]
            if texts[i] is not None:
                payload["_text"] = texts[i]
            sources = [s for s in (_source_of(im) for im in images[i]) if s]
            if sources:
                payload["_source"] = sources[0] if len(sources) == 1 else " | ".join(sources)
            payloads.append(payload)
        self._write(self._records([final_ids[i] for i in ready], vectors, payloads), result)
        return result

    def _records(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> list[Record]:
        full = np.asarray(vectors, dtype=np.float32)[:, : self.full_dim]
        full = full / np.linalg.norm(full, axis=1, keepdims=True)
        coarse = full[:, : self.coarse_dim] / np.linalg.norm(full[:, : self.coarse_dim], axis=1, keepdims=True)
        return [Record(i, id_to_uuid(i), c.tolist(), f.tolist(), p) for i, c, f, p in zip(ids, coarse, full, payloads)]

    def add_embeddings(self, ids: Sequence[str], vectors: Any, metadatas: Sequence[Mapping[str, Any] | None] | None = None,
                       texts: Sequence[str | None] | None = None) -> AddResult:
        """Store vectors computed elsewhere (full size, e.g. by a distributed encoder) under ids."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] < self.full_dim:
            raise ValueError(f"vectors must be (n, >= {self.full_dim}), got {vectors.shape}")
        for name, column in (("vectors", vectors), ("metadatas", metadatas), ("texts", texts)):
            if column is not None and len(column) != len(ids):
                raise ValueError(f"{name} has {len(column)} entries for {len(ids)} ids")
        result = AddResult()
        for start in range(0, len(ids), self.write_batch_size):
            stop = min(len(ids), start + self.write_batch_size)
            payloads = []
            for i in range(start, stop):
                payload = dict((metadatas[i] if metadatas is not None else None) or {})
                payload["_id"] = str(ids[i])
                if texts is not None and texts[i] is not None:
                    payload["_text"] = texts[i]
                payloads.append(payload)
            self._write(self._records([str(i) for i in ids[start:stop]], vectors[start:stop], payloads), result)
        return result

    def search_vector(self, vector: Any, *, k: int = 10, candidates: int = 100,
                      filter: Mapping[str, Any] | None = None) -> list[Hit]:
        """Two-stage search with a query vector computed elsewhere (full size)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be a positive integer, got {candidates!r}")
        q = np.asarray(vector, dtype=np.float32).ravel()
        if q.shape[0] < self.full_dim:
            raise ValueError(f"query vector has size {q.shape[0]}, needs at least {self.full_dim}")
        conditions = parse_filter(filter)
        coarse = q[: self.coarse_dim] / np.linalg.norm(q[: self.coarse_dim])
        full = q[: self.full_dim] / np.linalg.norm(q[: self.full_dim])
        rows = self._two_stage(coarse.tolist(), full.tolist(), k, max(candidates, k), conditions)
        if not rows:
            return []
        scores = self.model.calibrator(np.array([r[1] for r in rows], dtype=np.float32), self.full_dim)
        hits = [_hit(key, float(s), float(p), payload) for (key, s, payload), p in zip(rows, scores)]
        hits.sort(key=lambda h: -h.score)
        return hits[:k]

    def _write(self, records: list[Record], result: AddResult) -> None:
        valid = []
        for r in records:
            reason = self._validate(r)
            if reason:
                result.failed[r.id] = reason
            else:
                valid.append(r)
        self._write_valid(valid, result)

    def _write_valid(self, records: list[Record], result: AddResult) -> None:
        if not records:
            return
        try:
            self._retry(self._upsert, records)
            result.added += [r.id for r in records]
        except Exception as e:  # noqa: BLE001 - isolate the bad record(s), keep the rest
            if len(records) == 1:
                result.failed[records[0].id] = f"{type(e).__name__}: {e}"
                return
            logger.warning("batch write of %d items failed (%s); retrying one by one", len(records), e)
            for r in records:
                self._write_valid([r], result)

    def _retry(self, fn: Callable[..., Any], *args: Any) -> Any:
        delay = 0.5
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001
                if attempt == self.max_attempts or not self._is_transient(e):
                    raise
                logger.warning("transient error (%s), retry %d/%d in %.1fs", e, attempt, self.max_attempts - 1, delay)
                time.sleep(delay)
                delay *= 2

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(collection={self.collection!r}, coarse={self.coarse_name}, "
                f"full={self.full_name})")


def _hit(key: str, similarity: float, score: float, payload: dict[str, Any]) -> Hit:
    payload = dict(payload)
    item_id = str(payload.pop("_id", key))
    text = payload.pop("_text", None)
    source = payload.pop("_source", None)
    return Hit(item_id, score, similarity, payload, text, source)


def _image_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _common_length(**columns: Sequence[Any] | None) -> int:
    given = {k: len(v) for k, v in columns.items() if v is not None}
    if not given or not any(k in given for k in ("texts", "images")):
        raise ValueError("add() needs texts=, images= or both")
    if isinstance(columns.get("texts"), str):
        raise ValueError("texts must be a list of strings, not a single string")
    if len(set(given.values())) > 1:
        raise ValueError(f"add() columns have different lengths: {given}")
    return next(iter(given.values()))
