"""Qdrant: two named vectors per point; stage 2 is Qdrant's own prefetch + re-query.

``query_points(prefetch=Prefetch(query=coarse, using=<coarse>, limit=candidates),
query=full, using=<full>)`` runs both stages in one request on the server. Works with
local mode (``path=``, ``":memory:"``) and a server URL. The coarse vector can be stored
quantized (scalar int8 or binary) with rescoring, cutting its RAM a further 4-32x.

Local mode is the exception to the one request: its re-query turns the candidate ids into a
``HasId`` filter that it checks point by point in Python over the whole collection, which made
two-stage search 6-12x *slower* than a full-vector query at 20k points
(``benchmarks/search.py``). There the coarse query returns the candidates' full vectors and
they are rescored here, in NumPy: same scores (cosine of unit vectors), cost proportional to
the candidates.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from unirep_core import UniRep
from unirep_core.optional import require

from .base import Condition, Record, TwoStageStore

__all__ = ["QdrantStore"]


class QdrantStore(TwoStageStore):
    write_batch_size = 256  # ~1.5 MB of JSON per request at 384+128 dims: far under Qdrant's 32 MB

    def __init__(self, model: UniRep, location: str = ":memory:", *, collection: str = "unirep",
                 coarse_dim: int | None = None, full_dim: int | None = None, quantization: str | None = None,
                 api_key: str | None = None, client: Any = None, encode_batch_size: int = 32):
        super().__init__(model, collection=collection, coarse_dim=coarse_dim, full_dim=full_dim,
                         encode_batch_size=encode_batch_size)
        qdrant = require("qdrant_client", extra="qdrant")
        self._models = qdrant.models
        if quantization not in (None, "scalar", "binary"):
            raise ValueError(f"quantization={quantization!r}; expected None, 'scalar' or 'binary'")
        self.quantization = quantization
        if client is not None:
            self.client = client
        elif location == ":memory:":
            self.client = qdrant.QdrantClient(location=":memory:")
        elif location.startswith(("http://", "https://")):
            self.client = qdrant.QdrantClient(url=location, api_key=api_key)
        else:
            self.client = qdrant.QdrantClient(path=location)
        self._local = _is_local(self.client)
        self._ensure_collection()

    def _ensure_collection(self) -> None:
        m = self._models
        if self.client.collection_exists(self.collection):
            vectors = self.client.get_collection(self.collection).config.params.vectors
            have = {name: params.size for name, params in (vectors or {}).items()} if isinstance(vectors, dict) else {}
            want = {self.coarse_name: self.coarse_dim, self.full_name: self.full_dim}
            if any(have.get(name) != size for name, size in want.items()):
                raise ValueError(
                    f"Qdrant collection {self.collection!r} has vectors {have}, not {want}: "
                    "use another collection name for this model/size"
                )
            return
        quant = None
        if self.quantization == "scalar":
            quant = m.ScalarQuantization(scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, always_ram=True))
        elif self.quantization == "binary":
            quant = m.BinaryQuantization(binary=m.BinaryQuantizationConfig(always_ram=True))
        self.client.create_collection(
            self.collection,
            vectors_config={
                self.coarse_name: m.VectorParams(size=self.coarse_dim, distance=m.Distance.COSINE,
                                                 quantization_config=quant),
                # The full vector is read only for the few candidates: it may live on disk.
                self.full_name: m.VectorParams(size=self.full_dim, distance=m.Distance.COSINE, on_disk=True),
            },
        )

    # -- adapter methods ----------------------------------------------------------------
    def _upsert(self, records: Sequence[Record]) -> None:
        m = self._models
        points = [m.PointStruct(id=r.key, vector={self.coarse_name: r.coarse, self.full_name: r.full},
                                payload=r.payload) for r in records]
        self.client.upsert(self.collection, points=points, wait=True)

    def _existing(self, keys: Sequence[str]) -> set[str]:
        found = self.client.retrieve(self.collection, ids=list(keys), with_payload=False, with_vectors=False)
        return {str(p.id) for p in found}

    def _get(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        found = self.client.retrieve(self.collection, ids=list(keys), with_payload=True, with_vectors=False)
        return {str(p.id): dict(p.payload or {}) for p in found}

    def _two_stage(self, coarse: list[float], full: list[float], k: int, candidates: int,
                   conditions: Sequence[Condition]) -> list[tuple[str, float, dict[str, Any]]]:
        m = self._models
        flt = self._filter(conditions)
        search_params = None
        if self.quantization:
            search_params = m.SearchParams(quantization=m.QuantizationSearchParams(rescore=True, oversampling=2.0))
        if self._local:
            return self._two_stage_local(coarse, full, k, candidates, flt)
        result = self.client.query_points(
            self.collection,
            prefetch=m.Prefetch(query=coarse, using=self.coarse_name, limit=candidates, filter=flt,
                                params=search_params),
            query=full,
            using=self.full_name,
            limit=k,
            with_payload=True,
        )
        return [(str(p.id), float(p.score), dict(p.payload or {})) for p in result.points]

    def _two_stage_local(self, coarse: list[float], full: list[float], k: int, candidates: int,
                         flt: Any) -> list[tuple[str, float, dict[str, Any]]]:
        # Local mode searches exactly and ignores quantization (it warns if given search_params).
        found = self.client.query_points(self.collection, query=coarse, using=self.coarse_name, limit=candidates,
                                         query_filter=flt, with_payload=True,
                                         with_vectors=[self.full_name]).points
        if not found:
            return []
        vectors = np.asarray([p.vector[self.full_name] for p in found], dtype=np.float32)  # type: ignore[index]
        q = np.asarray(full, dtype=np.float32)
        q /= max(float(np.linalg.norm(q)), 1e-12)
        # Qdrant stores cosine vectors normalised; normalising again keeps the score exact for
        # vectors written by other clients.
        scores = vectors @ q / np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(str(found[i].id), float(scores[i]), dict(found[i].payload or {})) for i in order]

    def _delete(self, keys: Sequence[str]) -> None:
        self.client.delete(self.collection, points_selector=self._models.PointIdsList(points=list(keys)), wait=True)

    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def close(self) -> None:
        self.client.close()

    def _is_transient(self, error: BaseException) -> bool:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        if isinstance(error, UnexpectedResponse):
            return error.status_code == 429 or error.status_code >= 500
        return isinstance(error, (ResponseHandlingException, ConnectionError, TimeoutError))

    def _filter(self, conditions: Sequence[Condition]) -> Any:
        if not conditions:
            return None
        m = self._models
        must = []
        for c in conditions:
            if c.op == "eq":
                must.append(_equals(m, c.field, c.value))
            elif c.op == "in":
                if all(isinstance(v, str) for v in c.value) or all(
                        isinstance(v, int) and not isinstance(v, bool) for v in c.value):
                    must.append(m.FieldCondition(key=c.field, match=m.MatchAny(any=list(c.value))))
                else:  # mixed or float values: OR of equalities
                    must.append(m.Filter(should=[_equals(m, c.field, v) for v in c.value]))
            else:
                must.append(m.FieldCondition(key=c.field, range=m.Range(**{c.op: c.value})))
        return m.Filter(must=must)


def _equals(m: Any, key: str, value: Any) -> Any:
    if isinstance(value, float):  # MatchValue takes str/int/bool only
        return m.FieldCondition(key=key, range=m.Range(gte=value, lte=value))
    return m.FieldCondition(key=key, match=m.MatchValue(value=value))


def _is_local(client: Any) -> bool:
    """Whether ``client`` runs Qdrant's embedded local mode (``path=`` / ``":memory:"``)."""
    try:
        from qdrant_client.local.qdrant_local import QdrantLocal
    except ImportError:  # pragma: no cover - layout of other qdrant-client versions
        return False
    return isinstance(getattr(client, "_client", None), QdrantLocal)
