"""An in-process fake Pinecone speaking the REST API version that SDK 10.2.0 sends (``2026-07``).

Written from the SDK's own request builders and response models
(``pinecone/client/indexes.py``, ``pinecone/index/__init__.py``,
``pinecone/models/indexes/index.py``, ``pinecone/models/vectors/responses.py``), so the
adapter is tested through the real SDK and its real HTTP client:

Control plane (``Pinecone(api_key=..., host=server.url)``):
  ``POST /indexes``        body ``{"name", "schema": {"fields": {"_values": {"type": "dense_vector",
                           "dimension", "metric"}}}, "deployment": {...}}`` -> 201 + index description
  ``GET /indexes``         ``{"indexes": [...]}``
  ``GET /indexes/{name}``  index description (``name, host, status, schema, deployment,
                           deletion_protection``: the SDK fails to parse one without ``schema``/``deployment``)
  ``DELETE /indexes/{name}`` 202, empty body
Data plane, one per index at ``{url}/index/{name}`` (the description's ``host``; the SDK keeps a
path prefix of a host, so one server plays every index host):
  ``POST /vectors/upsert``, ``POST /query`` (camelCase ``topK``, ``includeValues``,
  ``includeMetadata``), ``GET /vectors/fetch?ids=..&ids=..&namespace=``, ``POST /vectors/delete``
  (``ids`` / ``deleteAll`` / ``filter``), ``POST /describe_index_stats``.

Every request needs the ``Api-Key`` header (401 otherwise) and a known
``X-Pinecone-Api-Version``. The documented limits are enforced with errors shaped like the
real ones: request body over 2 MB -> 413, more than 1000 vectors per upsert -> 400, metadata over
40 KB per record -> 400, ``topK`` over 10,000 -> 400, more than 1000 ids per fetch/delete -> 400,
metadata values other than string/number/boolean/list of strings -> 400. Like Pinecone, numbers
in metadata come back as floats and null metadata values are dropped.

Test hooks: ``server.inject(op, status, times)`` makes the next ``times`` requests of an
operation fail (e.g. 429 with ``Retry-After: 0``); ``server.log`` records every request
(operation, index, status, body size, vector count). ``python -m tests.integrations.pinecone_server
--port 5081`` runs it standalone (for the ``service`` tests).
"""
from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

__all__ = ["FakePinecone", "RequestRecord", "API_VERSIONS"]

#: API versions this fake answers (what SDK 10.2.0 sends on both planes).
API_VERSIONS = ("2026-07",)
MAX_REQUEST_BYTES = 2 * 1024 * 1024
MAX_UPSERT_VECTORS = 1000
MAX_METADATA_BYTES = 40 * 1024
MAX_TOP_K = 10_000
MAX_IDS_PER_REQUEST = 1000
MAX_ID_CHARS = 512
_CONTROL_OPS = ("create_index", "list_indexes", "describe_index", "delete_index")
_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


class _ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(body)
        self.status, self.body, self.headers = status, body, headers or {}


def _control_error(status: int, code: str, message: str) -> _ApiError:
    """Control-plane error body: ``{"error": {"code", "message"}, "status"}``."""
    return _ApiError(status, {"error": {"code": code, "message": message}, "status": status})


# gRPC status codes the data plane puts in its error bodies.
_GRPC = {400: 3, 401: 16, 404: 5, 413: 3, 429: 8, 500: 13, 503: 14}


def _data_error(status: int, message: str) -> _ApiError:
    """Data-plane error body: ``{"code": <grpc code>, "message", "details": []}``."""
    return _ApiError(status, {"code": _GRPC.get(status, 2), "message": message, "details": []})


@dataclass
class RequestRecord:
    method: str
    op: str  # "create_index", "describe_index", "upsert", "query", "fetch", ...
    index: str | None
    status: int
    body_bytes: int
    vectors: int = 0  # upsert: vectors in the request
    namespace: str | None = None


@dataclass
class _Namespace:
    rows: dict[str, tuple[np.ndarray, dict[str, Any]]] = field(default_factory=dict)
    _matrix: tuple[list[str], np.ndarray, list[dict[str, Any]]] | None = None

    def matrix(self, dim: int) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
        if self._matrix is None:
            ids = list(self.rows)
            m = np.stack([self.rows[i][0] for i in ids]) if ids else np.zeros((0, dim), np.float32)
            norms = np.linalg.norm(m, axis=1, keepdims=True)
            self._matrix = (ids, m / np.where(norms == 0, 1, norms), [self.rows[i][1] for i in ids])
        return self._matrix

    def changed(self) -> None:
        self._matrix = None


@dataclass
class _Index:
    name: str
    dimension: int
    metric: str
    deployment: dict[str, Any]
    tags: dict[str, str] | None
    host: str
    namespaces: dict[str, _Namespace] = field(default_factory=dict)
    describes: int = 0

    def description(self, ready: bool = True) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "status": {"ready": ready, "state": "Ready" if ready else "Initializing"},
            "schema": {"fields": {"_values": {"type": "dense_vector", "dimension": self.dimension,
                                              "metric": self.metric}}},
            "deployment": self.deployment,
            "deletion_protection": "disabled",
            "read_capacity": {"mode": "OnDemand", "status": {"state": "Ready"}},
            "tags": self.tags,
        }


class FakePinecone:
    """The fake server. ``with FakePinecone() as server: Pinecone(api_key=server.api_key, host=server.url)``."""

    def __init__(self, api_key: str = "fake-key", *, ready_after_describes: int = 1):
        self.api_key = api_key
        #: an index reports ``ready`` from this many describes after its creation on
        #: (a created index first says "Initializing", as a real one does)
        self.ready_after_describes = ready_after_describes
        self.indexes: dict[str, _Index] = {}
        self.log: list[RequestRecord] = []
        self._faults: list[list[Any]] = []  # [op, status, remaining, retry_after]
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, port: int = 0) -> "FakePinecone":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-pinecone", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakePinecone":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- test hooks --------------------------------------------------------------------
    def inject(self, op: str, status: int = 429, times: int = 1, retry_after: str | None = "0") -> None:
        """Fail the next ``times`` requests of ``op`` ("upsert", "query", "fetch", ...) with ``status``."""
        with self._lock:
            self._faults.append([op, status, times, retry_after])

    def requests(self, op: str | None = None, index: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.log if (op is None or r.op == op) and (index is None or r.index == index)]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    # -- dispatch ----------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(raw_path)
        path = parts.path.rstrip("/") or "/"
        query = parse_qs(parts.query, keep_blank_values=True)
        op, index_name = _route(method, path)
        record = RequestRecord(method, op, index_name, 200, len(body))
        status, extra_headers, payload = 200, {}, {}
        try:
            if headers.get("Api-Key") != self.api_key:
                if op in _CONTROL_OPS or index_name is None:
                    raise _control_error(401, "UNAUTHENTICATED", "Invalid API Key")
                raise _data_error(401, "Invalid API Key")
            version = headers.get("X-Pinecone-Api-Version")
            if version not in API_VERSIONS:
                raise _control_error(400, "INVALID_ARGUMENT",
                                     f"Unsupported API version {version!r}; this server speaks {API_VERSIONS}")
            self._maybe_fault(op)
            status, payload = self._dispatch(op, index_name, method, query, body, record)
        except _ApiError as e:
            status, payload, extra_headers = e.status, e.body, e.headers
        record.status = status
        with self._lock:
            self.log.append(record)
        data = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        return status, extra_headers, data

    def _maybe_fault(self, op: str) -> None:
        with self._lock:
            for fault in self._faults:
                if fault[0] == op and fault[2] > 0:
                    fault[2] -= 1
                    status, retry_after = fault[1], fault[3]
                    headers = {"Retry-After": retry_after} if retry_after is not None else {}
                    if status == 429:
                        raise _ApiError(429, {"code": 8, "message": "Request failed. You've reached the max "
                                              "request rate for this index (injected).", "details": []}, headers)
                    raise _ApiError(status, {"code": _GRPC.get(status, 2),
                                             "message": f"injected failure {status}", "details": []}, headers)

    def _dispatch(self, op: str, name: str | None, method: str, query: dict[str, list[str]], body: bytes,
                  record: RequestRecord) -> tuple[int, Any]:
        if op == "unknown":
            raise _data_error(404, f"Not found: {method} (no such route)")
        if op in ("create_index", "list_indexes"):
            return self._create(_json(body, control=True)) if op == "create_index" else self._list()
        assert name is not None
        with self._lock:
            index = self.indexes.get(name)
        if index is None:
            if op in _CONTROL_OPS:
                raise _control_error(404, "NOT_FOUND", f"Resource {name} not found")
            raise _data_error(404, f"Index {name!r} not found")
        if op == "describe_index":
            with self._lock:
                index.describes += 1
                return 200, index.description(ready=index.describes >= self.ready_after_describes)
        if op == "delete_index":
            with self._lock:
                self.indexes.pop(name, None)
            return 202, None
        if len(body) > MAX_REQUEST_BYTES:
            raise _data_error(413, f"Request size {len(body) / 1e6:.1f}MB exceeds the maximum supported "
                                   f"size of 2MB")
        if op == "fetch":
            return self._fetch(index, query)
        req = _json(body, control=False)
        ns_name = req.get("namespace", "") or ""
        record.namespace = ns_name
        if op == "upsert":
            record.vectors = len(req.get("vectors") or [])
            return self._upsert(index, ns_name, req)
        if op == "query":
            return self._query(index, ns_name, req)
        if op == "delete":
            return self._delete(index, ns_name, req)
        if op == "stats":
            return self._stats(index, req)
        raise _data_error(404, f"Not found: {op}")

    # -- control plane -----------------------------------------------------------------
    def _create(self, req: dict[str, Any]) -> tuple[int, Any]:
        name = req.get("name")
        if not isinstance(name, str) or len(name) > 45 or not _NAME_RE.fullmatch(name):
            raise _control_error(400, "INVALID_ARGUMENT", f"Name {name!r} must consist of lower case alphanumeric "
                                 "characters or '-', start and end with an alphanumeric, at most 45 characters")
        fields = ((req.get("schema") or {}).get("fields")) or {}
        dense = fields.get("_values")
        if set(fields) != {"_values"} or not isinstance(dense, dict) or dense.get("type") != "dense_vector":
            raise _control_error(400, "INVALID_ARGUMENT", "this fake serves only vector indexes: schema.fields must "
                                 "be exactly {'_values': {'type': 'dense_vector', 'dimension': D, 'metric': M}}")
        dim, metric = dense.get("dimension"), dense.get("metric", "cosine")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 20_000:
            raise _control_error(400, "INVALID_ARGUMENT", f"dimension must be an integer in 1..20000, got {dim!r}")
        if metric not in ("cosine", "dotproduct", "euclidean"):
            raise _control_error(400, "INVALID_ARGUMENT", f"unknown metric {metric!r}")
        deployment = dict(req.get("deployment") or {"deployment_type": "managed", "cloud": "aws",
                                                     "region": "us-east-1"})
        if deployment.get("deployment_type") != "managed":
            raise _control_error(400, "INVALID_ARGUMENT", "this fake serves only managed (serverless) indexes")
        deployment.setdefault("environment", f"{deployment.get('region')}-{deployment.get('cloud')}")
        with self._lock:
            if name in self.indexes:
                raise _control_error(409, "ALREADY_EXISTS", "Resource already exists")
            index = _Index(name, dim, metric, deployment, req.get("tags"), f"{self.url}/index/{name}")
            self.indexes[name] = index
            return 201, index.description(ready=self.ready_after_describes <= 0)

    def _list(self) -> tuple[int, Any]:
        with self._lock:
            return 200, {"indexes": [i.description() for i in self.indexes.values()]}

    # -- data plane --------------------------------------------------------------------
    def _upsert(self, index: _Index, ns_name: str, req: dict[str, Any]) -> tuple[int, Any]:
        vectors = req.get("vectors")
        if not isinstance(vectors, list) or not vectors:
            raise _data_error(400, "Invalid request: vectors must be a non-empty list")
        if len(vectors) > MAX_UPSERT_VECTORS:
            raise _data_error(400, f"Invalid request: request contains {len(vectors)} vectors, more than the "
                                   f"maximum of {MAX_UPSERT_VECTORS} vectors per upsert")
        rows = []
        for v in vectors:  # the whole batch is rejected when one vector is bad, as Pinecone does
            vid = v.get("id")
            if not isinstance(vid, str) or not 1 <= len(vid) <= MAX_ID_CHARS:
                raise _data_error(400, f"Vector ID must be 1-{MAX_ID_CHARS} characters, got {str(vid)[:40]!r}")
            values = v.get("values")
            if not isinstance(values, list) or len(values) != index.dimension:
                got = len(values) if isinstance(values, list) else 0
                raise _data_error(400, f"Vector dimension {got} does not match the dimension of the index "
                                       f"{index.dimension}")
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values):
                raise _data_error(400, f"Vector {vid!r}: values must be finite numbers")
            meta = v.get("metadata") or {}
            if not isinstance(meta, dict):
                raise _data_error(400, f"Vector {vid!r}: metadata must be an object")
            size = len(json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode())
            if size > MAX_METADATA_BYTES:
                raise _data_error(400, f"Metadata size is {size} bytes, which exceeds the limit of "
                                       f"{MAX_METADATA_BYTES} bytes per vector")
            rows.append((vid, np.asarray(values, dtype=np.float32), _store_metadata(meta)))
        with self._lock:
            ns = index.namespaces.setdefault(ns_name, _Namespace())
            for vid, vec, meta in rows:
                ns.rows[vid] = (vec, meta)
            ns.changed()
        return 200, {"upsertedCount": len(rows)}

    def _query(self, index: _Index, ns_name: str, req: dict[str, Any]) -> tuple[int, Any]:
        top_k = req.get("topK")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            raise _data_error(400, f"Invalid request: topK must be an integer between 1 and {MAX_TOP_K}, "
                                   f"got {top_k!r}")
        flt = req.get("filter") or {}
        if not isinstance(flt, dict):
            raise _data_error(400, "Invalid request: filter must be an object")
        with self._lock:
            ns = index.namespaces.get(ns_name)
            if "id" in req:
                row = ns.rows.get(req["id"]) if ns else None
                if row is None:
                    return 200, {"results": [], "matches": [], "namespace": ns_name, "usage": {"readUnits": 1}}
                vector = row[0]
            else:
                vector = req.get("vector")
            if not isinstance(vector, (list, np.ndarray)) or len(vector) != index.dimension:
                got = len(vector) if isinstance(vector, (list, np.ndarray)) else 0
                raise _data_error(400, f"Query vector dimension {got} does not match the dimension of the index "
                                       f"{index.dimension}")
            ids, matrix, metas = ns.matrix(index.dimension) if ns else ([], np.zeros((0, index.dimension)), [])
        q = np.asarray(vector, dtype=np.float32)
        if index.metric == "cosine":
            q = q / (np.linalg.norm(q) or 1.0)
            scores = matrix @ q
        else:  # dotproduct/euclidean on raw vectors (only cosine is exercised)
            raw = np.stack([index.namespaces[ns_name].rows[i][0] for i in ids]) if ids else matrix
            scores = raw @ q if index.metric == "dotproduct" else -np.sum((raw - q) ** 2, axis=1)
        matcher = _compile(flt) if flt else None
        order = np.argsort(-scores, kind="stable")
        matches = []
        for i in order:
            if matcher is not None and not matcher(metas[i]):
                continue
            m: dict[str, Any] = {"id": ids[i], "score": float(scores[i]),
                                 "values": _matrix_row(index, ns, ids[i]) if req.get("includeValues") else []}
            if req.get("includeMetadata"):
                m["metadata"] = metas[i]
            matches.append(m)
            if len(matches) == top_k:
                break
        return 200, {"results": [], "matches": matches, "namespace": ns_name, "usage": {"readUnits": 5}}

    def _fetch(self, index: _Index, query: dict[str, list[str]]) -> tuple[int, Any]:
        ids = query.get("ids", [])
        ns_name = (query.get("namespace") or [""])[0]
        if not ids:
            raise _data_error(400, "Invalid request: ids must be a non-empty list")
        if len(ids) > MAX_IDS_PER_REQUEST:
            raise _data_error(400, f"Invalid request: fetch accepts at most {MAX_IDS_PER_REQUEST} ids, got {len(ids)}")
        with self._lock:
            ns = index.namespaces.get(ns_name)
            found = {}
            for vid in ids:
                if ns is not None and vid in ns.rows:
                    vec, meta = ns.rows[vid]
                    found[vid] = {"id": vid, "values": vec.tolist(), "metadata": meta}
        return 200, {"vectors": found, "namespace": ns_name, "usage": {"readUnits": 1}}

    def _delete(self, index: _Index, ns_name: str, req: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            ns = index.namespaces.get(ns_name)
            if req.get("deleteAll"):
                if ns is None:  # serverless answers 404 for a namespace that does not exist
                    raise _data_error(404, "Namespace not found")
                del index.namespaces[ns_name]
                return 200, {}
            if "filter" in req and req["filter"] is not None:
                if not req["filter"]:
                    raise _data_error(400, "Delete with empty metadata filter is not allowed")
                match = _compile(req["filter"])
                doomed = [vid for vid, (_, meta) in ns.rows.items() if match(meta)] if ns else []
            else:
                doomed = req.get("ids") or []
                if len(doomed) > MAX_IDS_PER_REQUEST:
                    raise _data_error(400, f"Invalid request: delete accepts at most {MAX_IDS_PER_REQUEST} ids, "
                                           f"got {len(doomed)}")
            if ns is not None:
                for vid in doomed:
                    ns.rows.pop(vid, None)
                ns.changed()
                if not ns.rows:
                    del index.namespaces[ns_name]
        return 200, {}

    def _stats(self, index: _Index, req: dict[str, Any]) -> tuple[int, Any]:
        if req.get("filter"):
            raise _data_error(400, "Serverless and starter indexes do not support describing index stats "
                                   "with metadata filtering")
        with self._lock:
            namespaces = {n: {"vectorCount": len(ns.rows)} for n, ns in index.namespaces.items() if ns.rows}
        return 200, {"namespaces": namespaces, "dimension": index.dimension, "indexFullness": 0.0,
                     "totalVectorCount": sum(v["vectorCount"] for v in namespaces.values()),
                     "metric": index.metric, "vectorType": "dense"}


def _matrix_row(index: _Index, ns: _Namespace | None, vid: str) -> list[float]:
    return ns.rows[vid][0].tolist() if ns is not None else []


def _route(method: str, path: str) -> tuple[str, str | None]:
    if path == "/indexes":
        return ("create_index" if method == "POST" else "list_indexes" if method == "GET" else "unknown"), None
    m = re.fullmatch(r"/indexes/([^/]+)", path)
    if m:
        name = unquote(m.group(1))
        return {"GET": "describe_index", "DELETE": "delete_index"}.get(method, "unknown"), name
    m = re.fullmatch(r"/index/([^/]+)(/.*)", path)
    if m:
        name, rest = unquote(m.group(1)), m.group(2)
        op = {("POST", "/vectors/upsert"): "upsert", ("POST", "/query"): "query", ("GET", "/vectors/fetch"): "fetch",
              ("POST", "/vectors/delete"): "delete", ("POST", "/describe_index_stats"): "stats",
              ("GET", "/describe_index_stats"): "stats"}.get((method, rest), "unknown")
        return op, name
    return "unknown", None


def _json(body: bytes, *, control: bool) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError as e:
        raise (_control_error(400, "INVALID_ARGUMENT", f"invalid JSON: {e}") if control
               else _data_error(400, f"Invalid request: body is not JSON ({e})")) from e
    if not isinstance(data, dict):
        raise _data_error(400, "Invalid request: body must be a JSON object")
    return data


def _store_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """Pinecone's rule: strings, numbers, booleans, lists of strings; numbers are doubles; nulls dropped."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if value is None:
            continue
        if isinstance(value, bool) or isinstance(value, str):
            out[key] = value
        elif isinstance(value, (int, float)):
            out[key] = float(value)
        elif isinstance(value, list) and all(isinstance(x, str) for x in value):
            out[key] = list(value)
        else:
            shown = json.dumps(value, separators=(",", ":"))[:16]
            raise _data_error(400, f"Metadata value must be a string, number, boolean or list of strings, got "
                                   f"'{shown}' for field '{key}'")
    return out


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def _number(op: str, operand: Any) -> float:
    if isinstance(operand, bool) or not isinstance(operand, (int, float)):
        raise _data_error(400, f"Invalid filter: the {op} operator must be followed by a number, got {operand!r}")
    return float(operand)


def _compile(flt: Any):  # noqa: ANN202 - returns a predicate over metadata
    """Pinecone's filter language: ``{field: value | {"$op": v}}``, ``$and`` / ``$or`` lists."""
    if not isinstance(flt, dict):
        raise _data_error(400, f"Invalid filter: expected an object, got {flt!r}")
    preds = []
    for key, cond in flt.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond:
                raise _data_error(400, f"Invalid filter: {key} needs a non-empty list")
            subs = [_compile(c) for c in cond]
            preds.append((lambda m, s=subs: all(p(m) for p in s)) if key == "$and"
                         else (lambda m, s=subs: any(p(m) for p in s)))
            continue
        if key.startswith("$"):
            raise _data_error(400, f"Invalid filter: unknown operator {key}")
        if not isinstance(cond, dict):
            cond = {"$eq": cond}
        for op, operand in cond.items():
            preds.append(_field_pred(key, op, operand))
    return lambda m: all(p(m) for p in preds)


def _field_pred(key: str, op: str, operand: Any):  # noqa: ANN202
    def get(m: dict[str, Any]) -> Any:
        return m.get(key, _MISSING)

    def eq(v: Any, x: Any) -> bool:
        return any(_same(e, x) for e in v) if isinstance(v, list) else _same(v, x)

    if op == "$eq":
        return lambda m: (v := get(m)) is not _MISSING and eq(v, operand)
    if op == "$ne":
        return lambda m: (v := get(m)) is _MISSING or not eq(v, operand)
    if op in ("$in", "$nin"):
        if not isinstance(operand, list) or not operand:
            raise _data_error(400, f"Invalid filter: the {op} operator must be followed by a non-empty list")
        if len(operand) > 10_000:
            raise _data_error(400, f"Invalid filter: the {op} operator accepts at most 10000 values")
        fast = set(operand) if all(isinstance(x, str) for x in operand) else None

        def contains(v: Any) -> bool:
            items = v if isinstance(v, list) else [v]
            if fast is not None:
                return any(isinstance(e, str) and e in fast for e in items)
            return any(_same(e, x) for e in items for x in operand)

        if op == "$in":
            return lambda m: (v := get(m)) is not _MISSING and contains(v)
        return lambda m: (v := get(m)) is _MISSING or not contains(v)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        x = _number(op, operand)
        cmp = {"$gt": float.__gt__, "$gte": float.__ge__, "$lt": float.__lt__, "$lte": float.__le__}[op]
        return lambda m: (isinstance(v := get(m), (int, float)) and not isinstance(v, bool) and cmp(float(v), x))
    if op == "$exists":
        if not isinstance(operand, bool):
            raise _data_error(400, "Invalid filter: the $exists operator must be followed by a boolean")
        return lambda m: (get(m) is not _MISSING) == operand
    raise _data_error(400, f"Invalid filter: unknown operator {op}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's httpx pool expects
    fake: FakePinecone

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, data = self.fake.handle(self.command, self.path, self.headers, body)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass


def main(argv: list[str] | None = None) -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=5081)
    parser.add_argument("--api-key", default="fake-key")
    args = parser.parse_args(argv)
    server = FakePinecone(args.api_key).start(args.port)
    print(f"fake Pinecone on {server.url} (api key {args.api_key!r})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
