"""``unirep index --engine ray``: the same job as the local engine, spread over a Ray cluster.

The job runs in four steps; each has this shape for a reason:

1. **scan** (Ray tasks): a Dataset of files (local paths or any fsspec URL: ``s3://``,
   ``gs://``, ``file://``...) is expanded into items by :mod:`.corpus` and each item gets the
   same id as the local engine gives it (:func:`.base.content_id`, or the JSONL ``id``). Hashing
   reads every image, so that I/O runs on the workers, not on the driver.
2. **plan** (driver): only ids, positions and errors come back. Unreadable items are reported
   by file, ids the database already holds are skipped and an item repeated in the corpus keeps
   its first occurrence, exactly as the local engine counts them. Only the item references of
   what is left go on, never pixels.
3. **encode** (actor pool): one model per actor, loaded once (``num_gpus=1`` per actor when the
   cluster has GPUs, CPU threads split between actors otherwise); one Ray batch is one encoder
   batch. Actors run ``TwoStageStore.add`` itself, so validation, per-item decode failures and
   payloads are those of the local engine.
4. **write**: Qdrant local mode and Milvus Lite are single-process embedded engines (a second
   Qdrant client on the same path fails with "already accessed by another instance"; a Lite
   file belongs to one process), so for those URIs the actors hand vectors back and the driver
   is the one writer (``add_embeddings``). A server (``qdrant+http``, ``milvus+http``,
   ``weaviate+http``, ``pinecone``) takes concurrent clients: each actor opens its own store and
   writes its batches itself, and no vector passes through the driver.

Why a re-run is safe: keys are ``id_to_uuid(id)`` of content ids and every write is an upsert,
so a batch retried after a worker died, or a job re-run after it was killed, rewrites identical
rows instead of adding new ones, and step 2 skips what is already stored. Actors restart up to
``retries`` times (Ray retries their batches); a worker that keeps dying then fails the job
instead of looping, and running the command again finishes it.

Every node needs ``pip install "unirep[ray]"`` and the model (a registered name, or a directory
present on every node); local corpus paths must be on storage all nodes see.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unirep_core.optional import require

from .base import AddResult, Record, TwoStageStore, content_id
from .corpus import IMAGE_SUFFIXES, TEXT_SUFFIXES, CorpusItem, _files, iter_corpus

__all__ = ["CRASH_AFTER_ENV", "CRASH_ONCE_ENV", "IngestError", "RayIndexResult", "index_with_ray", "is_embedded"]

logger = logging.getLogger(__name__)

#: Fault injection for tests and drills: each actor exits (``os._exit``) after this many batches...
CRASH_AFTER_ENV = "UNIREP_RAY_CRASH_AFTER"
#: ...and, when this names a file, only the first actor to create that file does (one crash per job).
CRASH_ONCE_ENV = "UNIREP_RAY_CRASH_ONCE"

_SUFFIXES = TEXT_SUFFIXES + IMAGE_SUFFIXES + (".jsonl",)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PLAN_COLUMNS = ("pos", "id", "text", "image", "meta", "origin", "error")
_STORE_ENV = ("PINECONE_API_KEY", "PINECONE_HOST")  # what open_store reads from the environment
_POS_SHIFT = 32  # pos = file number << 32 | item number in the file: one sortable int per item


class IngestError(RuntimeError):
    """The Ray job failed (a worker kept dying, the cluster went away); what was stored stays."""


@dataclass
class RayIndexResult(AddResult):
    """``AddResult`` (failed is keyed by origin, as the CLI reports it) plus where the time went.

    ``timings``: ``open_s`` (driver model and store), ``scan_s``, ``plan_s``, ``encode_wall_s``
    (actor pool start to last write), ``startup_s`` (pool start to the first encoder call: actor
    processes and model loads), ``span_s`` (first encoder call to the last one's end), ``busy_s``
    (actor seconds inside our code), ``batches`` (encoder calls), ``write_s`` (driver writes, for
    embedded URIs), and the pool's shape: ``actors``, ``threads``, ``gpus_per_actor``.
    """

    timings: dict[str, float] = field(default_factory=dict)


def _ray():
    return require("ray", extra="ray")


def is_embedded(uri: str) -> bool:
    """Whether ``uri`` names a single-process embedded engine (Qdrant local, Milvus Lite)."""
    scheme, _, rest = uri.partition(":")
    return scheme in ("qdrant", "milvus") and not _URL.match(rest)


# -- scan ---------------------------------------------------------------------------------------
def _list_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    out: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if not _URL.match(p):
            out += [str(f) for f in _files([p])]  # the local engine's own walk: same files, same order
            continue
        fsspec = require("fsspec", extra="ray")
        fs, root = fsspec.core.url_to_fs(p)
        if not fs.exists(root):
            raise ValueError(f"no such file or directory: {p!r}")
        found = [root] if not fs.isdir(root) else sorted(
            f for f in fs.find(root) if not any(part.startswith(".") for part in f[len(root):].split("/")))
        out += [fs.unstrip_protocol(f) for f in found]
    return [f for f in out if f.lower().endswith(_SUFFIXES)]


def _read(ref: str) -> bytes | str:
    """Bytes of a URL (fsspec), or a local path as it is (the store reads it and keeps it as source)."""
    if not _URL.match(ref):
        return ref
    with require("fsspec", extra="ray").open(ref, "rb") as fh:
        return fh.read()


def _remote_items(url: str) -> list[CorpusItem]:
    """Items of one fsspec file: corpus.py's rules, with origins and image paths pointing at the URL."""
    if url.lower().endswith(IMAGE_SUFFIXES):
        return [CorpusItem(image=url, metadata={"file": url}, origin=url)]
    fsspec = require("fsspec", extra="ray")
    parent = url.rsplit("/", 1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / url.rsplit("/", 1)[-1]
        with fsspec.open(url, "rb") as src:
            local.write_bytes(src.read())

        def relocate(value: Any) -> Any:
            if not isinstance(value, str) or not value.startswith(tmp):
                return value
            if value.startswith(str(local)):
                return url + value[len(str(local)):]
            return parent + "/" + os.path.relpath(value, tmp).replace(os.sep, "/")  # a JSONL-relative image

        items = list(iter_corpus([local]))
        for it in items:
            it.origin, it.image = relocate(it.origin), relocate(it.image)
            it.metadata = {k: relocate(v) for k, v in it.metadata.items()}
    return items


def _scan(batch: Any, *, model_name: str) -> Any:
    """Files (``file_no``, ``path``) -> one row per item, with its id or the reason it has none."""
    pa = require("pyarrow", extra="ray")
    rows: dict[str, list[Any]] = {c: [] for c in _PLAN_COLUMNS}
    for file_no, path in zip(batch["file_no"].to_pylist(), batch["path"].to_pylist()):
        try:
            items = _remote_items(path) if _URL.match(path) else list(iter_corpus([path]))
        except (OSError, UnicodeError, ValueError) as e:  # an unreadable file fails itself, not the job
            items = [CorpusItem(origin=path, error=f"{type(e).__name__}: {e}")]
        for n, it in enumerate(items):
            item_id, error = it.id, it.error
            if error is None and it.text is None and it.image is None:
                error = "record has neither text nor image"
            if error is None and item_id is None:
                try:  # what the local engine does before add(): id from text and image bytes
                    item_id = content_id(model_name, it.text, [_read(it.image)] if it.image else [])
                except (ValueError, OSError) as e:
                    error = str(e)
            values = ((file_no << _POS_SHIFT) | n, None if error else item_id, it.text, it.image,
                      json.dumps(it.metadata, ensure_ascii=False), it.origin, error)
            for column, value in zip(_PLAN_COLUMNS, values):
                rows[column].append(value)
    types = {"pos": pa.int64()}
    return pa.table({c: pa.array(v, type=types.get(c, pa.string())) for c, v in rows.items()})


def _keep(batch: Any, *, positions: np.ndarray) -> Any:
    pc = require("pyarrow.compute", extra="ray")
    pa = require("pyarrow", extra="ray")
    return batch.filter(pc.is_in(batch["pos"], value_set=pa.array(positions, type=pa.int64())))


# -- encode (and write, for servers) --------------------------------------------------------------
class _Capture(TwoStageStore):
    """The encode half of ``TwoStageStore.add`` (validation, per-item decoding, payloads) for
    actors that must not open an embedded database: records are kept, not written."""

    write_batch_size = 1 << 30  # a whole Ray batch goes through one add() call

    def __init__(self, model: Any, *, coarse_dim: int, full_dim: int, encode_batch_size: int):
        super().__init__(model, coarse_dim=coarse_dim, full_dim=full_dim, encode_batch_size=encode_batch_size)
        self.records: list[Record] = []

    def _upsert(self, records: Sequence[Record]) -> None:
        self.records.extend(records)

    def _existing(self, keys: Sequence[str]) -> set[str]:
        return set()  # the driver already dropped stored ids

    def _two_stage(self, *args: Any) -> Any:
        raise NotImplementedError("an encode-only store cannot search")

    _delete = _get = _two_stage

    def count(self) -> int:
        raise NotImplementedError("an encode-only store holds nothing")


class _Encoder:
    """Ray actor: one model, loaded once; each call encodes (and, for servers, writes) one batch."""

    def __init__(self, *, model: str, device: str | None, threads: int, uri: str, collection: str,
                 coarse_dim: int, full_dim: int, batch_size: int, write: bool, crash_after: int = 0,
                 crash_once: str | None = None):
        import torch

        from unirep_core import UniRep

        if device in (None, "cpu"):
            torch.set_num_threads(threads)  # Ray pins OMP threads to 1 unless told; use the actor's CPUs
        self.model = UniRep.from_pretrained(model, device=device)
        if write:
            from .stores import open_store

            self.store: TwoStageStore = open_store(uri, self.model, collection=collection, coarse_dim=coarse_dim,
                                                   full_dim=full_dim)
        else:
            self.store = _Capture(self.model, coarse_dim=coarse_dim, full_dim=full_dim, encode_batch_size=batch_size)
        self.store.encode_batch_size = batch_size
        self.write, self.full_dim = write, full_dim
        self.crash_after, self.crash_once, self.batches = crash_after, crash_once, 0

    def _maybe_crash(self) -> None:
        if not self.crash_after or self.batches < self.crash_after:
            return
        if self.crash_once:
            try:
                os.close(os.open(self.crash_once, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
        os._exit(17)  # a hard death, as an OOM kill or a lost node looks to Ray

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches += 1
        self._maybe_crash()
        start, started_at = time.perf_counter(), time.time()
        ids = [str(i) for i in batch["id"]]
        texts = [t if isinstance(t, str) else None for t in batch["text"]]
        metas = [json.loads(m) for m in batch["meta"]]
        images: list[Any] = []
        reason: dict[str, str] = {}
        for item_id, ref in zip(ids, batch["image"]):
            try:
                images.append(_read(ref) if isinstance(ref, str) else None)
            except OSError as e:  # a remote image gone since the scan fails its item, not the batch
                reason[item_id] = f"{type(e).__name__}: {e}"
                images.append(None)
        todo = [n for n, i in enumerate(ids) if i not in reason]
        if isinstance(self.store, _Capture):
            self.store.records = []
        result = self.store.add(texts=[texts[n] for n in todo], images=[images[n] for n in todo],
                                metadatas=[metas[n] for n in todo], ids=[ids[n] for n in todo]) \
            if todo else AddResult()
        status = {i: "added" for i in result.added} | {i: "skipped" for i in result.skipped}
        reason |= result.failed
        out: dict[str, Any] = {
            "id": np.array(ids, dtype=object),
            "origin": np.asarray(batch["origin"], dtype=object),
            "status": np.array([status.get(i, "failed") for i in ids], dtype=object),
            "reason": np.array([reason.get(i, "") for i in ids], dtype=object),
        }
        if isinstance(self.store, _Capture):
            records = {r.id: r for r in self.store.records}
            vectors = np.zeros((len(ids), self.full_dim), dtype=np.float32)
            metas_out = []
            for n, i in enumerate(ids):
                r = records.get(i)
                if r is not None:
                    vectors[n] = r.full
                # _id/_text are written again by add_embeddings; _source rides along in the metadata
                metas_out.append(json.dumps({k: v for k, v in (r.payload if r else {}).items()
                                             if k not in ("_id", "_text")}, ensure_ascii=False))
            out |= {"vector": vectors, "meta": np.array(metas_out, dtype=object),
                    "text": np.array(texts, dtype=object)}
        # per-row shares of this call, so the driver can sum them over any re-blocking Ray does
        out["busy_s"] = np.full(len(ids), (time.perf_counter() - start) / max(1, len(ids)))
        out["call_share"] = np.full(len(ids), 1.0 / max(1, len(ids)))
        out["call_start"] = np.full(len(ids), started_at)  # wall clock: the pool's working window
        out["call_end"] = np.full(len(ids), time.time())
        return out


# -- the driver -----------------------------------------------------------------------------------
def _resources(ray: Any, actors: int | None, num_gpus: float | None) -> tuple[int, float, int]:
    """(actors, GPUs per actor, CPU threads per actor) for this cluster."""
    total = ray.cluster_resources()
    gpus = float(total.get("GPU", 0))
    if num_gpus is None:
        num_gpus = 1.0 if gpus >= 1 else 0.0
    node_cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    cpus = int(total.get("CPU", 1))
    if actors is None:
        # one per GPU; on CPU one per 4 cores (torch scales well to ~4 threads per process)
        actors = int(gpus // num_gpus) if num_gpus else max(1, cpus // 4)
    threads = max(1, min(cpus // actors, int(min(node_cpus, default=1))))
    return actors, num_gpus, threads


@contextlib.contextmanager
def _quiet_ray(ray: Any) -> Iterator[None]:
    """Ray Data's own progress bars and per-dataset log lines off: our one bar says it better."""
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.enable_auto_log_stats)
    log = logging.getLogger("ray.data")
    level = log.level
    ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.enable_auto_log_stats = False, False, False
    # Its warnings ("no available CPUs": what a full actor pool looks like) and the tracebacks it
    # logs before raising would bury our one-line report; the exception itself still propagates.
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.enable_auto_log_stats = saved
        log.setLevel(level)


def index_with_ray(paths: Sequence[str | os.PathLike], db: str, *, model: str = "unirep-mini",
                   collection: str = "unirep", coarse_dim: int | None = None, batch_size: int = 32,
                   actors: int | None = None, num_gpus: float | None = None, address: str | None = None,
                   retries: int = 3, progress: bool = True) -> RayIndexResult:
    """Index ``paths`` into the database ``db`` on Ray; the result counts items as ``unirep index`` does.

    ``model`` is a name or a directory every node can load; ``batch_size`` is the encoder's batch
    (one Ray batch each); ``actors`` defaults to one per GPU, else one per 4 CPUs; ``address``
    joins a running cluster (``"auto"``), else Ray starts on this machine unless already started.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
    if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors < 1):
        raise ValueError(f"actors must be a positive integer, got {actors!r}")
    from tqdm.auto import tqdm

    from unirep_core import UniRep

    from .stores import open_store

    ray = _ray()
    require("ray.data", extra="ray")
    files = _list_files(paths)  # before starting Ray: a wrong path fails in a second, not after startup
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    driver_model = UniRep.from_pretrained(model, device="cpu")  # the driver only needs name, sizes, calibration
    store = open_store(db, driver_model, collection=collection, **({"coarse_dim": coarse_dim} if coarse_dim else {}))
    timings["open_s"] = time.perf_counter() - t0
    result = RayIndexResult(timings=timings)
    try:
        with _quiet_ray(ray):
            t0 = time.perf_counter()
            scanned = ray.data.from_items([{"file_no": n, "path": p} for n, p in enumerate(files)]) \
                .map_batches(_scan, batch_size=1, batch_format="pyarrow",
                             fn_kwargs={"model_name": driver_model.name}).materialize()
            timings["scan_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            positions, total = _plan(scanned, store, result)
            timings["plan_s"] = time.perf_counter() - t0
            bar = tqdm(total=total, desc="index", unit="item", disable=not progress)
            bar.update(total - len(positions))
            if len(positions):
                _encode_and_write(ray, scanned, positions, store, result, bar, timings, model=model, db=db,
                                  collection=collection, batch_size=batch_size, actors=actors,
                                  num_gpus=num_gpus, retries=retries)
            bar.close()
    finally:
        close = getattr(store, "close", None)
        if close:
            close()
        if started:
            ray.shutdown()
    return result


def _plan(scanned: Any, store: TwoStageStore, result: AddResult) -> tuple[np.ndarray, int]:
    """Positions of the items to encode; failed and already-stored items go into ``result``."""
    first: dict[str, int] = {}
    duplicates: list[str] = []
    total = 0
    for batch in scanned.select_columns(["pos", "id", "origin", "error"]).iter_batches(batch_format="pyarrow",
                                                                                       batch_size=4096):
        total += batch.num_rows
        for pos, item_id, origin, error in zip(*(batch[c].to_pylist() for c in ("pos", "id", "origin", "error"))):
            if error is not None:
                result.failed[origin] = error
            elif item_id in first:  # the same content twice: the local engine stores it once
                duplicates.append(item_id)
                first[item_id] = min(first[item_id], pos)
            else:
                first[item_id] = pos
    ids = list(first)
    stored: set[str] = set()
    for start in range(0, len(ids), store.write_batch_size):
        stored.update(h.id for h in store.get(ids[start : start + store.write_batch_size]))
    result.skipped += [i for i in ids if i in stored] + duplicates
    keep = np.array(sorted(pos for i, pos in first.items() if i not in stored), dtype=np.int64)
    return keep, total


def _encode_and_write(ray: Any, scanned: Any, positions: np.ndarray, store: TwoStageStore, result: AddResult,
                      bar: Any, timings: dict[str, float], *, model: str, db: str, collection: str,
                      batch_size: int, actors: int | None, num_gpus: float | None, retries: int) -> None:
    actors, num_gpus, threads = _resources(ray, actors, num_gpus)
    write_here = is_embedded(db)
    crash_after = int(os.environ.get(CRASH_AFTER_ENV, "0") or 0)
    # A block goes to one actor call, and one JSONL file scans into one block: split, or one actor
    # gets all the work. Several blocks per actor balance the pool; at most 16 batches per block
    # keeps a retried block cheap, and at least one batch per block keeps the block count sane.
    n_blocks = min(math.ceil(len(positions) / batch_size),
                   max(4 * actors, math.ceil(len(positions) / (16 * batch_size))))
    # Materialized (references only, no pixels) before the pool starts: the actors may hold every
    # CPU of a small cluster, and a CPU task queued behind them would wait forever.
    kept = scanned.map_batches(_keep, batch_format="pyarrow", fn_kwargs={"positions": positions}) \
        .repartition(n_blocks).materialize()
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for actor restarts yet; the generic ones still work
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        encoded = kept.map_batches(
            _Encoder, batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=num_gpus or None, num_cpus=0 if num_gpus else threads,
            max_restarts=retries, max_task_retries=retries, runtime_env=_forwarded_env(write_here),
            fn_constructor_kwargs={
                "model": model, "device": None if num_gpus else "cpu", "threads": threads, "uri": db,
                "collection": collection, "coarse_dim": store.coarse_dim, "full_dim": store.full_dim,
                "batch_size": batch_size, "write": not write_here, "crash_after": crash_after,
                "crash_once": os.environ.get(CRASH_ONCE_ENV) or None,
            })
    timings.update(actors=float(actors), threads=float(threads), gpus_per_actor=float(num_gpus),
                   batches=0.0, busy_s=0.0, write_s=0.0)
    pending: dict[str, list[Any]] = {"id": [], "vector": [], "meta": [], "text": [], "origin": []}
    t0, wall0 = time.perf_counter(), time.time()
    window = [math.inf, -math.inf]
    try:
        for batch in encoded.iter_batches(batch_format="numpy", batch_size=None):
            timings["batches"] += float(np.sum(batch["call_share"]))
            timings["busy_s"] += float(np.sum(batch["busy_s"]))
            window = [min(window[0], float(np.min(batch["call_start"]))),
                      max(window[1], float(np.max(batch["call_end"])))]
            timings["startup_s"] = window[0] - wall0  # pool start to the first encoder call
            timings["span_s"] = window[1] - window[0]  # first call's start to last call's end
            for item_id, status, reason, origin in zip(batch["id"], batch["status"], batch["reason"],
                                                       batch["origin"]):
                if status == "failed":
                    result.failed[origin] = reason
                elif status == "skipped":
                    result.skipped.append(item_id)
                elif not write_here:
                    result.added.append(item_id)
            if write_here:
                ok = batch["status"] == "added"
                for column in pending:
                    pending[column] += list(batch[column][ok])
                if len(pending["id"]) >= store.write_batch_size:
                    timings["write_s"] += _flush(store, pending, result)
            bar.update(len(batch["id"]))
    except BaseException as e:
        if write_here:  # keep what was encoded before the failure, so a re-run does not encode it again
            with contextlib.suppress(Exception):
                timings["write_s"] += _flush(store, pending, result)
        if not isinstance(e, ray.exceptions.RayError):
            raise
        reason = str(e).strip().splitlines()[0]
        raise IngestError(f"the Ray job failed ({type(e).__name__}: {reason}); {len(result.added)} items were "
                          "stored: run the same command again to finish (stored items are skipped)") from e
    if write_here:
        timings["write_s"] += _flush(store, pending, result)
    timings["encode_wall_s"] = time.perf_counter() - t0


def _forwarded_env(write_here: bool) -> dict[str, Any] | None:
    """Store credentials the driver has, for actors that write: on a cluster they do not inherit
    the shell that ran ``unirep index``."""
    if write_here:
        return None
    env = {k: os.environ[k] for k in _STORE_ENV if os.environ.get(k)}
    return {"env_vars": env} if env else None


def _flush(store: TwoStageStore, pending: dict[str, list[Any]], result: AddResult) -> float:
    if not pending["id"]:
        return 0.0
    start = time.perf_counter()
    origin_of = dict(zip(pending["id"], pending["origin"]))
    written = store.add_embeddings([str(i) for i in pending["id"]], np.stack(pending["vector"]),
                                   metadatas=[json.loads(m) for m in pending["meta"]],
                                   texts=[t if isinstance(t, str) else None for t in pending["text"]])
    result.added += written.added
    result.failed.update({origin_of.get(k, k): v for k, v in written.failed.items()})
    for column in pending.values():
        column.clear()
    return time.perf_counter() - start
