"""Milvus adapter (a Milvus server or Milvus Lite): two FLOAT_VECTOR fields per row, two-stage search.

Schema (one row per item)::

    key        VARCHAR primary key      the record key (a UUID string, see ``base.id_to_uuid``)
    <coarse>   FLOAT_VECTOR(coarse_dim) e.g. ``unirep_mini_128``, COSINE index (HNSW by default)
    <full>     FLOAT_VECTOR(full_dim)   e.g. ``unirep_mini_384``, COSINE index
    meta       JSON                     the user's metadata, filtered as ``meta["lang"] == "vi"``
    _id, _text, _source  VARCHAR        the reserved payload keys (the last two nullable)

User metadata lives in one JSON field rather than in dynamic fields, so a metadata key can never
collide with ``key`` or a vector field, and a key missing from a row simply does not match a
filter on it.

Search: stage 1 searches the coarse field for ``candidates`` hits (with the filter); stage 2 ranks
them by the full vector, either client-side from the full vectors returned by stage 1
(``rescore="client"``, the default: one request) or by a second search of the full field
restricted to the candidate keys (``rescore="server"``). ``benchmarks/milvus_stage2.py`` measures
both on Milvus Lite.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from unirep_core import UniRep
from unirep_core.optional import require

from .base import Condition, Record, TwoStageStore

__all__ = ["MilvusStore", "filter_expression", "embedding_function"]

logger = logging.getLogger(__name__)

KEY_FIELD = "key"
META_FIELD = "meta"
RESERVED_FIELDS = ("_id", "_text", "_source")
_VARCHAR_MAX = 65535  # bytes (UTF-8), Milvus's largest VARCHAR
_JSON_MAX = 65536  # bytes, Milvus's limit for one JSON value
_REQUEST_BYTES = 32 * 1024 * 1024  # one write request stays well under Milvus's 64 MB gRPC message limit
_MAX_TOPK = 16384  # Milvus rejects limit > 16384
_RESCORE = ("client", "server")
_BUILD_PARAMS = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "HNSW_SQ": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 128},
    "IVF_SQ8": {"nlist": 128},
}
_OPS = {"eq": "==", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
# Server error codes worth a retry (Milvus merr: service unavailable, too many requests, rate limit,
# resource insufficient) and gRPC status names.
_TRANSIENT_CODES = {2, 4, 8, 12}
_TRANSIENT_GRPC = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}


def _pymilvus():
    return require("pymilvus", extra="milvus")


# -- filter translation ---------------------------------------------------------------------------
def _string_literal(value: str) -> str:
    """A double-quoted Milvus string literal. Milvus Lite's tokenizer knows only the escapes
    ``\\\\ \\" \\' \\n \\r \\t`` (``json.dumps`` would also emit ``\\uXXXX``/``\\b``/``\\f``, which it
    rejects), so exactly those are escaped and every other character is written as it is."""
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    return out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"filter value {value!r} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        return '"' + _string_literal(value) + '"'
    raise ValueError(f"filter value {value!r}: use strings, numbers or booleans")


def filter_expression(conditions: Sequence[Condition]) -> str:
    """The Milvus boolean expression for parsed filter conditions (ANDed), on the ``meta`` JSON
    field: ``meta["lang"] == "vi" and meta["year"] >= 2005``. ``in`` is written as ORed
    equalities because Milvus Lite accepts ``in`` only on a plain field, not on a JSON path.
    Rows without the field, or with a value of another type, do not match."""
    parts = []
    for c in conditions:
        ref = f'{META_FIELD}["{c.field}"]'  # parse_filter allows only [A-Za-z][A-Za-z0-9_]* here
        if c.op == "in":
            alts = [f"{ref} == {_literal(v)}" for v in c.value]
            parts.append(alts[0] if len(alts) == 1 else "(" + " or ".join(alts) + ")")
        elif c.op in _OPS:
            parts.append(f"{ref} {_OPS[c.op]} {_literal(c.value)}")
        else:
            raise ValueError(f"unknown filter operator {c.op!r}")
    return " and ".join(parts)


def _keys_expression(keys: Sequence[str]) -> str:
    return f"{KEY_FIELD} in [" + ", ".join('"' + _string_literal(k) + '"' for k in keys) + "]"


# -- the store ------------------------------------------------------------------------------------
class MilvusStore(TwoStageStore):
    """A ``TwoStageStore`` in one Milvus collection.

    ``uri``: a Milvus Lite file (``"./unirep.db"``) or a server (``"http://host:19530"``, with
    ``token``); or pass an existing ``MilvusClient`` as ``client`` (not closed by ``close()``).
    ``index``: the index type of both vector fields (``"HNSW"``, ``"FLAT"``, ``"IVF_FLAT"``, ...).
    ``rescore``: how stage 2 ranks the candidates, ``"client"`` (full vectors come back with the
    stage-1 hits and are scored here) or ``"server"`` (a second search of the full field filtered
    to the candidate keys).
    """

    #: Rows per write request; ``_upsert`` also splits a batch by size (under 32 MB a request).
    write_batch_size = 1000

    def __init__(self, model: UniRep, uri: str | os.PathLike = "./unirep.db", *, collection: str = "unirep",
                 coarse_dim: int | None = None, full_dim: int | None = None, token: str | None = None,
                 index: str = "HNSW", client: Any = None, rescore: str = "client", encode_batch_size: int = 32):
        super().__init__(model, collection=collection, coarse_dim=coarse_dim, full_dim=full_dim,
                         encode_batch_size=encode_batch_size)
        if rescore not in _RESCORE:
            raise ValueError(f"rescore must be one of {_RESCORE}, got {rescore!r}")
        if not isinstance(index, str) or not index:
            raise ValueError(f"index must be an index type name such as 'HNSW' or 'FLAT', got {index!r}")
        self.rescore = rescore
        self.index = index.upper()
        pymilvus = _pymilvus()
        if client is None:
            uri = os.fspath(uri)
            if "://" not in uri and not uri.endswith(".db"):
                raise ValueError(f"uri {uri!r}: use a Milvus Lite file ending in .db or a server URL "
                                 "such as http://localhost:19530")
            client = pymilvus.MilvusClient(uri=uri, token=token or "")
            self._owns_client = True
        else:
            self._owns_client = False
        self._client = client
        self._vector_fields = [self.coarse_name] if self.coarse_name == self.full_name else [self.coarse_name,
                                                                                              self.full_name]
        self._index_types: dict[str, str] = {}
        if client.has_collection(collection):
            self._check_existing()
        else:
            self._create()
        self._ensure_loaded()

    # -- collection setup ----------------------------------------------------------------------
    def _create(self) -> None:
        DataType = _pymilvus().DataType
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(KEY_FIELD, DataType.VARCHAR, max_length=64, is_primary=True)
        dims = {self.coarse_name: self.coarse_dim, self.full_name: self.full_dim}
        for name in self._vector_fields:
            schema.add_field(name, DataType.FLOAT_VECTOR, dim=dims[name])
        schema.add_field(META_FIELD, DataType.JSON)
        schema.add_field("_id", DataType.VARCHAR, max_length=_VARCHAR_MAX)
        schema.add_field("_text", DataType.VARCHAR, max_length=_VARCHAR_MAX, nullable=True)
        schema.add_field("_source", DataType.VARCHAR, max_length=_VARCHAR_MAX, nullable=True)
        index_params = self._client.prepare_index_params()
        for name in self._vector_fields:
            index_params.add_index(field_name=name, index_type=self.index, metric_type="COSINE",
                                   params=dict(_BUILD_PARAMS.get(self.index, {})))
            self._index_types[name] = self.index
        self._client.create_collection(self.collection, schema=schema, consistency_level="Strong")
        # sync=False: the collection is empty, so there is nothing to wait for, and pymilvus's
        # wait polls with a fixed 0.5 s sleep per index (a second per store on Milvus Lite).
        self._client.create_index(self.collection, index_params, sync=False)

    def _check_existing(self) -> None:
        DataType = _pymilvus().DataType
        fields = self._client.describe_collection(self.collection)["fields"]
        vectors = {f["name"]: int(f.get("params", {}).get("dim", 0)) for f in fields
                   if f.get("type") == DataType.FLOAT_VECTOR}
        need = {self.coarse_name: self.coarse_dim, self.full_name: self.full_dim}
        if any(vectors.get(name) != dim for name, dim in need.items()):
            have = ", ".join(f"{n} ({d})" for n, d in vectors.items()) or "none"
            want = ", ".join(f"{n} ({d})" for n, d in need.items())
            raise ValueError(
                f"Milvus collection {self.collection!r} has vector fields {have}; this store needs {want}. "
                "It was created for another model or other sizes: open it with that model and "
                "coarse_dim/full_dim, or use another collection name.")
        names = {f["name"] for f in fields}
        missing = [n for n in (KEY_FIELD, META_FIELD, *RESERVED_FIELDS) if n not in names]
        if missing:
            raise ValueError(f"Milvus collection {self.collection!r} lacks the fields {missing} that "
                             f"MilvusStore uses (it has {sorted(names)}); use another collection name.")
        for name in self._vector_fields:  # search parameters follow the index actually built
            try:
                index_names = self._client.list_indexes(self.collection, field_name=name)
                if index_names:
                    info = self._client.describe_index(self.collection, index_names[0])
                    self._index_types[name] = str(info.get("index_type", self.index)).upper()
            except Exception as e:  # noqa: BLE001 - the defaults still work
                logger.debug("could not describe the index of %s: %s", name, e)

    def _ensure_loaded(self) -> None:
        # A collection reopened in a new process is 'released' and errors on search until loaded.
        state = self._client.get_load_state(self.collection).get("state")
        if getattr(state, "name", str(state)) != "Loaded":
            self._client.load_collection(self.collection)

    def _search_params(self, field: str, limit: int) -> dict[str, Any]:
        kind = self._index_types.get(field, self.index)
        if kind.startswith("HNSW"):
            params: dict[str, Any] = {"ef": max(limit, 64)}  # HNSW needs ef >= limit
        elif kind.startswith("IVF"):
            params = {"nprobe": 32}
        else:
            params = {}
        return {"metric_type": "COSINE", "params": params}

    # -- writes ----------------------------------------------------------------------------------
    def _row(self, r: Record) -> dict[str, Any]:
        meta = {k: v for k, v in r.payload.items() if k not in RESERVED_FIELDS}
        row: dict[str, Any] = {KEY_FIELD: r.key, self.coarse_name: r.coarse, self.full_name: r.full,
                               META_FIELD: meta}
        for name in RESERVED_FIELDS:
            value = r.payload.get(name)
            row[name] = None if value is None else str(value)
        return row

    def _validate(self, record: Record) -> str | None:
        meta = {k: v for k, v in record.payload.items() if k not in RESERVED_FIELDS}
        try:
            size = len(json.dumps(meta, ensure_ascii=False, allow_nan=False).encode())
        except (TypeError, ValueError) as e:
            return f"metadata cannot be stored as JSON: {e}"
        if size > _JSON_MAX:
            return f"metadata is {size} bytes as JSON, over Milvus's limit of {_JSON_MAX}"
        for name, what in (("_id", "id"), ("_text", "text"), ("_source", "source")):
            value = record.payload.get(name)
            if value is not None and len(str(value).encode()) > _VARCHAR_MAX:
                return f"{what} is {len(str(value).encode())} bytes (UTF-8), over Milvus's limit of {_VARCHAR_MAX}"
        return None

    def _upsert(self, records: Sequence[Record]) -> None:
        chunk: list[dict[str, Any]] = []
        size = 0
        for r in records:
            row = self._row(r)
            row_size = 4 * (len(r.coarse) + len(r.full)) + 256 + sum(
                len(str(v).encode()) for k, v in row.items() if k not in self._vector_fields)
            if chunk and size + row_size > _REQUEST_BYTES:
                self._client.upsert(self.collection, chunk)
                chunk, size = [], 0
            chunk.append(row)
            size += row_size
        if chunk:
            self._client.upsert(self.collection, chunk)

    def _existing(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        rows = self._client.get(self.collection, ids=list(keys), output_fields=[KEY_FIELD])
        return {row[KEY_FIELD] for row in rows}

    def _delete(self, keys: Sequence[str]) -> None:
        if keys:
            self._client.delete(self.collection, ids=list(keys))

    def count(self) -> int:
        # count(*) under Strong consistency is exact right after writes (num_entities may lag).
        rows = self._client.query(self.collection, filter="", output_fields=["count(*)"],
                                  consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0

    def _is_transient(self, error: BaseException) -> bool:
        if super()._is_transient(error):
            return True
        pymilvus = _pymilvus()
        if isinstance(error, pymilvus.MilvusUnavailableException) or \
                isinstance(error, pymilvus.exceptions.ConnectError):
            return True
        code = getattr(error, "code", None)
        if callable(code):  # a raw grpc.RpcError
            try:
                code = code()
            except Exception:  # noqa: BLE001
                return False
        name = getattr(code, "name", None)
        if name is not None:  # a grpc.StatusCode (pymilvus wraps exhausted gRPC retries this way)
            return name in _TRANSIENT_GRPC
        if isinstance(error, pymilvus.MilvusException):
            return isinstance(code, int) and code in _TRANSIENT_CODES
        return False

    # -- search ----------------------------------------------------------------------------------
    def _get(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not keys:
            return {}
        rows = self._client.get(self.collection, ids=list(keys), output_fields=[META_FIELD, *RESERVED_FIELDS])
        return {row[KEY_FIELD]: _payload(row) for row in rows}

    def _two_stage(self, coarse: list[float], full: list[float], k: int, candidates: int,
                   conditions: Sequence[Condition]) -> list[tuple[str, float, dict[str, Any]]]:
        expr = filter_expression(conditions)
        candidates = min(candidates, _MAX_TOPK)
        k = min(k, candidates)
        payload_fields = [META_FIELD, *RESERVED_FIELDS]
        single = len(self._vector_fields) == 1
        if single or self.rescore == "client":
            hits = self._search(coarse, self.coarse_name, candidates, expr,
                                payload_fields if single else [self.full_name, *payload_fields])
            if not hits:
                return []
            if single:
                sims = np.array([h["distance"] for h in hits], dtype=np.float64)
            else:
                mat = np.asarray([h["entity"][self.full_name] for h in hits], dtype=np.float32)
                q = np.asarray(full, dtype=np.float32)
                sims = (mat @ q) / np.maximum(np.linalg.norm(mat, axis=1), 1e-12) / max(float(np.linalg.norm(q)), 1e-12)
            order = np.argsort(-sims, kind="stable")[:k]
            return [(hits[i][KEY_FIELD], float(sims[i]), _payload(hits[i]["entity"])) for i in order]
        first = self._search(coarse, self.coarse_name, candidates, expr, [])
        keys = [h[KEY_FIELD] for h in first]
        if not keys:
            return []
        second = self._search(full, self.full_name, min(k, len(keys)), _keys_expression(keys), payload_fields,
                              ef_floor=len(keys))
        return [(h[KEY_FIELD], float(h["distance"]), _payload(h["entity"])) for h in second]

    def _search(self, vector: list[float], field: str, limit: int, expr: str, output_fields: list[str],
                ef_floor: int = 0) -> list[Any]:
        result = self._client.search(
            self.collection, data=[vector], anns_field=field, limit=limit, filter=expr,
            output_fields=output_fields, search_params=self._search_params(field, max(limit, ef_floor)),
            consistency_level="Strong")
        return list(result[0]) if result else []

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The underlying ``MilvusClient``."""
        return self._client

    def close(self) -> None:
        """Close the client if this store opened it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> "MilvusStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _payload(entity: Mapping[str, Any]) -> dict[str, Any]:
    payload = dict(entity.get(META_FIELD) or {})
    for name in RESERVED_FIELDS:
        if entity.get(name) is not None:
            payload[name] = entity[name]
    return payload


# -- server-side embedding function ---------------------------------------------------------------
def embedding_function(name: str = "unirep", *, base_url: str, model_name: str = "unirep-mini",
                       dimensions: int | None = None, input_field: str = "text", output_field: str = "vector",
                       api_key: str = "EMPTY") -> Any:
    """A Milvus ``Function`` that embeds ``input_field`` (VARCHAR) into ``output_field``
    (FLOAT_VECTOR) by calling UniRep's OpenAI-compatible server (``POST {base_url}/embeddings``).

    ``base_url`` is the API root and must end in ``/v1`` (Milvus appends ``/embeddings``); a URL
    without it gets ``/v1`` added. ``dimensions`` asks the server for a Matryoshka size.
    """
    pymilvus = _pymilvus()
    for arg, value in (("name", name), ("model_name", model_name), ("input_field", input_field),
                       ("output_field", output_field), ("api_key", api_key)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{arg} must be a non-empty string, got {value!r}")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
    url = base_url.rstrip("/")
    if url.endswith("/embeddings"):
        raise ValueError(f"base_url {base_url!r} is the endpoint; give the API root ending in /v1 "
                         "(Milvus appends /embeddings)")
    if not url.endswith("/v1"):
        url += "/v1"
    params: dict[str, Any] = {"provider": "openai", "model_name": model_name, "base_url": url, "api_key": api_key}
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, (int, np.integer)) or dimensions < 1:
            raise ValueError(f"dimensions must be a positive integer, got {dimensions!r}")
        params["dimensions"] = int(dimensions)
    return pymilvus.Function(name=name, function_type=pymilvus.FunctionType.TEXTEMBEDDING,
                             input_field_names=[input_field], output_field_names=[output_field], params=params)
