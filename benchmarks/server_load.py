"""Load test of the inference server on loopback: throughput and p50/p99 latency of
``POST /v1/embeddings`` (one one-sentence text per request) at 1, 8 and 32 concurrent clients,
with dynamic batching on and off.

    python benchmarks/server_load.py [--model unirep-mini] [--duration 10] [--max-requests 1500]

The server (uvicorn, 127.0.0.1, a free port) runs in this process; the clients run in a separate
process (closed loop: each client sends its next request when the previous answer arrives), so
client overhead does not share this process's GIL. Each level runs for ``--duration`` seconds or
``--max-requests`` requests, whichever ends first, after a short warm-up; batching on and off
alternate at each level so a drift in machine load affects both alike. Writes
``benchmarks/results/server_load.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
_EN = ("the a small old young red blue green quiet busy happy tired dog cat child woman man bird river city "
       "market train garden street house boat book picture song teacher farmer river").split()
_VERBS = "walks runs sleeps sings waits reads looks plays sits stands rests".split()
_PLACES = ("near the river", "in the old market", "on a rainy morning", "under the big tree", "at the station",
           "beside the blue house", "in a busy street", "on the quiet beach", "after school", "before dinner")
_VI = ("con chó chạy trên bãi biển", "một người phụ nữ đọc sách ở công viên", "đứa trẻ chơi với quả bóng đỏ",
       "chiếc thuyền nhỏ trên sông", "phố cổ Hà Nội vào buổi sáng", "bát phở nóng trên bàn gỗ")


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct one-sentence texts (English and Vietnamese), 6 to 16 words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 5 == 4:
            out.append(f"{rng.choice(_VI).capitalize()} {rng.choice(_PLACES)}, lần thứ {i}.")
        else:
            words = " ".join(rng.choice(_EN) for _ in range(rng.randint(2, 6)))
            out.append(f"The {words} {rng.choice(_VERBS)} {rng.choice(_PLACES)} (scene {i}).")
    return out


# -- client process ---------------------------------------------------------------------------
def run_level(url: str, concurrency: int, duration: float, max_requests: int, texts: list[str]) -> dict[str, Any]:
    """Closed-loop clients; returns latencies (s), wall time and error count."""
    import httpx

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        sent = 0
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
            start = time.perf_counter()
            deadline = start + duration

            async def worker(k: int) -> None:
                nonlocal errors, sent
                while time.perf_counter() < deadline and sent < max_requests:
                    text = texts[(sent * 7 + k) % len(texts)]
                    sent += 1
                    t0 = time.perf_counter()
                    r = await client.post("/v1/embeddings", json={"input": text, "model": "unirep-mini"})
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors += 1

            await asyncio.gather(*[worker(k) for k in range(concurrency)])
            wall = time.perf_counter() - start
        return {"latencies": latencies, "wall": wall, "errors": errors}

    return asyncio.run(main())


# -- server side ------------------------------------------------------------------------------
class _Server:
    def __init__(self, app: Any):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "_Server":
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="unirep-mini")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per level (default 10)")
    ap.add_argument("--max-requests", type=int, default=1500, help="requests per level at most (default 1500)")
    ap.add_argument("--warmup", type=int, default=8, help="requests before each mode is measured")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--output", default=str(RESULTS / "server_load.json"))
    args = ap.parse_args()

    import torch

    from unirep_core import UniRep
    from unirep_integrations.server import create_app

    t0 = time.perf_counter()
    model = UniRep.from_pretrained(args.model)
    load_s = time.perf_counter() - t0
    texts = sentences(512)
    rows: list[dict[str, Any]] = []
    apps = {batching: create_app(model, batching=batching, max_batch_size=args.max_batch_size,
                                 max_wait_ms=args.max_wait_ms) for batching in (True, False)}
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as clients, \
            _Server(apps[True]) as on_server, _Server(apps[False]) as off_server:
        servers = {True: on_server, False: off_server}
        clients.submit(sentences, 1).result()  # start the client process before timing anything
        for batching in (True, False):
            clients.submit(run_level, servers[batching].url, 2, 60, args.warmup, texts).result()
        # on and off alternate at each level, so a drift in machine load hits both alike
        for concurrency in args.concurrency:
            for batching in (True, False):
                stats = apps[batching].state.service.batcher.stats
                before_batches, before_items = stats.batches, stats.items
                res = clients.submit(run_level, servers[batching].url, concurrency, args.duration,
                                     args.max_requests, texts).result()
                lat = res["latencies"]
                batches = stats.batches - before_batches
                row = {
                    "batching": batching, "concurrency": concurrency, "requests": len(lat),
                    "errors": res["errors"], "seconds": round(res["wall"], 3),
                    "throughput_rps": round(len(lat) / res["wall"], 2),
                    "p50_ms": round(1000 * _percentile(lat, 0.50), 1),
                    "p99_ms": round(1000 * _percentile(lat, 0.99), 1),
                    "mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None,
                    "mean_batch_size": round((stats.items - before_items) / batches, 2) if batches else None,
                }
                rows.append(row)
                print(f"  batching={'on ' if batching else 'off'} clients={concurrency:>2}: "
                      f"{row['throughput_rps']:7.2f} req/s  p50 {row['p50_ms']:7.1f} ms  "
                      f"p99 {row['p99_ms']:7.1f} ms  batch {row['mean_batch_size']}", flush=True)
    rows.sort(key=lambda r: (not r["batching"], r["concurrency"]))

    def pick(batching: bool, c: int) -> dict[str, Any] | None:
        return next((r for r in rows if r["batching"] is batching and r["concurrency"] == c), None)

    speedups = {}
    for c in args.concurrency:
        on, off = pick(True, c), pick(False, c)
        if on and off and off["throughput_rps"]:
            speedups[str(c)] = round(on["throughput_rps"] / off["throughput_rps"], 2)
    result = {
        "benchmark": "server_load", "model": args.model, "endpoint": "POST /v1/embeddings",
        "request": "one one-sentence text per request (float vectors, full size)",
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "device": str(model.device)},
        "settings": {"duration_s": args.duration, "max_requests": args.max_requests,
                     "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                     "clients": "closed loop, separate process, httpx keep-alive",
                     "order": "batching on and off alternate at each concurrency level",
                     "batching_off": "each request encoded alone in the server's single model worker thread"},
        "model_load_s": round(load_s, 1),
        "results": rows,
        "speedup_batching": speedups,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    print(f"\n{args.model} on {result['machine']['device']} ({os.cpu_count()} CPUs, {torch.get_num_threads()} "
          "torch threads): POST /v1/embeddings, one sentence per request")
    print(f"{'batching':>8} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'n':>5}")
    for r in rows:
        print(f"{'on' if r['batching'] else 'off':>8} {r['concurrency']:>7} {r['throughput_rps']:>8.2f} "
              f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {str(r['mean_batch_size']):>6} {r['requests']:>5}")
    for c, s in speedups.items():
        print(f"throughput with batching at {c} clients: {s}x")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
