"""Weaviate adapter: one collection with two self-provided named vectors (coarse + full).

Protocols (weaviate-client v4): collection schema over REST (``/v1/schema``); writes, reads,
deletes and counts over gRPC (``BatchObjects``, ``Search``, ``BatchDelete``, ``Aggregate``).

Two-stage search runs natively in Weaviate: stage 1 is ``near_vector`` on the coarse vector
(``limit=candidates`` plus the metadata filter); stage 2 is ``near_vector`` on the full vector
restricted to the candidate ids (``Filter.by_id().contains_any``) with ``limit=k``. With at most
``flatSearchCutoff`` (40,000 by default) allowed ids Weaviate searches stage 2 exhaustively, so
stage 2 is exact. Cosine distance in Weaviate is ``1 - cos``, so similarity = ``1 - distance``.

Naming rules Weaviate imposes, and what the adapter does about them:

* Collection names must start with an upper-case letter (Weaviate upper-cases the first letter
  itself): ``collection`` is normalised (characters other than letters, digits and ``_`` become
  ``_``, the first letter is upper-cased: ``"my-docs"`` -> ``"My_docs"``); ``store.collection``
  holds the name actually used.
* Property names may not be ``id`` (nor ``vector``, for the client) and Weaviate lower-cases their
  first letter; a leading ``_`` is reserved for Weaviate's own fields. The reserved payload keys
  are stored as ``unirep_id``, ``unirep_text`` and ``unirep_source`` and mapped back on the way
  out. Metadata keys must start with a lower-case letter (so they round-trip unchanged) and be
  letters, digits and ``_``; other keys are reported as failed items, not renamed silently.
* Metadata properties are declared by the adapter the first time a key is seen (``int`` for
  Python ints, ``number`` for floats, ``boolean``, ``text`` with *field* tokenization so that
  equality filters compare whole values, and the ``[]`` variants for lists). Values that do not
  fit an existing property's type, ``None``, nested dicts and empty lists are reported as failed
  items. Filters on list properties follow Weaviate's semantics (``eq``: any element equals).
"""
from __future__ import annotations

import logging
import math
import numbers
import re
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

from unirep_core import UniRep
from unirep_core.optional import require

from .base import Condition, Record, TwoStageStore

__all__ = ["WeaviateStore", "vectorizer_config", "weaviate_collection_name", "PROPERTY_OF_KEY"]

logger = logging.getLogger(__name__)

#: Reserved payload keys -> Weaviate property names (Weaviate reserves a leading ``_``).
PROPERTY_OF_KEY = {"_id": "unirep_id", "_text": "unirep_text", "_source": "unirep_source"}
_KEY_OF_PROPERTY = {v: k for k, v in PROPERTY_OF_KEY.items()}
_KEY_RE = re.compile(r"^[a-z][_0-9A-Za-z]*$")
_FORBIDDEN_KEYS = {"id", "vector"}  # Weaviate reserves ``id``; the client rejects ``vector``
_MAX_SAFE_INT = 2**53  # integers travel as JSON doubles (protobuf Struct) in gRPC batch writes

class WeaviateWriteError(RuntimeError):
    """Weaviate rejected some objects of a batch write (messages per object)."""


class _NoMatch:
    """A filter no stored item can satisfy (unknown field, incompatible value type)."""


_NO_MATCH = _NoMatch()


def weaviate_collection_name(name: str) -> str:
    """Weaviate's rule for class names (``[A-Z][_0-9A-Za-z]*``): other characters become ``_``
    and the first letter is upper-cased."""
    cleaned = re.sub(r"[^0-9A-Za-z_]", "_", str(name))
    if not cleaned or not cleaned[0].isalpha():
        raise ValueError(f"collection name {name!r}: must start with a letter (Weaviate class-name rules)")
    return cleaned[0].upper() + cleaned[1:]


def _kind(value: Any) -> str | None:
    """Weaviate data type for a metadata value, or None if Weaviate cannot store it."""
    if isinstance(value, (list, tuple)):
        kinds = [_kind(v) for v in value]
        if not kinds or None in kinds or any(k.endswith("[]") for k in kinds):  # type: ignore[union-attr]
            return None
        merged = _merge_kinds(kinds)  # type: ignore[arg-type]
        return merged + "[]" if merged else None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "number"
    if isinstance(value, str):
        return "text"
    return None


def _merge_kinds(kinds: Sequence[str]) -> str | None:
    """One data type for values of these kinds (ints and floats together are numbers), else None."""
    distinct = set(kinds)
    if len(distinct) == 1:
        return kinds[0]
    if distinct == {"int", "number"}:
        return "number"
    if distinct == {"int[]", "number[]"}:
        return "number[]"
    return None


def _fits(data_type: str, value: Any) -> bool:
    """Whether ``value`` can be stored in a property of ``data_type``."""
    if data_type.endswith("[]"):
        return isinstance(value, (list, tuple)) and bool(value) and all(_fits(data_type[:-2], v) for v in value)
    if isinstance(value, (list, tuple)):
        return False
    if data_type == "text":
        return isinstance(value, str)
    if data_type == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if data_type == "int":
        return isinstance(value, numbers.Integral) or float(value).is_integer()
    return data_type == "number"


def _convert(data_type: str, value: Any) -> Any:
    """A value in the Python type the client serialises correctly for ``data_type``."""
    if data_type.endswith("[]"):
        return [_convert(data_type[:-2], v) for v in value]
    if data_type == "int":
        return int(value)
    if data_type == "number":
        return float(value)
    return value


class WeaviateStore(TwoStageStore):
    """UniRep two-stage store over a Weaviate collection.

    ``url`` is Weaviate's REST address (``http://host:8080``; ``https`` for TLS, which gRPC then
    uses too); ``grpc_port`` its gRPC port on the same host. ``api_key`` authenticates (bearer key);
    ``headers`` are sent with every request (e.g. ``{"X-OpenAI-Api-Key": ...}`` for vectorizer
    modules). Pass ``client=`` to use a connected ``weaviate.WeaviateClient`` you manage (Weaviate
    Cloud, custom timeouts, ...): the store then does not close it.
    """

    #: Objects per gRPC ``BatchObjects`` request (Weaviate recommends 100-1,000).
    write_batch_size = 200
    #: Weaviate's default ``QUERY_MAXIMUM_RESULTS``: ``candidates`` above it are clamped.
    max_candidates = 10_000

    def __init__(self, model: UniRep, url: str = "http://localhost:8080", *, grpc_port: int = 50051,
                 collection: str = "Unirep", api_key: str | None = None, coarse_dim: int | None = None,
                 full_dim: int | None = None, client: Any = None, headers: Mapping[str, str] | None = None,
                 encode_batch_size: int = 32):
        super().__init__(model, collection=weaviate_collection_name(collection), coarse_dim=coarse_dim,
                         full_dim=full_dim, encode_batch_size=encode_batch_size)
        self._wv = require("weaviate", extra="weaviate")
        import weaviate.classes as wvc  # after require(), so a missing SDK names the extra

        self._wvc = wvc
        self._owns_client = client is None
        self.client = client if client is not None else self._connect(url, grpc_port, api_key, headers)
        try:
            self._schema: dict[str, dict[str, Any]] = {}  # property name -> {"dataType", "tokenization"}
            self._ensure_collection()
            self._col = self.client.collections.use(self.collection)
        except BaseException:
            self.close()
            raise

    # -- connection / schema -----------------------------------------------------------------
    def _connect(self, url: str, grpc_port: int, api_key: str | None, headers: Mapping[str, str] | None) -> Any:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"url {url!r}: expected http(s)://host[:port]")
        if parsed.path not in ("", "/"):
            raise ValueError(f"url {url!r}: the Weaviate client does not support a path prefix")
        secure = parsed.scheme == "https"
        port = parsed.port or (443 if secure else 80)
        auth = self._wvc.init.Auth.api_key(api_key) if api_key else None
        # skip_init_checks: no PyPI version lookup on every connect; the gRPC port is probed below.
        client = self._wv.connect_to_custom(
            http_host=parsed.hostname, http_port=port, http_secure=secure,
            grpc_host=parsed.hostname, grpc_port=grpc_port, grpc_secure=secure,
            headers=dict(headers) if headers else None, auth_credentials=auth, skip_init_checks=True,
        )
        ping = getattr(getattr(client, "_connection", None), "_ping_grpc", None)
        if ping is not None:  # fail fast on a wrong gRPC port instead of ~30 s of client retries
            try:
                ping("sync")
            except Exception as e:
                client.close()
                raise ConnectionError(f"Weaviate at {url} answers REST but not gRPC on port {grpc_port} "
                                      f"({type(e).__name__}: {e})") from e
        return client

    def _vector_config(self) -> list[Any]:
        cfg = self._wvc.config
        names = dict.fromkeys([self.coarse_name, self.full_name])  # one vector when both sizes are equal
        return [cfg.Configure.Vectors.self_provided(
            name=name, vector_index_config=cfg.Configure.VectorIndex.hnsw(distance_metric=cfg.VectorDistances.COSINE))
            for name in names]

    def _ensure_collection(self) -> None:
        cfg = self._wvc.config
        if not self.client.collections.exists(self.collection):
            try:
                self.client.collections.create(
                    self.collection,
                    vector_config=self._vector_config(),
                    properties=[
                        cfg.Property(name="unirep_id", data_type=cfg.DataType.TEXT, tokenization=cfg.Tokenization.FIELD),
                        cfg.Property(name="unirep_text", data_type=cfg.DataType.TEXT, index_filterable=False),
                        cfg.Property(name="unirep_source", data_type=cfg.DataType.TEXT,
                                     tokenization=cfg.Tokenization.FIELD),
                    ],
                )
            except self._wv.exceptions.UnexpectedStatusCodeError as e:
                if "already exists" not in str(e):  # created concurrently by another writer: fine
                    raise
        config = self._refresh_schema()
        vectors = config.vector_config or {}
        for name in (self.coarse_name, self.full_name):
            if name not in vectors:
                raise ValueError(f"Weaviate collection {self.collection!r} exists without the named vector {name!r} "
                                 f"(it has {sorted(vectors)}): it was made for another model or size; use another "
                                 f"collection name")
            metric = getattr(vectors[name].vector_index_config, "distance_metric", None)
            if metric is not None and getattr(metric, "value", metric) != "cosine":
                raise ValueError(f"Weaviate collection {self.collection!r}: vector {name!r} uses {metric} distance; "
                                 f"UniRep needs cosine")

    def _refresh_schema(self) -> Any:
        config = self.client.collections.use(self.collection).config.get()
        self._schema = {p.name: {"dataType": p.data_type.value,
                                 "tokenization": p.tokenization.value if p.tokenization else None}
                        for p in config.properties}
        return config

    def _ensure_properties(self, records: Sequence[Record]) -> None:
        """Declare the metadata properties this batch introduces (typed; text with field tokenization)."""
        new: dict[str, list[str]] = {}
        for r in records:
            for key, value in r.payload.items():
                prop = PROPERTY_OF_KEY.get(key, key)
                kind = _kind(value)
                if prop not in self._schema and kind is not None:
                    new.setdefault(prop, []).append(kind)
        if not new:
            return
        self._refresh_schema()  # another writer may have added them meanwhile
        cfg = self._wvc.config
        for prop, kinds in new.items():
            if prop in self._schema:
                continue
            kind = _merge_kinds(kinds) or kinds[0]  # conflicting types in one batch: the others fail per item
            is_text = kind in ("text", "text[]")
            try:
                self._col.config.add_property(cfg.Property(
                    name=prop, data_type=cfg.DataType(kind), tokenization=cfg.Tokenization.FIELD if is_text else None,
                    index_range_filters=kind in ("int", "number")))
            except self._wv.exceptions.UnexpectedStatusCodeError as e:
                if "already" not in str(e) and "conflict" not in str(e):
                    raise
                self._refresh_schema()  # added concurrently: use its type
                continue
            self._schema[prop] = {"dataType": kind, "tokenization": "field" if is_text else None}

    # -- TwoStageStore -------------------------------------------------------------------------
    def _validate(self, record: Record) -> str | None:
        for key, value in record.payload.items():
            if key in PROPERTY_OF_KEY:
                continue
            if key in _KEY_OF_PROPERTY or key in _FORBIDDEN_KEYS:
                return f"metadata key {key!r} is reserved in Weaviate collections"
            if not _KEY_RE.match(key):
                return (f"metadata key {key!r} cannot be a Weaviate property name: use letters, digits and '_', "
                        f"starting with a lower-case letter")
            kind = _kind(value)
            if kind is None:
                if value is None:
                    return f"metadata {key!r} is None: Weaviate cannot store null values"
                return (f"metadata {key!r}: Weaviate stores strings, numbers, booleans and non-empty lists of one "
                        f"of those, not {type(value).__name__} {value!r}"[:300])
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, float) and not math.isfinite(v):
                    return f"metadata {key!r}: {v} is not a finite number"
                if isinstance(v, int) and not isinstance(v, bool) and abs(v) > _MAX_SAFE_INT:
                    return f"metadata {key!r}: integers beyond ±2**53 lose precision in Weaviate's gRPC writes"
            known = self._schema.get(key)
            if known is not None and not _fits(known["dataType"], value):
                return (f"metadata {key!r}={value!r} does not fit the collection's {known['dataType']} property"
                        )[:300]
            if known is None:
                clash = [p for p in self._schema if p.lower() == key.lower()]
                if clash:
                    return f"metadata key {key!r} differs only in case from the property {clash[0]!r}"
        return None

    def _upsert(self, records: Sequence[Record]) -> None:
        self._ensure_properties(records)
        DataObject = self._wvc.data.DataObject
        objects = []
        for r in records:
            props = {}
            for key, value in r.payload.items():
                prop = PROPERTY_OF_KEY.get(key, key)
                known = self._schema.get(prop)
                props[prop] = _convert(known["dataType"], value) if known and _fits(known["dataType"], value) else value
            objects.append(DataObject(properties=props, uuid=r.key,
                                      vector={self.coarse_name: r.coarse, self.full_name: r.full}))
        result = self._col.data.insert_many(objects)
        if result.has_errors:
            errors = sorted(result.errors.items())
            detail = "; ".join(f"#{i}: {e.message}" for i, e in errors[:5])
            raise WeaviateWriteError(f"Weaviate rejected {len(errors)} of {len(objects)} objects: {detail}")

    def _existing(self, keys: Sequence[str]) -> set[str]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return set()
        Filter = self._wvc.query.Filter
        found = self._col.query.fetch_objects(filters=Filter.by_id().contains_any(unique), limit=len(unique),
                                              return_properties=[])
        return {str(o.uuid) for o in found.objects}

    def _get(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        Filter = self._wvc.query.Filter
        found = self._col.query.fetch_objects(filters=Filter.by_id().contains_any(unique), limit=len(unique))
        return {str(o.uuid): self._payload(o.properties) for o in found.objects}

    def _two_stage(self, coarse: list[float], full: list[float], k: int, candidates: int,
                   conditions: Sequence[Condition]) -> list[tuple[str, float, dict[str, Any]]]:
        flt = self._filter(conditions)
        if flt is _NO_MATCH:
            return []
        if candidates > self.max_candidates:
            logger.warning("candidates=%d clamped to Weaviate's QUERY_MAXIMUM_RESULTS %d", candidates,
                           self.max_candidates)
            candidates = self.max_candidates
        Filter, MetadataQuery = self._wvc.query.Filter, self._wvc.query.MetadataQuery
        stage1 = self._col.query.near_vector(coarse, target_vector=self.coarse_name, limit=candidates,
                                             filters=flt, return_properties=[])
        ids = [o.uuid for o in stage1.objects]
        if not ids:
            return []
        stage2 = self._col.query.near_vector(full, target_vector=self.full_name, limit=min(k, len(ids)),
                                             filters=Filter.by_id().contains_any(ids),
                                             return_metadata=MetadataQuery(distance=True))
        return [(str(o.uuid), 1.0 - float(o.metadata.distance), self._payload(o.properties))
                for o in stage2.objects]

    def _delete(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        result = self._col.data.delete_many(where=self._wvc.query.Filter.by_id().contains_any(list(keys)))
        if result.failed:
            raise WeaviateWriteError(f"Weaviate failed to delete {result.failed} of {result.matches} objects")

    def count(self) -> int:
        return int(self._col.aggregate.over_all(total_count=True).total_count or 0)

    def _is_transient(self, error: BaseException) -> bool:
        exc = self._wv.exceptions
        if isinstance(error, (exc.WeaviateConnectionError, exc.WeaviateTimeoutError, exc.WeaviateRetryError,
                              exc.WeaviateGRPCUnavailableError)):
            return True
        if isinstance(error, exc.UnexpectedStatusCodeError):
            return error.status_code in (429, 500, 502, 503, 504)
        if isinstance(error, exc.WeaviateQueryError):  # gRPC errors arrive as text
            return any(code in str(error) for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"))
        try:
            import httpx
        except ImportError:  # pragma: no cover - httpx comes with weaviate-client
            return super()._is_transient(error)
        return isinstance(error, httpx.TransportError) or super()._is_transient(error)

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _payload(properties: Mapping[str, Any]) -> dict[str, Any]:
        return {_KEY_OF_PROPERTY.get(name, name): value for name, value in properties.items() if value is not None}

    def _filter(self, conditions: Sequence[Condition]) -> Any:
        """Condition list -> a Weaviate ``Filter`` (None: no filter; ``_NO_MATCH``: nothing can match).

        Mirrors ``base.matches``: a field no item has matches nothing; a value of the wrong type
        for the property matches nothing; float bounds on ``int`` properties are rounded the way
        that keeps the comparison exact (Weaviate refuses non-integral values on ``int``)."""
        if not conditions:
            return None
        if any(c.field not in self._schema for c in conditions if c.field not in _KEY_OF_PROPERTY):
            self._refresh_schema()
        parts = []
        for c in conditions:
            known = None if c.field in _KEY_OF_PROPERTY else self._schema.get(c.field)
            if known is None:
                return _NO_MATCH
            part = self._condition(c, known["dataType"])
            if part is _NO_MATCH:
                return _NO_MATCH
            parts.append(part)
        return parts[0] if len(parts) == 1 else self._wvc.query.Filter.all_of(parts)

    def _condition(self, c: Condition, data_type: str) -> Any:
        prop = self._wvc.query.Filter.by_property(c.field)
        base = data_type[:-2] if data_type.endswith("[]") else data_type

        def ok(v: Any) -> bool:
            return _fits(base, v)

        if c.op == "eq":
            return prop.equal(_convert(base, c.value)) if ok(c.value) else _NO_MATCH
        if c.op == "in":
            values = list(dict.fromkeys(_convert(base, v) for v in c.value if ok(v)))
            if not values:
                return _NO_MATCH
            if base == "text":
                return prop.contains_any(values)
            Filter = self._wvc.query.Filter
            return prop.equal(values[0]) if len(values) == 1 else Filter.any_of(
                [Filter.by_property(c.field).equal(v) for v in values])
        # range operators: numbers only (base.matches: non-numeric values never match)
        if base not in ("int", "number"):
            return _NO_MATCH
        value = c.value
        if base == "number":
            value = float(value)
        elif not float(value).is_integer():
            value = math.floor(value) if c.op in ("gt", "lte") else math.ceil(value)
        else:
            value = int(value)
        return {"gt": prop.greater_than, "gte": prop.greater_or_equal, "lt": prop.less_than,
                "lte": prop.less_or_equal}[c.op](value)

    def close(self) -> None:
        """Close the connection if the store opened it."""
        if self._owns_client and getattr(self, "client", None) is not None:
            self.client.close()

    def __enter__(self) -> "WeaviateStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def vectorizer_config(base_url: str, *, kind: str = "text2vec-transformers", name: str = "unirep",
                      dimensions: int | None = None, model: str | None = None,
                      passage_url: str | None = None, query_url: str | None = None,
                      source_properties: Sequence[str] | None = None, text_fields: Sequence[str] | None = None,
                      image_fields: Sequence[str] | None = None) -> Any:
    """A named-vector configuration (``weaviate.classes.config``) whose vectorizer is a UniRep
    inference server at ``base_url``, for ``collections.create(vector_config=[...])``.

    ``kind``:

    * ``"text2vec-transformers"``: Weaviate posts ``/vectors`` to ``base_url`` (``inferenceUrl``),
      or to ``passage_url`` / ``query_url`` when both are given; ``dimensions`` is forwarded.
    * ``"multi2vec-clip"``: ``/vectorize`` with texts and base64 images (``inferenceUrl``);
      ``text_fields`` / ``image_fields`` name the properties to embed. The module has no size option.
    * ``"text2vec-openai"``: ``{base_url}/v1/embeddings`` (``baseURL`` without ``/v1``: a trailing
      ``/v1`` is removed) with ``model`` and ``dimensions``. Weaviate needs an API key for it: set
      ``OPENAI_APIKEY`` on the server or send ``X-OpenAI-Api-Key`` (``WeaviateStore(headers=...)``).

    The collection name is not prepended to the text (``vectorizeClassName`` off), so Weaviate
    embeds exactly what ``UniRep.encode`` would; the index is HNSW with cosine distance.
    """
    require("weaviate", extra="weaviate")  # names the extra when the SDK is missing
    from weaviate.classes.config import Configure, VectorDistances

    index = Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
    url = base_url.rstrip("/")
    if not re.match(r"^https?://", url):
        raise ValueError(f"base_url {base_url!r}: expected http(s)://host[:port]")
    if kind == "text2vec-transformers":
        if (passage_url is None) != (query_url is None):
            raise ValueError("give both passage_url and query_url, or neither")
        urls = ({"passage_inference_url": passage_url.rstrip("/"), "query_inference_url": query_url.rstrip("/")}
                if passage_url is not None and query_url is not None else {"inference_url": url})
        return Configure.Vectors.text2vec_transformers(
            name=name, dimensions=dimensions, vector_index_config=index, vectorize_collection_name=False,
            source_properties=list(source_properties) if source_properties else None, **urls)
    if passage_url is not None or query_url is not None:
        raise ValueError(f"passage_url/query_url apply to text2vec-transformers, not {kind}")
    if kind == "multi2vec-clip":
        if dimensions is not None:
            raise ValueError("multi2vec-clip has no dimensions option: the server returns its default size")
        return Configure.Vectors.multi2vec_clip(
            name=name, inference_url=url, vector_index_config=index,
            text_fields=list(text_fields) if text_fields else None,
            image_fields=list(image_fields) if image_fields else None)
    if kind == "text2vec-openai":
        if url.endswith("/v1"):
            url = url[: -len("/v1")]
        return Configure.Vectors.text2vec_openai(
            name=name, base_url=url, model=model, dimensions=dimensions, vector_index_config=index,
            vectorize_collection_name=False,
            source_properties=list(source_properties) if source_properties else None)
    raise ValueError(f"kind {kind!r}: use 'text2vec-transformers', 'multi2vec-clip' or 'text2vec-openai'")
