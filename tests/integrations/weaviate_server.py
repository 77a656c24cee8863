"""An in-process fake Weaviate for tests: the REAL ``weaviate-client`` talks to it over the REAL protocols.

Written from the public API definitions: the REST paths the v4 client calls and the
``weaviate.v1.Weaviate`` gRPC service whose messages ship with the client (``weaviate.proto.v1``).
Data lives in memory; vector search is exact brute force (no HNSW), so results are the exact
ranking a real server approximates.

What it serves (everything else answers 404 / UNIMPLEMENTED with a clear message and is recorded
in ``FakeWeaviate.unknown`` so a test can assert that nothing unexpected was called):

REST (``http.server.ThreadingHTTPServer``)
  GET  /v1/meta                          version (decides which protocol paths the client picks)
  GET  /v1/.well-known/ready|live|openid-configuration (404: no OIDC, as a server without it)
  GET  /v1/schema                        POST /v1/schema (create a collection)
  GET  /v1/schema/{Class}                DELETE /v1/schema/{Class}
  POST /v1/schema/{Class}/properties     (add a property)
  GET  /v1/schema/{Class}/shards
  GET|HEAD|DELETE /v1/objects/{Class}/{uuid}

gRPC (``grpc.server``), service ``weaviate.v1.Weaviate``
  Search       fetch / near_vector (one target vector), filters, limit/offset/after, sort,
               returned properties and metadata (uuid, distance, certainty, vectors, times)
  BatchObjects insert-or-replace, per-object errors, property type checks, simple auto-schema
  BatchDelete  by filter, dry_run, verbose
  Aggregate    total count (with filters)
  grpc.health.v1.Health/Check  (used by the client's init checks)

Semantics copied from Weaviate where tests can notice them: class names get their first letter
upper-cased and property names lower-cased; ``id``, ``_id``, ``_additional`` are reserved property
names; filters on an unknown property fail; a float filter value on an ``int`` property must be
integral (an int on a ``number`` property is converted); text filters follow the property's
tokenization (``field``: the whole trimmed value, ``word``: alphanumeric lower-cased tokens);
cosine distance is ``1 - cos`` on normalised vectors; ``limit + offset`` may not exceed
``QUERY_MAXIMUM_RESULTS`` (10,000); a batch write with an existing uuid replaces the object.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import math
import re
import struct
import threading
import time
import uuid as uuid_lib
from collections import Counter
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import grpc
import numpy as np
from google.protobuf import json_format

from weaviate.proto.v1 import (
    aggregate_pb2,
    base_pb2,
    base_search_pb2,
    batch_delete_pb2,
    batch_pb2,
    health_weaviate_pb2,
    properties_pb2,
    search_get_pb2,
    weaviate_pb2_grpc,
)

__all__ = ["FakeWeaviate", "QUERY_MAXIMUM_RESULTS"]

logger = logging.getLogger(__name__)

QUERY_MAXIMUM_RESULTS = 10_000
QUERY_DEFAULTS_LIMIT = 10
GRPC_MAX_MESSAGE_SIZE = 104_858_000

_CLASS_RE = re.compile(r"^[A-Z][_0-9A-Za-z]*$")
_PROP_RE = re.compile(r"^[_A-Za-z][_0-9A-Za-z]*$")
_VECTOR_NAME_RE = re.compile(r"^[_A-Za-z][_0-9A-Za-z\-]*$")
_RESERVED_PROPS = {"_additional", "_id", "id"}
_PRIMITIVE_TYPES = {"text", "int", "number", "boolean", "date", "uuid"}
_DATA_TYPES = ({t for t in _PRIMITIVE_TYPES} | {t + "[]" for t in _PRIMITIVE_TYPES}
               | {"geoCoordinates", "phoneNumber", "blob", "object", "object[]"})
_TOKENIZATIONS = {"word", "lowercase", "whitespace", "field", "trigram", "gse", "kagome_ja", "kagome_kr"}
_DISTANCES = {"cosine", "dot", "l2-squared", "manhattan", "hamming"}

_HNSW_DEFAULTS: dict[str, Any] = {
    "skip": False, "cleanupIntervalSeconds": 300, "maxConnections": 32, "efConstruction": 128, "ef": -1,
    "dynamicEfMin": 100, "dynamicEfMax": 500, "dynamicEfFactor": 8, "vectorCacheMaxObjects": 1000000000000,
    "flatSearchCutoff": 40000, "distance": "cosine", "filterStrategy": "sweeping",
    "pq": {"enabled": False, "bitCompression": False, "segments": 0, "centroids": 256, "trainingLimit": 100000,
           "encoder": {"type": "kmeans", "distribution": "log-normal"}},
    "bq": {"enabled": False},
    "sq": {"enabled": False, "trainingLimit": 100000, "rescoreLimit": 20},
    "multivector": {"enabled": False, "aggregation": "maxSim"},
}
_FLAT_DEFAULTS: dict[str, Any] = {
    "distance": "cosine", "vectorCacheMaxObjects": 1000000000000,
    "pq": {"enabled": False, "rescoreLimit": -1, "cache": False},
    "bq": {"enabled": False, "rescoreLimit": -1, "cache": False},
    "sq": {"enabled": False, "rescoreLimit": -1, "cache": False},
}


class _RequestError(Exception):
    """A client error: REST answers it with ``status``, gRPC with INVALID_ARGUMENT (or ``code``)."""

    def __init__(self, message: str, status: int = 422, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT):
        super().__init__(message)
        self.status = status
        self.code = code


class _Unimplemented(_RequestError):
    def __init__(self, message: str):
        super().__init__(f"fake weaviate: {message} is not implemented", 501, grpc.StatusCode.UNIMPLEMENTED)


def _merge_defaults(given: dict[str, Any] | None, defaults: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(defaults))
    for key, value in (given or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_defaults(value, out[key])
        else:
            out[key] = value
    return out


def _upper_first(name: str) -> str:
    return name[:1].upper() + name[1:]


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def _tokens(text: str, tokenization: str | None) -> list[str]:
    if tokenization == "field":
        t = text.strip()
        return [t] if t else []
    if tokenization == "whitespace":
        return text.split()
    if tokenization == "lowercase":
        return text.lower().split()
    return [t for t in re.split(r"[^0-9A-Za-z\u00C0-\uFFFF]+", text.lower()) if t]  # word (and the rest)


class _Object:
    __slots__ = ("uuid", "properties", "vectors", "created", "updated")

    def __init__(self, uid: str, properties: dict[str, Any], vectors: dict[str, np.ndarray], created: int):
        self.uuid = uid
        self.properties = properties
        self.vectors = vectors
        self.created = created
        self.updated = int(time.time() * 1000)


class _Collection:
    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.objects: dict[str, _Object] = {}
        self.dims: dict[str, int] = {}
        self.version = 0
        self._matrices: dict[str, tuple[int, list[str], np.ndarray]] = {}

    @property
    def name(self) -> str:
        return self.config["class"]

    def prop(self, name: str) -> dict[str, Any] | None:
        for p in self.config["properties"]:
            if p["name"] == name:
                return p
        return None

    def vector_configs(self) -> dict[str, dict[str, Any]]:
        """Named vectors, or the legacy unnamed one under ``"default"``."""
        if self.config.get("vectorConfig"):
            return self.config["vectorConfig"]
        return {"default": {"vectorIndexType": self.config.get("vectorIndexType", "hnsw"),
                            "vectorIndexConfig": self.config.get("vectorIndexConfig", {}),
                            "vectorizer": {self.config.get("vectorizer", "none"): {}}}}

    def distance_metric(self, vector: str) -> str:
        return self.vector_configs()[vector].get("vectorIndexConfig", {}).get("distance", "cosine")

    def matrix(self, vector: str) -> tuple[list[str], np.ndarray]:
        cached = self._matrices.get(vector)
        if cached is not None and cached[0] == self.version:
            return cached[1], cached[2]
        ids = [uid for uid, o in self.objects.items() if vector in o.vectors]
        dim = self.dims.get(vector, 0)
        mat = np.stack([self.objects[u].vectors[vector] for u in ids]) if ids else np.zeros((0, dim), np.float32)
        self._matrices[vector] = (self.version, ids, mat)
        return ids, mat


class FakeWeaviate:
    """In-memory Weaviate speaking REST + gRPC on 127.0.0.1 random ports.

    ``version`` is what ``/v1/meta`` reports (the client picks protocol paths by it);
    ``api_key`` turns on bearer-key auth; ``modules`` names the vectorizer modules that
    collections may configure (none run: objects must come with their vectors).
    """

    def __init__(self, *, version: str = "1.36.0", api_key: str | None = None, modules: tuple[str, ...] = ()):
        self.version = version
        self.api_key = api_key
        self.modules = tuple(modules)
        self.collections: dict[str, _Collection] = {}
        self.calls: Counter[str] = Counter()
        self.unknown: list[str] = []
        self.lock = threading.RLock()
        self._http: ThreadingHTTPServer | None = None
        self._grpc: grpc.Server | None = None
        self.http_port = 0
        self.grpc_port = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "FakeWeaviate":
        fake = self

        class Handler(_RestHandler):
            server_fake = fake

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, name="fake-weaviate-rest", daemon=True).start()

        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="fake-weaviate-grpc"),
            options=[("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_SIZE),
                     ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_SIZE)],
        )
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(_Servicer(self), self._grpc)
        health = grpc.unary_unary_rpc_method_handler(
            self._health_check,
            request_deserializer=health_weaviate_pb2.WeaviateHealthCheckRequest.FromString,
            response_serializer=health_weaviate_pb2.WeaviateHealthCheckResponse.SerializeToString,
        )
        self._grpc.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": health}),
            _UnknownRpcHandler(self),
        ))
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> "FakeWeaviate":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def reset(self) -> None:
        with self.lock:
            self.collections.clear()
            self.calls.clear()
            self.unknown.clear()

    def _record_unknown(self, what: str) -> str:
        message = f"fake weaviate: no handler for {what}"
        logger.error(message)
        self.unknown.append(what)
        return message

    def _health_check(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls["gRPC grpc.health.v1.Health/Check"] += 1
        return health_weaviate_pb2.WeaviateHealthCheckResponse(
            status=health_weaviate_pb2.WeaviateHealthCheckResponse.SERVING)

    def _authorized(self, header: str | None) -> bool:
        return self.api_key is None or header == f"Bearer {self.api_key}"

    def get_collection(self, name: str) -> _Collection:
        col = self.collections.get(_upper_first(name))
        if col is None:
            raise _RequestError(f"could not find class {name} in schema", 404, grpc.StatusCode.NOT_FOUND)
        return col

    # -- schema -------------------------------------------------------------------------------
    def create_collection(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _upper_first(str(body.get("class") or ""))
        if not _CLASS_RE.match(name):
            raise _RequestError(f"'{body.get('class')}' is not a valid class name")
        if name.lower() in {n.lower() for n in self.collections}:
            raise _RequestError(f'class name "{name}" already exists')
        config: dict[str, Any] = {"class": name}
        if body.get("description"):
            config["description"] = body["description"]
        config["invertedIndexConfig"] = _merge_defaults(body.get("invertedIndexConfig"), {
            "bm25": {"b": 0.75, "k1": 1.2}, "cleanupIntervalSeconds": 60,
            "stopwords": {"preset": "en", "additions": None, "removals": None}, "usingBlockMaxWAND": True,
        })
        config["multiTenancyConfig"] = _merge_defaults(body.get("multiTenancyConfig"), {
            "enabled": False, "autoTenantCreation": False, "autoTenantActivation": False})
        if config["multiTenancyConfig"]["enabled"]:
            raise _Unimplemented("multi-tenancy")
        config["replicationConfig"] = _merge_defaults(body.get("replicationConfig"), {
            "factor": 1, "asyncEnabled": False, "deletionStrategy": "NoAutomatedResolution"})
        config["shardingConfig"] = _merge_defaults(body.get("shardingConfig"), {
            "virtualPerPhysical": 128, "desiredCount": 1, "actualCount": 1, "desiredVirtualCount": 128,
            "actualVirtualCount": 128, "key": "_id", "strategy": "hash", "function": "murmur3"})
        config["properties"] = []
        for prop in body.get("properties") or []:
            config["properties"].append(self._check_property(config, prop))
        if body.get("vectorConfig"):
            config["vectorConfig"] = {}
            for vname, vcfg in body["vectorConfig"].items():
                if not _VECTOR_NAME_RE.match(vname):
                    raise _RequestError(f"invalid vector name {vname!r}")
                config["vectorConfig"][vname] = self._check_vector_config(vcfg)
        else:
            legacy = self._check_vector_config({
                "vectorizer": {body.get("vectorizer") or "none": (body.get("moduleConfig") or {}).get(
                    body.get("vectorizer") or "none", {})},
                "vectorIndexType": body.get("vectorIndexType"),
                "vectorIndexConfig": body.get("vectorIndexConfig"),
            })
            config["vectorizer"] = next(iter(legacy["vectorizer"]))
            config["vectorIndexType"] = legacy["vectorIndexType"]
            config["vectorIndexConfig"] = legacy["vectorIndexConfig"]
            if body.get("moduleConfig"):
                config["moduleConfig"] = body["moduleConfig"]
        self.collections[name] = _Collection(config)
        return config

    def _check_vector_config(self, vcfg: dict[str, Any]) -> dict[str, Any]:
        vectorizer = vcfg.get("vectorizer") or {"none": {}}
        if not isinstance(vectorizer, dict) or len(vectorizer) != 1:
            raise _RequestError("vectorizer: exactly one vectorizer module per vector")
        module = next(iter(vectorizer))
        if module != "none" and module not in self.modules:
            raise _RequestError(f'vectorizer: no module with name "{module}" present')
        index_type = vcfg.get("vectorIndexType") or "hnsw"
        if index_type not in ("hnsw", "flat"):
            raise _Unimplemented(f"vector index type {index_type!r}")
        index_config = _merge_defaults(vcfg.get("vectorIndexConfig"),
                                       _HNSW_DEFAULTS if index_type == "hnsw" else _FLAT_DEFAULTS)
        if index_config["distance"] not in _DISTANCES:
            raise _RequestError(f"invalid distance metric {index_config['distance']!r}")
        return {"vectorizer": vectorizer, "vectorIndexType": index_type, "vectorIndexConfig": index_config}

    def _check_property(self, config: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
        name = _lower_first(str(prop.get("name") or ""))
        if not name:
            raise _RequestError("property must contain name")
        if not _PROP_RE.match(name):
            raise _RequestError(f"'{name}' is not a valid property name. Property names in Weaviate are restricted "
                                f"to valid GraphQL names, which must be “/[_A-Za-z][_0-9A-Za-z]*/”.")
        if name in _RESERVED_PROPS:
            raise _RequestError(f"'{name}' is a reserved property name")
        if name.lower() in {p["name"].lower() for p in config["properties"]}:
            raise _RequestError(f"class \"{config['class']}\": conflict for property \"{name}\": already in use "
                                f"or provided multiple times")
        data_type = prop.get("dataType")
        if not data_type:
            raise _RequestError("property must contain dataType")
        dt = data_type[0]
        if dt not in _DATA_TYPES and not dt[:1].isupper():
            raise _RequestError(f"property '{name}': invalid dataType: dataType {dt!r} is not a valid type")
        if dt in ("object", "object[]"):
            raise _Unimplemented("object properties")
        out = dict(prop)
        out["name"] = name
        out["dataType"] = [dt]
        is_text = dt in ("text", "text[]")
        tokenization = prop.get("tokenization")
        if tokenization is not None and not is_text:
            raise _RequestError(f"tokenization is not allowed for data type '{dt}'")
        if is_text:
            tokenization = tokenization or "word"
            if tokenization not in _TOKENIZATIONS:
                raise _RequestError(f"tokenization '{tokenization}' is not allowed for data type '{dt}'")
            out["tokenization"] = tokenization
        out.setdefault("indexFilterable", True)
        out.setdefault("indexSearchable", is_text)
        out.setdefault("indexRangeFilters", False)
        return out

    def add_property(self, class_name: str, prop: dict[str, Any]) -> dict[str, Any]:
        col = self.get_collection(class_name)
        checked = self._check_property(col.config, prop)
        col.config["properties"].append(checked)
        return checked

    # -- objects ------------------------------------------------------------------------------
    def _coerce(self, col: _Collection, name: str, value: Any) -> Any:
        """Check (and convert) a property value against the schema, auto-adding unknown properties."""
        prop = col.prop(name)
        if prop is None:
            if any(p["name"].lower() == name.lower() for p in col.config["properties"]):
                raise _RequestError(f"property {name!r} differs only in case from an existing property")
            prop = self._check_property(col.config, {"name": name, "dataType": [_auto_type(value)]})
            if prop["name"] != name:
                raise _RequestError(f"invalid property name {name!r}: must start with a lower-case letter")
            col.config["properties"].append(prop)
        dt = prop["dataType"][0]
        base, is_array = (dt[:-2], True) if dt.endswith("[]") else (dt, False)
        if is_array:
            if not isinstance(value, list):
                raise _RequestError(f"invalid {dt} property '{name}' on class '{col.name}': not a list")
            return [_coerce_scalar(col.name, name, base, v) for v in value]
        if isinstance(value, list):
            raise _RequestError(f"invalid {dt} property '{name}' on class '{col.name}': got a list")
        return _coerce_scalar(col.name, name, base, value)

    def put_object(self, obj: batch_pb2.BatchObject) -> None:
        if obj.tenant:
            raise _RequestError("has multi-tenancy disabled, but request was with tenant")
        col = self.get_collection(obj.collection)
        try:
            uid = str(uuid_lib.UUID(obj.uuid))
        except ValueError:
            raise _RequestError(f"invalid UUID {obj.uuid!r}") from None
        props: dict[str, Any] = {}
        if obj.HasField("properties"):
            p = obj.properties
            if p.single_target_ref_props or p.multi_target_ref_props:
                raise _Unimplemented("cross-references")
            if p.object_properties or p.object_array_properties:
                raise _Unimplemented("object properties")
            raw: dict[str, Any] = json_format.MessageToDict(p.non_ref_properties) if p.HasField(
                "non_ref_properties") else {}
            for arr in p.text_array_properties:
                raw[arr.prop_name] = list(arr.values)
            for arr in p.int_array_properties:
                raw[arr.prop_name] = [int(v) for v in arr.values]
            for arr in p.boolean_array_properties:
                raw[arr.prop_name] = [bool(v) for v in arr.values]
            for arr in p.number_array_properties:
                raw[arr.prop_name] = (list(struct.unpack(f"<{len(arr.values_bytes) // 8}d", arr.values_bytes))
                                      if arr.values_bytes else [float(v) for v in arr.values])
            for name, value in raw.items():
                if value is None:
                    continue
                props[name] = self._coerce(col, name, value)
        vectors: dict[str, np.ndarray] = {}
        configs = col.vector_configs()
        given: list[tuple[str, bytes]] = []
        if obj.vector_bytes:
            given.append(("default", obj.vector_bytes))
        elif len(obj.vector):
            given.append(("default", struct.pack(f"<{len(obj.vector)}f", *obj.vector)))
        for v in obj.vectors:
            if v.type == base_pb2.Vectors.VECTOR_TYPE_MULTI_FP32:
                raise _Unimplemented("multi-vectors")
            given.append((v.name or "default", v.vector_bytes))
        for vname, data in given:
            if vname not in configs:
                if vname == "default" and len(configs) == 1:
                    vname = next(iter(configs))
                else:
                    raise _RequestError(f"collection {col.name} does not have a vector named {vname!r}")
            vec = np.frombuffer(data, dtype="<f4").astype(np.float32)
            dim = col.dims.get(vname)
            if dim is not None and vec.shape[0] != dim:
                raise _RequestError(f"new node has a vector with length {vec.shape[0]}. "
                                    f"Existing nodes have vectors with length {dim}")
            if not np.all(np.isfinite(vec)) or vec.shape[0] == 0:
                raise _RequestError("vector is empty or has non-finite values")
            if col.distance_metric(vname) == "cosine":
                norm = float(np.linalg.norm(vec))
                if norm == 0:
                    raise _RequestError("zero vector cannot be normalised for cosine distance")
                vec = vec / norm
            vectors[vname] = vec
        missing = [n for n, c in configs.items() if n not in vectors and "none" not in c.get("vectorizer", {"none": 0})]
        if missing:
            raise _Unimplemented(f"server-side vectorisation ({', '.join(missing)})")
        for vname, vec in vectors.items():
            col.dims.setdefault(vname, vec.shape[0])
        old = col.objects.get(uid)
        col.objects[uid] = _Object(uid, props, vectors, old.created if old else int(time.time() * 1000))
        col.version += 1

    # -- filters --------------------------------------------------------------------------------
    def compile_filter(self, col: _Collection, f: base_pb2.Filters) -> Callable[[_Object], bool]:
        op = f.operator
        F = base_pb2.Filters
        if op in (F.OPERATOR_AND, F.OPERATOR_OR):
            parts = [self.compile_filter(col, sub) for sub in f.filters]
            if op == F.OPERATOR_AND:
                return lambda o: all(p(o) for p in parts)
            return lambda o: any(p(o) for p in parts)
        if op == F.OPERATOR_NOT:
            if len(f.filters) != 1:
                raise _RequestError("Not needs exactly one operand")
            inner = self.compile_filter(col, f.filters[0])
            return lambda o: not inner(o)
        if f.HasField("target"):
            kind = f.target.WhichOneof("target")
            if kind != "property":
                raise _Unimplemented(f"filters on references ({kind})")
            path = f.target.property
        elif len(f.on) == 1:
            path = f.on[0]
        else:
            raise _Unimplemented(f"filter path {list(f.on)}")
        kind = f.WhichOneof("test_value")
        value: Any = getattr(f, kind) if kind else None
        if kind in ("value_text_array", "value_int_array", "value_boolean_array", "value_number_array"):
            value = list(value.values)
        if kind == "value_geo":
            raise _Unimplemented("geo filters")

        if path == "_id":
            getter: Callable[[_Object], list[Any]] = lambda o: [o.uuid]
            base, tokenization = "uuid", None
            value = ([str(uuid_lib.UUID(v)) for v in value] if isinstance(value, list)
                     else str(uuid_lib.UUID(value)) if isinstance(value, str) else value)
        elif path in ("_creationTimeUnix", "_lastUpdateTimeUnix"):
            raise _Unimplemented(f"filters on {path}")
        else:
            prop = col.prop(path)
            if prop is None:
                raise _RequestError(f"no such prop with name '{path}' found in class '{col.name}' in the schema. "
                                    f"Check your schema files for which properties in this class are available")
            dt = prop["dataType"][0]
            if dt[:1].isupper() or dt in ("geoCoordinates", "phoneNumber", "blob"):
                raise _Unimplemented(f"filters on {dt} properties")
            base = dt[:-2] if dt.endswith("[]") else dt
            tokenization = prop.get("tokenization")
            is_array = dt.endswith("[]")

            def getter(o: _Object, _p: str = path, _arr: bool = is_array) -> list[Any]:
                if _p not in o.properties:
                    return []
                v = o.properties[_p]
                return list(v) if _arr else [v]

        if op == F.OPERATOR_IS_NULL:
            if kind != "value_boolean":
                raise _RequestError("IsNull needs a boolean value")
            return lambda o: (len(getter(o)) == 0) == value
        value = _filter_value(base, kind, value)
        values = value if isinstance(value, list) else [value]

        if path == "_id" and op in (F.OPERATOR_EQUAL, F.OPERATOR_CONTAINS_ANY):
            wanted = set(values)  # fast path: the two-stage search filters stage 2 by candidate ids
            return lambda o: o.uuid in wanted

        if base == "text":
            # a text value matches when all its tokens occur in the property (field: the whole value)
            wants = {v: _tokens(v, tokenization) for v in values}

            def match_one(stored: list[Any], v: Any) -> bool:
                have = {t for s in stored for t in _tokens(s, tokenization)}
                return bool(wants[v]) and all(t in have for t in wants[v])
        else:
            def match_one(stored: list[Any], v: Any) -> bool:
                return any(s == v for s in stored)

        if op == F.OPERATOR_EQUAL:
            return lambda o: match_one(getter(o), value)
        if op == F.OPERATOR_NOT_EQUAL:
            return lambda o: not match_one(getter(o), value)
        if op == F.OPERATOR_CONTAINS_ANY:
            return lambda o: any(match_one(getter(o), v) for v in values)
        if op == F.OPERATOR_CONTAINS_ALL:
            return lambda o: all(match_one(getter(o), v) for v in values)
        if op == F.OPERATOR_CONTAINS_NONE:
            return lambda o: not any(match_one(getter(o), v) for v in values)
        if op == F.OPERATOR_LIKE:
            if base not in ("text", "uuid"):
                raise _RequestError(f"Like is not supported on data type {base}")
            pattern = value.lower() if tokenization in ("word", "lowercase") else value

            def like(o: _Object) -> bool:
                stored = getter(o)
                toks = [t for s in stored for t in (_tokens(s, tokenization) if base == "text" else [s])]
                return any(fnmatch.fnmatchcase(t, pattern) for t in toks)
            return like
        compare = {
            F.OPERATOR_GREATER_THAN: lambda a, b: a > b, F.OPERATOR_GREATER_THAN_EQUAL: lambda a, b: a >= b,
            F.OPERATOR_LESS_THAN: lambda a, b: a < b, F.OPERATOR_LESS_THAN_EQUAL: lambda a, b: a <= b,
        }.get(op)
        if compare is None:
            raise _Unimplemented(f"filter operator {F.Operator.Name(op)}")
        if base == "boolean":
            raise _RequestError("range filters are not supported on boolean properties")
        return lambda o: any(compare(s, value) for s in getter(o))

    # -- search ---------------------------------------------------------------------------------
    def search(self, req: search_get_pb2.SearchRequest) -> search_get_pb2.SearchReply:
        start = time.perf_counter()
        for unsupported in ("hybrid_search", "bm25_search", "near_object", "near_text", "near_image", "near_audio",
                            "near_video", "near_depth", "near_thermal", "near_imu", "generative", "rerank",
                            "group_by", "boost"):
            if req.HasField(unsupported):
                raise _Unimplemented(f"Search.{unsupported}")
        if req.tenant:
            raise _RequestError("has multi-tenancy disabled, but request was with tenant")
        if req.autocut:
            raise _Unimplemented("autocut")
        col = self.get_collection(req.collection)
        limit = req.limit or QUERY_DEFAULTS_LIMIT
        if req.offset + limit > QUERY_MAXIMUM_RESULTS:
            raise _RequestError(f"query maximum results exceeded: offset ({req.offset}) + limit ({limit}) > "
                                f"QUERY_MAXIMUM_RESULTS ({QUERY_MAXIMUM_RESULTS})")
        pred = self.compile_filter(col, req.filters) if req.HasField("filters") else None
        distances: dict[str, float] = {}
        if req.HasField("near_vector"):
            target, query = self._near_vector_target(col, req.near_vector)
            ids, mat = col.matrix(target)
            if mat.shape[0] and mat.shape[1] != query.shape[0]:
                raise _RequestError(f"vector search: knn search: vector lengths don't match: "
                                    f"{query.shape[0]} vs {mat.shape[1]}")
            metric = col.distance_metric(target)
            if metric == "cosine":
                dist = 1.0 - mat @ (query / np.linalg.norm(query)) if mat.shape[0] else np.zeros(0, np.float32)
            elif metric == "dot":
                dist = -(mat @ query)
            elif metric == "l2-squared":
                dist = ((mat - query) ** 2).sum(axis=1)
            else:
                raise _Unimplemented(f"distance {metric}")
            order = np.argsort(dist, kind="stable")
            nv = req.near_vector
            max_distance = nv.distance if nv.HasField("distance") else None
            min_certainty = nv.certainty if nv.HasField("certainty") else None
            if min_certainty is not None and metric != "cosine":
                raise _RequestError("certainty is only supported for cosine distance")

            def by_distance() -> Any:  # lazily, so a page stops early
                for i in order:
                    d = float(dist[i])
                    if max_distance is not None and d > max_distance:
                        return
                    if min_certainty is not None and 1 - d / 2 < min_certainty:
                        return
                    distances[ids[i]] = d
                    yield col.objects[ids[i]]
            ranked: Any = by_distance()
        else:
            ranked = list(col.objects.values())
            if req.after:
                after = str(uuid_lib.UUID(req.after))
                ranked = sorted((o for o in ranked if o.uuid > after), key=lambda o: o.uuid)
        wanted = None if req.sort_by else req.offset + limit  # without sorting, stop at the page end
        candidates = []
        for o in ranked:
            if pred is None or pred(o):
                candidates.append(o)
                if wanted is not None and len(candidates) >= wanted:
                    break
        for sort in reversed(req.sort_by):
            if len(sort.path) != 1:
                raise _Unimplemented("sorting on reference paths")
            key = sort.path[0]
            present = [o for o in candidates if key in o.properties or key == "_id"]
            absent = [o for o in candidates if not (key in o.properties or key == "_id")]
            present.sort(key=lambda o: o.uuid if key == "_id" else o.properties[key], reverse=not sort.ascending)
            candidates = present + absent if sort.ascending else absent + present
        page = candidates[req.offset: req.offset + limit]
        reply = search_get_pb2.SearchReply()
        for o in page:
            reply.results.append(self._result(col, o, req, distances.get(o.uuid)))
        reply.took = time.perf_counter() - start
        return reply

    def _near_vector_target(self, col: _Collection, nv: base_search_pb2.NearVector) -> tuple[str, np.ndarray]:
        configs = col.vector_configs()
        targets = list(nv.targets.target_vectors) or list(nv.target_vectors)
        if nv.vector_for_targets or nv.vector_per_target:
            raise _Unimplemented("near_vector with a vector per target")
        if len(targets) > 1:
            raise _Unimplemented("multi-target vector search (target combinations)")
        if not targets:
            if len(configs) > 1:
                raise _RequestError(f"multiple vectors exist for collection {col.name}, specify which target "
                                    f"vector to search with: {sorted(configs)}")
            targets = [next(iter(configs))]
        target = targets[0]
        if target not in configs:
            raise _RequestError(f"target vector {target!r} not found in collection {col.name}")
        if nv.vectors:
            if len(nv.vectors) != 1 or nv.vectors[0].type == base_pb2.Vectors.VECTOR_TYPE_MULTI_FP32:
                raise _Unimplemented("multi-vector queries")
            data = nv.vectors[0].vector_bytes
        elif nv.vector_bytes:
            data = nv.vector_bytes
        elif len(nv.vector):
            data = struct.pack(f"<{len(nv.vector)}f", *nv.vector)
        else:
            raise _RequestError("near_vector without a vector")
        return target, np.frombuffer(data, dtype="<f4").astype(np.float32)

    def _result(self, col: _Collection, o: _Object, req: search_get_pb2.SearchRequest,
                distance: float | None) -> search_get_pb2.SearchResult:
        res = search_get_pb2.SearchResult()
        meta = res.metadata
        meta.id = o.uuid
        meta.id_as_bytes = uuid_lib.UUID(o.uuid).bytes
        md = req.metadata if req.HasField("metadata") else None
        if md is not None:
            if md.distance and distance is not None:
                meta.distance, meta.distance_present = distance, True
            if md.certainty and distance is not None:
                meta.certainty, meta.certainty_present = 1 - distance / 2, True
            if md.creation_time_unix:
                meta.creation_time_unix, meta.creation_time_unix_present = o.created, True
            if md.last_update_time_unix:
                meta.last_update_time_unix, meta.last_update_time_unix_present = o.updated, True
            names = list(md.vectors) if md.vectors else (list(o.vectors) if md.vector else [])
            for name in names:
                if name not in o.vectors:
                    if name not in col.vector_configs():
                        raise _RequestError(f"vector {name!r} does not exist in collection {col.name}")
                    continue
                if name == "default" and not col.config.get("vectorConfig"):
                    meta.vector_bytes = o.vectors[name].astype("<f4").tobytes()
                    continue
                meta.vectors.append(base_pb2.Vectors(name=name, vector_bytes=o.vectors[name].astype("<f4").tobytes(),
                                                     type=base_pb2.Vectors.VECTOR_TYPE_SINGLE_FP32))
        pr = req.properties if req.HasField("properties") else None
        if pr is not None and (pr.ref_properties or pr.object_properties):
            raise _Unimplemented("returning reference or nested object properties")
        if pr is None or pr.return_all_nonref_properties:
            wanted = list(o.properties)
        else:
            wanted = [p for p in pr.non_ref_properties if p in o.properties]
            unknown = [p for p in pr.non_ref_properties if col.prop(p) is None]
            if unknown:
                raise _RequestError(f"could not find property {unknown[0]!r} in collection {col.name}")
        res.properties.target_collection = col.name
        for name in wanted:
            prop = col.prop(name)
            res.properties.non_ref_props.fields[name].CopyFrom(
                _to_value(prop["dataType"][0] if prop else "text", o.properties[name]))
        return res

    # -- batch delete / aggregate ---------------------------------------------------------------
    def batch_delete(self, req: batch_delete_pb2.BatchDeleteRequest) -> batch_delete_pb2.BatchDeleteReply:
        start = time.perf_counter()
        if req.tenant:
            raise _RequestError("has multi-tenancy disabled, but request was with tenant")
        col = self.get_collection(req.collection)
        if not req.HasField("filters"):
            raise _RequestError("batch delete needs a filter")
        pred = self.compile_filter(col, req.filters)
        matches = [u for u, o in col.objects.items() if pred(o)][:QUERY_MAXIMUM_RESULTS]
        reply = batch_delete_pb2.BatchDeleteReply(matches=len(matches))
        if not req.dry_run:
            for u in matches:
                del col.objects[u]
            col.version += 1
            reply.successful = len(matches)
        if req.verbose:
            for u in matches:
                reply.objects.append(batch_delete_pb2.BatchDeleteObject(uuid=uuid_lib.UUID(u).bytes,
                                                                        successful=not req.dry_run))
        reply.took = time.perf_counter() - start
        return reply

    def aggregate(self, req: aggregate_pb2.AggregateRequest) -> aggregate_pb2.AggregateReply:
        start = time.perf_counter()
        if req.aggregations:
            raise _Unimplemented("Aggregate property metrics")
        if req.HasField("group_by"):
            raise _Unimplemented("Aggregate group_by")
        if req.WhichOneof("search"):
            raise _Unimplemented(f"Aggregate with {req.WhichOneof('search')}")
        if req.tenant:
            raise _RequestError("has multi-tenancy disabled, but request was with tenant")
        col = self.get_collection(req.collection)
        objs = list(col.objects.values())
        if req.HasField("filters"):
            pred = self.compile_filter(col, req.filters)
            objs = [o for o in objs if pred(o)]
        reply = aggregate_pb2.AggregateReply(took=time.perf_counter() - start)
        single = reply.single_result
        if req.objects_count:
            single.objects_count = len(objs)
        else:
            single.SetInParent()
        return reply



def _auto_type(value: Any) -> str:
    """Weaviate auto-schema (simplified): gRPC sends JSON numbers as doubles, so they become ``number``."""
    sample = value[0] if isinstance(value, list) and value else value
    if isinstance(sample, bool):
        t = "boolean"
    elif isinstance(sample, int):
        t = "int"
    elif isinstance(sample, float):
        t = "number"
    elif isinstance(sample, str):
        t = "text"
    else:
        raise _Unimplemented(f"auto-schema for {type(sample).__name__} values")
    return t + "[]" if isinstance(value, list) else t


def _coerce_scalar(class_name: str, prop: str, base: str, value: Any) -> Any:
    def bad(what: str) -> _RequestError:
        return _RequestError(f"invalid {what} property '{prop}' on class '{class_name}': "
                             f"requires a {what}, the given value is {value!r}")

    if base in ("text", "date", "uuid"):
        if not isinstance(value, str):
            raise bad("string" if base == "text" else base)
        if base == "uuid":
            try:
                return str(uuid_lib.UUID(value))
            except ValueError:
                raise bad("uuid") from None
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise bad("integer")
        return int(value)
    if base == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("number")
        return float(value)
    if base == "boolean":
        if not isinstance(value, bool):
            raise bad("boolean")
        return value
    return value  # geoCoordinates, phoneNumber, blob, references: stored as given


def _filter_value(base: str, kind: str | None, value: Any) -> Any:
    """Weaviate's gRPC filter value rules: an int on a number property is converted; a float on an
    int property must be integral; otherwise the value type must match the property type."""
    scalar_kind = kind.replace("_array", "") if kind else None
    values = value if isinstance(value, list) else [value]
    expected = {"text": "value_text", "uuid": "value_text", "date": "value_text", "int": "value_int",
                "number": "value_number", "boolean": "value_boolean"}[base]
    out = []
    for v in values:
        if base == "number" and scalar_kind == "value_int":
            v = float(v)
        elif base == "int" and scalar_kind == "value_number":
            if not float(v).is_integer():
                raise _RequestError(f"filtering for integer, but received a floating point number {v}")
            v = int(v)
        elif scalar_kind != expected:
            raise _RequestError(f"data type filter cannot use {scalar_kind!r} on type {base!r}, "
                                f"use {expected!r} instead")
        out.append(v)
    return out if isinstance(value, list) else out[0]


def _to_value(data_type: str, value: Any) -> properties_pb2.Value:
    base = data_type[:-2] if data_type.endswith("[]") else data_type
    if isinstance(value, list):
        lv = properties_pb2.ListValue()
        if base == "int":
            lv.int_values.values = struct.pack(f"<{len(value)}q", *value)
        elif base == "number":
            lv.number_values.values = struct.pack(f"<{len(value)}d", *value)
        elif base == "boolean":
            lv.bool_values.values.extend(value)
        elif base == "uuid":
            lv.uuid_values.values.extend(value)
        elif base == "date":
            lv.date_values.values.extend(value)
        else:
            lv.text_values.values.extend(value)
        return properties_pb2.Value(list_value=lv)
    if base == "int":
        return properties_pb2.Value(int_value=value)
    if base == "number":
        return properties_pb2.Value(number_value=value)
    if base == "boolean":
        return properties_pb2.Value(bool_value=value)
    if base == "uuid":
        return properties_pb2.Value(uuid_value=value)
    if base == "date":
        return properties_pb2.Value(date_value=value)
    return properties_pb2.Value(text_value=str(value))


def _object_json(col: _Collection, o: _Object, include_vector: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"class": col.name, "id": o.uuid, "properties": dict(o.properties),
                           "creationTimeUnix": o.created, "lastUpdateTimeUnix": o.updated}
    if include_vector:
        if col.config.get("vectorConfig"):
            out["vectors"] = {k: v.tolist() for k, v in o.vectors.items()}
        elif "default" in o.vectors:
            out["vector"] = o.vectors["default"].tolist()
    return out


class _Servicer(weaviate_pb2_grpc.WeaviateServicer):
    def __init__(self, fake: FakeWeaviate):
        self.fake = fake

    def _run(self, name: str, fn: Callable[[Any], Any], request: Any, context: grpc.ServicerContext) -> Any:
        fake = self.fake
        fake.calls[f"gRPC weaviate.v1.Weaviate/{name}"] += 1
        auth = dict(context.invocation_metadata()).get("authorization")
        if not fake._authorized(auth):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "anonymous access not enabled, please provide an api key")
        try:
            with fake.lock:
                return fn(request)
        except _RequestError as e:
            if isinstance(e, _Unimplemented):
                fake.unknown.append(f"gRPC {name}: {e}")
            context.abort(e.code, str(e))

    def Search(self, request, context):  # noqa: N802 - gRPC method names
        return self._run("Search", self.fake.search, request, context)

    def BatchObjects(self, request, context):  # noqa: N802
        def batch(req: batch_pb2.BatchObjectsRequest) -> batch_pb2.BatchObjectsReply:
            start = time.perf_counter()
            reply = batch_pb2.BatchObjectsReply()
            for i, obj in enumerate(req.objects):
                try:
                    self.fake.put_object(obj)
                except _RequestError as e:
                    if isinstance(e, _Unimplemented):
                        self.fake.unknown.append(f"gRPC BatchObjects: {e}")
                    reply.errors.append(batch_pb2.BatchObjectsReply.BatchError(index=i, error=str(e)))
            reply.took = time.perf_counter() - start
            return reply
        return self._run("BatchObjects", batch, request, context)

    def BatchDelete(self, request, context):  # noqa: N802
        return self._run("BatchDelete", self.fake.batch_delete, request, context)

    def Aggregate(self, request, context):  # noqa: N802
        return self._run("Aggregate", self.fake.aggregate, request, context)

    def _unimplemented(self, name: str, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, self.fake._record_unknown(f"gRPC weaviate.v1.Weaviate/{name}"))

    def BatchReferences(self, request, context):  # noqa: N802
        self._unimplemented("BatchReferences", context)

    def TenantsGet(self, request, context):  # noqa: N802
        self._unimplemented("TenantsGet", context)

    def BatchStream(self, request_iterator, context):  # noqa: N802
        self._unimplemented("BatchStream", context)


class _UnknownRpcHandler(grpc.GenericRpcHandler):
    """Answers any other gRPC method with UNIMPLEMENTED and records it."""

    def __init__(self, fake: FakeWeaviate):
        self.fake = fake

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        fake = self.fake

        def reject(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, fake._record_unknown(f"gRPC {method}"))
        return grpc.unary_unary_rpc_method_handler(reject, request_deserializer=lambda b: b,
                                                   response_serializer=lambda b: b)


class _RestHandler(BaseHTTPRequestHandler):
    server_fake: FakeWeaviate
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr logging
        logger.debug("fake weaviate REST: " + format, *args)

    def _send(self, status: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": [{"message": message}]})

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise _RequestError("request body is not valid JSON", 400) from None

    def _dispatch(self) -> None:
        fake = self.server_fake
        path, _, query = self.path.partition("?")
        path = path.rstrip("/") or "/"
        route = f"{self.command} {path}"
        public = path.startswith("/v1/.well-known/")
        if not public and not fake._authorized(self.headers.get("Authorization")):
            fake.calls[f"REST {self.command} (unauthorized)"] += 1
            self._body()
            self._error(401, "anonymous access not enabled, please provide an api key")
            return
        parts = path.strip("/").split("/")
        try:
            body = self._body() if self.command in ("POST", "PUT", "PATCH") else None
            with fake.lock:
                status, out, pattern = self._route(parts, body, query)
        except _RequestError as e:
            fake.calls[f"REST {route}"] += 1
            if isinstance(e, _Unimplemented):
                fake.unknown.append(f"REST {route}: {e}")
            self._error(e.status, str(e))
            return
        if pattern is None:
            self._error(404, fake._record_unknown(f"REST {route}"))
            return
        fake.calls[f"REST {self.command} {pattern}"] += 1
        self._send(status, out)

    def _route(self, parts: list[str], body: Any, query: str) -> tuple[int, Any, str | None]:
        fake = self.server_fake
        cmd = self.command
        if parts[:1] != ["v1"]:
            return 404, None, None
        rest = parts[1:]
        if cmd == "GET" and rest == ["meta"]:
            return 200, {"hostname": f"http://127.0.0.1:{fake.http_port}", "version": fake.version,
                         "modules": {m: {} for m in fake.modules}, "grpcMaxMessageSize": GRPC_MAX_MESSAGE_SIZE}, \
                "/v1/meta"
        if cmd == "GET" and rest in ([".well-known", "ready"], [".well-known", "live"]):
            return 200, None, "/v1/.well-known/" + rest[1]
        if cmd == "GET" and rest == [".well-known", "openid-configuration"]:
            return 404, None, "/v1/.well-known/openid-configuration"  # no OIDC configured (as a real server)
        if rest == ["schema"]:
            if cmd == "GET":
                return 200, {"classes": [c.config for c in fake.collections.values()]}, "/v1/schema"
            if cmd == "POST":
                if not isinstance(body, dict):
                    raise _RequestError("schema body must be a JSON object")
                return 200, fake.create_collection(body), "/v1/schema"
        if len(rest) == 2 and rest[0] == "schema":
            if cmd == "GET":
                col = fake.collections.get(_upper_first(rest[1]))
                return (200, col.config, "/v1/schema/{class}") if col else (404, None, "/v1/schema/{class}")
            if cmd == "DELETE":
                fake.collections.pop(_upper_first(rest[1]), None)
                return 200, None, "/v1/schema/{class}"
        if len(rest) == 3 and rest[0] == "schema" and rest[2] == "properties" and cmd == "POST":
            if not isinstance(body, dict):
                raise _RequestError("property body must be a JSON object")
            return 200, fake.add_property(rest[1], body), "/v1/schema/{class}/properties"
        if len(rest) == 3 and rest[0] == "schema" and rest[2] == "shards" and cmd == "GET":
            col = fake.get_collection(rest[1])
            return 200, [{"name": "shard0", "status": "READY", "vectorQueueSize": 0}], "/v1/schema/{class}/shards"
        if len(rest) == 3 and rest[0] == "objects" and cmd in ("GET", "HEAD", "DELETE"):
            pattern = "/v1/objects/{class}/{id}"
            col = fake.collections.get(_upper_first(rest[1]))
            try:
                uid = str(uuid_lib.UUID(rest[2]))
            except ValueError:
                raise _RequestError(f"invalid UUID {rest[2]!r}", 422) from None
            obj = col.objects.get(uid) if col else None
            if obj is None:
                return 404, None, pattern
            if cmd == "DELETE":
                del col.objects[uid]
                col.version += 1
                return 204, None, pattern
            if cmd == "HEAD":
                return 204, None, pattern
            return 200, _object_json(col, obj, "include=vector" in query), pattern
        return 404, None, None

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch
