"""Dynamic batching: items of concurrent requests share model batches.

``await batcher.submit(key, items)`` queues one request's (already validated and decoded) items
and returns its rows of the result. One asyncio task collects queued requests until
``max_batch_size`` items are waiting or ``max_wait_ms`` has passed since the first, groups them
by ``key`` (requests that may share a forward pass, e.g. ``("embed", task)``), and runs each group
in a single worker thread, so the event loop never blocks on the model. While the worker is
busy, new requests queue up and form the next batch (continuous batching).

A batch that fails is retried request by request, so one bad request never fails the others.
With ``enabled=False`` each request runs alone in the same worker (the no-batching baseline).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import numpy as np

__all__ = ["Batcher", "BatchStats"]

logger = logging.getLogger("unirep_integrations.server")

#: ``run(key, items) -> array with one row per item``; called in the worker thread.
RunFn = Callable[[Hashable, Sequence[Any]], np.ndarray]
#: ``observe(key, batch_size, seconds)`` after every model batch.
ObserveFn = Callable[[Hashable, int, float], None]


@dataclass
class BatchStats:
    """What the worker did: model batches, items, the largest batch and requests per batch."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    requests_per_batch: list[int] = field(default_factory=list)

    def record(self, items: int, requests: int, max_batch_size: int) -> None:
        for start in range(0, items, max_batch_size):  # the model splits oversized groups
            size = min(max_batch_size, items - start)
            self.batches += 1
            self.items += size
            self.largest = max(self.largest, size)
        self.requests_per_batch.append(requests)
        del self.requests_per_batch[:-1000]


@dataclass
class _Job:
    key: Hashable
    items: list[Any]
    future: asyncio.Future


class Batcher:
    def __init__(self, run: RunFn, *, max_batch_size: int = 32, max_wait_ms: float = 5.0, enabled: bool = True,
                 observe: ObserveFn | None = None, on_queue: Callable[[int], None] | None = None):
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        if not isinstance(max_wait_ms, (int, float)) or max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait = float(max_wait_ms) / 1000.0
        self.enabled = bool(enabled)
        self._observe = observe
        self._on_queue = on_queue
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unirep-encode")
        self._pending: deque[_Job] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False

    # -- public -----------------------------------------------------------------------------
    async def submit(self, key: Hashable, items: Sequence[Any]) -> np.ndarray:
        """The result rows of ``items`` (raises what the model raised for this request)."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        items = list(items)
        if not items:
            raise ValueError("submit() needs at least one item")
        loop = asyncio.get_running_loop()
        if not self.enabled:
            return await loop.run_in_executor(self._executor, self._timed_run, key, items, 1)
        self._ensure_worker(loop)
        job = _Job(key, items, loop.create_future())
        self._pending.append(job)
        self._queue_changed()
        assert self._wake is not None
        self._wake.set()
        return await job.future

    @property
    def queued_items(self) -> int:
        return sum(len(j.items) for j in self._pending if not j.future.done())

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._fail_pending(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- worker -----------------------------------------------------------------------------
    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        if self._loop is not loop:  # a new event loop (a test client, a restarted server)
            self._fail_pending(RuntimeError("the event loop that queued this request is gone"))
            self._wake = asyncio.Event()
            self._loop = loop
        self._task = loop.create_task(self._worker(), name="unirep-batcher")

    def _fail_pending(self, error: BaseException) -> None:
        while self._pending:
            job = self._pending.popleft()
            loop = job.future.get_loop()
            if job.future.done() or loop.is_closed():
                continue
            try:
                loop.call_soon_threadsafe(_set_exception, job.future, error)
            except RuntimeError:  # that loop closed meanwhile: nobody is waiting
                pass
        self._queue_changed()

    def _queue_changed(self) -> None:
        if self._on_queue is not None:
            self._on_queue(self.queued_items)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            try:
                if not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._gather_more(loop)
                jobs = self._take()
                groups: dict[Hashable, list[_Job]] = {}
                for job in jobs:
                    groups.setdefault(job.key, []).append(job)
                for key, group in groups.items():
                    await self._run_group(loop, key, group)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not leave requests hanging forever
                logger.exception("batcher worker error")
                self._fail_pending(RuntimeError("internal batching error"))

    async def _gather_more(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait up to ``max_wait`` after the first queued request for the batch to fill."""
        assert self._wake is not None
        deadline = loop.time() + self.max_wait
        while self.queued_items < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Job]:
        """Queued jobs in arrival order up to ``max_batch_size`` items (always at least one)."""
        taken: list[_Job] = []
        count = 0
        while self._pending:
            job = self._pending[0]
            if job.future.done():  # the client went away
                self._pending.popleft()
                continue
            if taken and count + len(job.items) > self.max_batch_size:
                break
            self._pending.popleft()
            taken.append(job)
            count += len(job.items)
        self._queue_changed()
        return taken

    async def _run_group(self, loop: asyncio.AbstractEventLoop, key: Hashable, jobs: list[_Job]) -> None:
        items = [it for job in jobs for it in job.items]
        try:
            out = await loop.run_in_executor(self._executor, self._timed_run, key, items, len(jobs))
        except Exception as error:
            if len(jobs) == 1:
                _set_exception(jobs[0].future, error)
                return
            # isolate the failure: each request on its own, so only the bad one fails
            for job in jobs:
                try:
                    rows = await loop.run_in_executor(self._executor, self._timed_run, key, job.items, 1)
                except Exception as e:
                    _set_exception(job.future, e)
                else:
                    _set_result(job.future, rows)
            return
        offset = 0
        for job in jobs:
            _set_result(job.future, out[offset: offset + len(job.items)])
            offset += len(job.items)

    def _timed_run(self, key: Hashable, items: list[Any], requests: int) -> np.ndarray:
        start = time.perf_counter()
        out = self._run(key, items)
        seconds = time.perf_counter() - start
        if len(out) != len(items):
            raise RuntimeError(f"batch function returned {len(out)} rows for {len(items)} items")
        self.stats.record(len(items), requests, self.max_batch_size)
        if self._observe is not None:
            for start_i in range(0, len(items), self.max_batch_size):
                size = min(self.max_batch_size, len(items) - start_i)
                self._observe(key, size, seconds * size / len(items))
        return out


def _set_result(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
