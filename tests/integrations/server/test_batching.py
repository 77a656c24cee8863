"""Dynamic batching: concurrent requests share model batches, each gets its own rows, and one
bad request fails alone."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.integrations.server.conftest import API_KEY, data_url
from unirep_integrations.server import Batcher, Limits, create_app

TEXTS = [f"sentence number {i} about a {w}" for i, w in
         enumerate("cat dog man woman photo world red blue cat dog hello world cat dog man woman".split())]


def _fake_run(calls):
    def run(key, items):
        calls.append((key, list(items)))
        if "bad" in items:
            raise ValueError("item 0: bad item")
        return np.array([[float(len(str(x))), float(hash(key) % 7)] for x in items])
    return run


def test_batcher_merges_concurrent_requests_and_splits_results():
    calls = []

    async def main():
        b = Batcher(_fake_run(calls), max_batch_size=8, max_wait_ms=50)
        jobs = [b.submit("k", ["x" * (i + 1)]) for i in range(12)]
        out = await asyncio.gather(*jobs)
        await b.aclose()
        return out, b

    out, b = asyncio.run(main())
    assert [o[0, 0] for o in out] == [float(i + 1) for i in range(12)]
    assert [len(items) for _, items in calls] == [8, 4]  # bounded by max_batch_size
    assert b.stats.largest == 8 and b.stats.batches == 2 and b.stats.requests_per_batch == [8, 4]


def test_batcher_groups_by_key_and_bounds_batches():
    calls = []

    async def main():
        b = Batcher(_fake_run(calls), max_batch_size=5, max_wait_ms=30)
        jobs = [b.submit(("embed", "query" if i % 2 else "document"), ["a", "b"]) for i in range(8)]
        await asyncio.gather(*jobs)
        await b.aclose()

    asyncio.run(main())
    for key, items in calls:
        assert len(items) <= 5 and len(items) % 2 == 0  # whole requests, never split across batches
    assert {k for k, _ in calls} == {("embed", "query"), ("embed", "document")}
    assert sum(len(items) for _, items in calls) == 16


def test_one_bad_request_fails_alone():
    calls = []

    async def main():
        b = Batcher(_fake_run(calls), max_batch_size=32, max_wait_ms=50)
        jobs = [b.submit("k", ["good1"]), b.submit("k", ["bad"]), b.submit("k", ["good22", "good333"])]
        out = await asyncio.gather(*jobs, return_exceptions=True)
        await b.aclose()
        return out

    ok1, bad, ok2 = asyncio.run(main())
    assert isinstance(bad, ValueError) and "bad item" in str(bad)
    assert ok1[:, 0].tolist() == [5.0] and ok2[:, 0].tolist() == [6.0, 7.0]
    assert [len(items) for _, items in calls] == [4, 1, 1, 2]  # the merged batch, then each request alone


def test_batching_disabled_runs_each_request_alone():
    calls = []

    async def main():
        b = Batcher(_fake_run(calls), max_batch_size=32, max_wait_ms=50, enabled=False)
        await asyncio.gather(*[b.submit("k", [str(i)]) for i in range(5)])
        await b.aclose()

    asyncio.run(main())
    assert [len(items) for _, items in calls] == [1] * 5


def test_event_loop_is_never_blocked_by_the_model():
    def slow(key, items):
        time.sleep(0.3)
        return np.zeros((len(items), 1))

    async def main():
        b = Batcher(slow, max_batch_size=4, max_wait_ms=1)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        await b.submit("k", ["x"])
        t.cancel()
        await b.aclose()
        return ticks

    assert asyncio.run(main()) >= 10  # the loop kept running during the 0.3 s of "model" time


def test_cancelled_request_is_skipped():
    calls = []
    gate = threading.Event()

    def run(key, items):
        calls.append(list(items))
        gate.wait(5)
        return np.zeros((len(items), 1))

    async def main():
        b = Batcher(run, max_batch_size=1, max_wait_ms=0)
        first = asyncio.create_task(b.submit("k", ["first"]))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(b.submit("k", ["gone"]))
        kept = asyncio.create_task(b.submit("k", ["kept"]))
        await asyncio.sleep(0.05)
        gone.cancel()
        gate.set()
        await first, await kept
        await b.aclose()

    asyncio.run(main())
    assert calls == [["first"], ["kept"]]


def test_batcher_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(lambda k, i: np.zeros((len(i), 1)), max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        Batcher(lambda k, i: np.zeros((len(i), 1)), max_wait_ms=-1)


async def _concurrent(app, bodies, path="/v1/embeddings"):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        return await asyncio.gather(*[c.post(path, json=b) for b in bodies])


def test_concurrent_http_requests_share_batches_and_get_their_own_vectors(tiny_model):
    app = create_app(tiny_model, max_batch_size=32, max_wait_ms=100)
    bodies = [{"input": t, "dimensions": (8, 16, 32)[i % 3]} for i, t in enumerate(TEXTS)]
    responses = asyncio.run(_concurrent(app, bodies))
    stats = app.state.service.batcher.stats
    assert all(r.status_code == 200 for r in responses)
    assert stats.largest > 1 and stats.batches < len(TEXTS)  # merged into fewer model batches
    for body, r in zip(bodies, responses):
        got = np.array(r.json()["data"][0]["embedding"])
        np.testing.assert_allclose(got, tiny_model.encode(text=body["input"], embedding_dim=body["dimensions"])[0],
                                   atol=1e-5)
    metrics = asyncio.run(_metrics(app))
    size_sum = [line for line in metrics.splitlines() if line.startswith('unirep_batch_size_sum{kind="embed"}')]
    size_count = [line for line in metrics.splitlines() if line.startswith('unirep_batch_size_count{kind="embed"}')]
    assert float(size_sum[0].split()[-1]) == len(TEXTS) and float(size_count[0].split()[-1]) == stats.batches


async def _metrics(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        return (await c.get("/metrics")).text


def test_a_request_the_model_rejects_fails_alone_in_a_shared_batch(tiny_model):
    # 40 images need 160 image tokens, over the tiny model's 128: only the model itself notices
    app = create_app(tiny_model, max_wait_ms=100, limits=Limits(max_images_per_item=64))
    poison = {"input": [{"text": "many pictures", "images": [data_url(1, 8)] * 40}]}
    bodies = [{"input": t} for t in TEXTS[:6]]
    responses = asyncio.run(_concurrent(app, bodies[:3] + [poison] + bodies[3:]))
    bad = responses[3]
    assert bad.status_code == 422 and "item 0: 40 images need 160 tokens" in bad.json()["error"]["message"]
    good = [r for i, r in enumerate(responses) if i != 3]
    assert all(r.status_code == 200 for r in good)
    for body, r in zip(bodies, good):
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], tiny_model.encode(text=body["input"])[0],
                                   atol=1e-5)


def test_real_server_concurrent_clients(live, tiny_model):
    stats = None

    def call(text):
        with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as c:
            return c.post("/v1/embeddings", json={"input": text, "task": "query"}).json()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, TEXTS))
    expected = tiny_model.encode(text=TEXTS, task="query")
    np.testing.assert_allclose([r["data"][0]["embedding"] for r in results], expected, atol=1e-5)
    stats = live.app.state.service.batcher.stats
    assert stats.items >= len(TEXTS)
