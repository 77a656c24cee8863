"""Pinecone: one dense vector per record per index, so two-stage search uses two indexes.

``mode="two_index"`` (default): a coarse index (``coarse_dim``, e.g. 128) and a full index
(``full_dim``), named ``{index}-{model}-{dim}``. Stage 1 queries the coarse index for
``candidates`` ids (metadata filter applied there); stage 2 queries the *full* index with the full
query vector, ``topK=k`` and the filter ``{"_key": {"$in": candidate ids}}``, so Pinecone scores the
candidates by the full vector and returns only the ``k`` best with their metadata. Pinecone has no
id-restricted query, hence the ``_key`` metadata field on the full index. The alternative, fetching
the candidates' full vectors and rescoring here, is also one round trip but ships
``candidates x full_dim`` floats as JSON (about 2 MB for 100 x 2048) instead of ``k`` small
matches (tens of KB), and needs URL-length chunking.

``mode="one_index"``: only the full index; a search is one query on it with ``topK=k``. Its
scores are already the full cosine, so there is nothing to rescore (``candidates`` is unused) and
no memory is saved: use it when the coarse index is not worth a second index.

What lives where: the coarse index holds the user metadata (for filtering) and nothing else; the
full index holds the whole payload (user metadata, ``_id``, ``_text``, ``_source``) plus ``_key``.
Writes go to the full index first and the coarse index second, deletes the other way round, and
existence and ``count()`` are read from the coarse index: an item counts once it is searchable.

Pinecone limits handled here: metadata at most 40 KB per record (checked per item, so one large
item fails alone, by id), values strings / numbers / booleans / lists of strings (numbers come back
as floats; nulls would be dropped, so they are refused), upsert requests at most 2 MB and 1000
vectors (batches are split by their encoded size), ids at most 512 characters, ``topK`` at most
10,000 (``candidates`` is clamped, ``k`` above it is an error), fetch and delete in chunks.

Reads are eventually consistent on Pinecone: a search or ``count()`` right after a write may not
see it yet (``count()`` comes from ``describe_index_stats``, which lags the most).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Sequence
from urllib.parse import quote

from unirep_core import UniRep
from unirep_core.optional import require

from .base import RESERVED_KEYS, Condition, Record, TwoStageStore

__all__ = ["PineconeStore", "pinecone_filter", "index_name"]

logger = logging.getLogger(__name__)

MODES = ("two_index", "one_index")
#: Metadata field on the full index holding the record id (Pinecone cannot filter on ids).
KEY_FIELD = "_key"
MAX_METADATA_BYTES = 40 * 1024
#: Target size of one upsert request; Pinecone's limit is 2 MB.
MAX_REQUEST_BYTES = 2_000_000
MAX_UPSERT_VECTORS = 1000
MAX_TOP_K = 10_000
MAX_ID_CHARS = 512
#: Ids per fetch/delete request, and the query-string budget of one fetch.
MAX_IDS_PER_REQUEST = 1000
MAX_FETCH_QUERY_BYTES = 6000
_MAX_INDEX_NAME = 45
_MAX_SAFE_INT = 2**53
_OPS = {"eq": "$eq", "in": "$in", "gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte"}

try:  # the SDK encodes request bodies with orjson; size them the same way
    import orjson as _orjson

    def _json_bytes(obj: Any) -> int:
        return len(_orjson.dumps(obj))
except ImportError:  # pragma: no cover - orjson comes with the SDK
    def _json_bytes(obj: Any) -> int:
        return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


def index_name(collection: str, vector: str) -> str:
    """Pinecone index name for a collection and a vector name: lowercase, ``_`` -> ``-``."""
    name = f"{collection}-{vector}".replace("_", "-").lower()
    ok = (0 < len(name) <= _MAX_INDEX_NAME and name[0] != "-" and name[-1] != "-"
          and all(c.isascii() and (c.isalnum() or c == "-") for c in name))
    if not ok:
        raise ValueError(
            f"Pinecone index name {name!r} (from index={collection!r}) is not valid: Pinecone index names are "
            f"1-{_MAX_INDEX_NAME} lowercase letters, digits and '-', not starting or ending with '-'; "
            "choose a shorter or simpler index= name"
        )
    return name


def pinecone_filter(conditions: Sequence[Condition]) -> dict[str, Any] | None:
    """``Condition`` list -> Pinecone metadata filter (``$eq``/``$in``/``$gt``/... under ``$and``)."""
    parts = [{c.field: {_OPS[c.op]: c.value}} for c in conditions]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}


class PineconeStore(TwoStageStore):
    #: Items per ``_upsert`` call; each call is further split into requests of <= 2 MB and
    #: <= 1000 vectors by encoded size.
    write_batch_size = 500
    #: Seconds to wait for a new index to become ready.
    ready_timeout = 300.0

    def __init__(self, model: UniRep, index: str = "unirep", *, api_key: str | None = None,
                 host: str | None = None, namespace: str = "", mode: str = "two_index", cloud: str = "aws",
                 region: str = "us-east-1", create: bool = True, coarse_dim: int | None = None,
                 full_dim: int | None = None, encode_batch_size: int = 32):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; expected one of {MODES}")
        if not isinstance(namespace, str):
            raise ValueError(f"namespace must be a string, got {namespace!r}")
        super().__init__(model, collection=index, coarse_dim=coarse_dim, full_dim=full_dim,
                         encode_batch_size=encode_batch_size)
        self.mode = mode
        self.namespace = namespace
        self.cloud, self.region, self.create = cloud, region, create
        self.full_index_name = index_name(index, self.full_name)
        self.coarse_index_name = index_name(index, self.coarse_name) if mode == "two_index" else None
        if self.coarse_index_name == self.full_index_name:
            raise ValueError(f"coarse_dim {self.coarse_dim} equals full_dim {self.full_dim}: two_index mode needs "
                             "a smaller coarse size (or use mode='one_index')")
        sdk = require("pinecone", extra="pinecone")
        key = api_key or os.environ.get("PINECONE_API_KEY")
        if not key:
            raise ValueError("Pinecone needs an API key: pass api_key= or set PINECONE_API_KEY")
        self._pc = sdk.Pinecone(api_key=key, host=host or None)
        self._full = self._coarse = None
        try:
            self._full = self._open_index(self.full_index_name, self.full_dim)
            if self.coarse_index_name:
                self._coarse = self._open_index(self.coarse_index_name, self.coarse_dim)
        except BaseException:
            self.close()
            raise

    # -- index lifecycle -----------------------------------------------------------------
    def _open_index(self, name: str, dim: int) -> Any:
        from pinecone.errors.exceptions import ConflictError, NotFoundError

        try:
            desc = self._pc.indexes.describe(name)
        except NotFoundError:
            if not self.create:
                raise ValueError(f"Pinecone index {name!r} does not exist (create=False)") from None
            try:
                self._pc.indexes.create(
                    name=name,
                    schema={"fields": {"_values": {"type": "dense_vector", "dimension": dim, "metric": "cosine"}}},
                    deployment={"deployment_type": "managed", "cloud": self.cloud, "region": self.region},
                    timeout=-1,  # wait below, polling more often than the SDK's 5 s
                )
                logger.info("created Pinecone index %s (dimension %d, cosine)", name, dim)
            except ConflictError:  # created meanwhile by someone else
                pass
            desc = self._pc.indexes.describe(name)
        self._check_index(desc, name, dim)
        deadline = time.monotonic() + self.ready_timeout
        delay = 0.25
        while not (desc.status.ready and desc.host):
            if desc.status.state in ("InitializationFailed", "Terminating", "Disabled"):
                raise RuntimeError(f"Pinecone index {name!r} is {desc.status.state}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Pinecone index {name!r} not ready after {self.ready_timeout:.0f}s "
                                   f"(state {desc.status.state})")
            time.sleep(delay)
            delay = min(2.0, delay * 2)
            desc = self._pc.indexes.describe(name)
        return self._pc.index(host=desc.host)

    def _check_index(self, desc: Any, name: str, dim: int) -> None:
        fields = getattr(desc.schema, "fields", None) or {}
        dense = fields.get("_values")
        if dense is None or not hasattr(dense, "dimension") or set(fields) != {"_values"}:
            raise ValueError(f"Pinecone index {name!r} is not a plain dense-vector index (schema fields "
                             f"{sorted(fields)}); use another index= name")
        if dense.dimension != dim:
            raise ValueError(f"Pinecone index {name!r} has dimension {dense.dimension}, this store needs {dim}: "
                             "use another index= name, or coarse_dim=/full_dim= matching the index")
        if str(dense.metric).lower() not in ("cosine", "dotproduct"):
            raise ValueError(f"Pinecone index {name!r} uses metric {dense.metric!r}; UniRep scores need cosine "
                             "(or dotproduct on its unit vectors)")

    @property
    def index_names(self) -> list[str]:
        """The Pinecone indexes this store uses (full first)."""
        return [n for n in (self.full_index_name, self.coarse_index_name) if n]

    def clear(self) -> None:
        """Delete every record in this store's namespace (the indexes stay)."""
        from pinecone.errors.exceptions import NotFoundError

        for idx in self._indexes_for_delete():
            try:
                idx.delete(delete_all=True, namespace=self.namespace)
            except NotFoundError:  # the namespace does not exist (yet)
                pass

    def drop(self) -> None:
        """Delete this store's Pinecone indexes (all namespaces) and close the clients."""
        from pinecone.errors.exceptions import NotFoundError

        for name in self.index_names:
            try:
                self._pc.indexes.delete(name, timeout=-1)
            except NotFoundError:
                pass
        self.close()

    def close(self) -> None:
        for idx in (self._coarse, self._full):
            if idx is not None:
                idx.close()
        self._pc.close()

    # -- adapter methods -------------------------------------------------------------------
    def _validate(self, record: Record) -> str | None:
        if len(record.key) > MAX_ID_CHARS:
            return f"id {record.key[:40]!r}... is over Pinecone's {MAX_ID_CHARS}-character id limit"
        if KEY_FIELD in record.payload:
            return f"metadata key {KEY_FIELD!r} is reserved by the Pinecone store"
        for key, value in record.payload.items():
            reason = _metadata_problem(key, value)
            if reason:
                return reason
        size = _json_bytes(self._full_metadata(record))
        if size > MAX_METADATA_BYTES:
            return (f"metadata (with the item's text) is {size} bytes as JSON, over Pinecone's limit of "
                    f"{MAX_METADATA_BYTES} bytes (40 KB) per record")
        return None

    def _full_metadata(self, record: Record) -> dict[str, Any]:
        if self.mode == "two_index":
            return {**record.payload, KEY_FIELD: record.key}
        return record.payload

    def _upsert(self, records: Sequence[Record]) -> None:
        full = [_row(r.key, r.full, self._full_metadata(r)) for r in records]
        self._send(self._full, full)
        if self._coarse is not None:
            self._send(self._coarse, [_row(r.key, r.coarse, _user_metadata(r.payload)) for r in records])

    def _send(self, index: Any, rows: list[dict[str, Any]]) -> None:
        for batch in self._request_batches(rows):
            index.upsert(vectors=batch, namespace=self.namespace)

    def _request_batches(self, rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Split rows into upsert requests of <= MAX_UPSERT_VECTORS and <= MAX_REQUEST_BYTES encoded."""
        envelope = _json_bytes({"vectors": [], "namespace": self.namespace})
        batches: list[list[dict[str, Any]]] = []
        current: list[dict[str, Any]] = []
        size = envelope
        for row in rows:
            row_size = _json_bytes(row) + 1  # + the separating comma
            if envelope + row_size > MAX_REQUEST_BYTES:
                raise ValueError(f"record {row['id']} is {row_size} bytes as JSON, over Pinecone's 2 MB request "
                                 "limit on its own")
            if current and (len(current) >= MAX_UPSERT_VECTORS or size + row_size > MAX_REQUEST_BYTES):
                batches.append(current)
                current, size = [], envelope
            current.append(row)
            size += row_size
        if current:
            batches.append(current)
        return batches

    def _existing(self, keys: Sequence[str]) -> set[str]:
        index = self._coarse if self._coarse is not None else self._full
        found: set[str] = set()
        for chunk in _fetch_chunks(keys):
            found.update(index.fetch(ids=chunk, namespace=self.namespace).vectors)
        return found

    def _get(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        # The full index holds the whole payload (the coarse one only the filterable metadata).
        found: dict[str, dict[str, Any]] = {}
        for chunk in _fetch_chunks(keys):
            vectors = self._full.fetch(ids=chunk, namespace=self.namespace).vectors
            found.update({key: _payload(v.metadata) for key, v in vectors.items()})
        return found

    def _two_stage(self, coarse: list[float], full: list[float], k: int, candidates: int,
                   conditions: Sequence[Condition]) -> list[tuple[str, float, dict[str, Any]]]:
        if k > MAX_TOP_K:
            raise ValueError(f"k={k} is over Pinecone's topK limit of {MAX_TOP_K}")
        flt = pinecone_filter(conditions)
        if self._coarse is None:  # one_index: the full index's scores are already exact
            res = self._full.query(vector=full, top_k=k, namespace=self.namespace, filter=flt,
                                   include_metadata=True)
            return [(m.id, float(m.score), _payload(m.metadata)) for m in res.matches]
        if candidates > MAX_TOP_K:
            logger.warning("candidates=%d clamped to Pinecone's topK limit of %d", candidates, MAX_TOP_K)
            candidates = MAX_TOP_K
        stage1 = self._coarse.query(vector=coarse, top_k=candidates, namespace=self.namespace, filter=flt)
        keys = [m.id for m in stage1.matches]
        if not keys:
            return []
        stage2 = self._full.query(vector=full, top_k=min(k, len(keys)), namespace=self.namespace,
                                  filter={KEY_FIELD: {"$in": keys}}, include_metadata=True)
        return [(m.id, float(m.score), _payload(m.metadata)) for m in stage2.matches]

    def _delete(self, keys: Sequence[str]) -> None:
        from pinecone.errors.exceptions import NotFoundError

        for index in self._indexes_for_delete():
            for start in range(0, len(keys), MAX_IDS_PER_REQUEST):
                try:
                    index.delete(ids=list(keys[start : start + MAX_IDS_PER_REQUEST]), namespace=self.namespace)
                except NotFoundError:  # namespace does not exist: nothing to delete
                    pass

    def _indexes_for_delete(self) -> list[Any]:
        # coarse first: a half-done delete leaves the item unsearchable, not dangling
        return [i for i in (self._coarse, self._full) if i is not None]

    def count(self) -> int:
        """Items in this namespace, from ``describe_index_stats`` (lags writes on real Pinecone)."""
        index = self._coarse if self._coarse is not None else self._full
        summary = index.describe_index_stats().namespaces.get(self.namespace)
        return int(summary.vector_count) if summary is not None else 0

    def _is_transient(self, error: BaseException) -> bool:
        if isinstance(error, (ConnectionError, TimeoutError)):  # incl. PineconeTimeoutError
            return True
        from pinecone.errors.exceptions import PineconeConnectionError

        if isinstance(error, PineconeConnectionError):
            return True
        status = getattr(error, "status_code", None)
        return isinstance(status, int) and (status in (408, 429) or 500 <= status <= 599)

    def __repr__(self) -> str:
        return (f"PineconeStore(mode={self.mode!r}, indexes={self.index_names}, namespace={self.namespace!r})")


def _row(key: str, values: list[float], metadata: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"id": key, "values": values}
    if metadata:
        row["metadata"] = metadata
    return row


def _user_metadata(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in RESERVED_KEYS}


def _payload(metadata: dict[str, Any] | None) -> dict[str, Any]:
    payload = dict(metadata or {})
    payload.pop(KEY_FIELD, None)
    return payload


def _metadata_problem(key: Any, value: Any) -> str | None:
    if not isinstance(key, str) or not key or key.startswith("$"):
        return f"metadata key {key!r} is not allowed by Pinecone (a non-empty string not starting with '$')"
    if value is None:
        return f"metadata field {key!r} is null; Pinecone drops null values (leave the key out)"
    if isinstance(value, (str, bool)):
        return None
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INT:
            return f"metadata field {key!r} = {value} does not fit Pinecone's 64-bit float numbers exactly"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"metadata field {key!r} is {value}; JSON has no NaN/infinity"
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return None
    return (f"metadata field {key!r} holds a {type(value).__name__}; Pinecone stores only strings, numbers, "
            "booleans and lists of strings")


def _fetch_chunks(keys: Sequence[str]) -> list[list[str]]:
    """Ids split so one fetch's query string (``ids=..&ids=..``) stays short (URL limits)."""
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for key in keys:
        part = len(quote(key, safe="")) + 5  # "ids=" + "&"
        if current and (size + part > MAX_FETCH_QUERY_BYTES or len(current) >= MAX_IDS_PER_REQUEST):
            chunks.append(current)
            current, size = [], 0
        current.append(key)
        size += part
    if current:
        chunks.append(current)
    return chunks
