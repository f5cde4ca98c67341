"""Benchmark: the waiting layer at scale, against raw WebSockets measured in the same run.

Starts the emulator in-process (its own thread, 127.0.0.1, a free port) and prints, with ratios:

1. **registration**: seconds to register N pending ``wait_for_job`` calls (the public SDK call, one
   task each) until the hub holds all of them; goal < 1 s for 10,000;
2. **memory per pending wait** (tracemalloc, every thread): goal <= 1.5 KB; against the memory of
   one raw subscribed WebSocket (measured on ``--sockets`` of them);
3. **reconciliation requests** after the stream is dropped with N waits pending: goal at most
   ceil(N/100) + 1 REST requests (the unfinished jobs are listed in pages of 100);
4. **completion latency** p50/p99 of M jobs, from the emulator publishing the outcome to the wait
   returning, against a raw WebSocket client in the same loop receiving the same frame; goal p99
   within 2x.

Run::

    .venv/bin/python benchmarks/bench_wait_scale.py               # N=10000, M=300
    .venv/bin/python benchmarks/bench_wait_scale.py -n 2000 -m 100
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import statistics
import time
import tracemalloc
from typing import Any

import httpx
from websockets.asyncio.client import connect

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.emulator import EmulatorConfig, EmulatorServer
from prefect_comfy.settings import ComfySettings
from prefect_comfy.waiting.hub import EventHub
from prefect_comfy.waiting.waiters import wait_for_job

API_KEY = "comfyui-bench-key-not-real"
WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "scale"}},
}


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts the REST requests of the hub's backend (and its clones); one pool per event loop, as
    the hub's clone runs on the waiting layer's loop."""

    def __init__(self) -> None:
        self.inner: dict[int, httpx.AsyncHTTPTransport] = {}
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        loop = id(asyncio.get_running_loop())
        inner = self.inner.get(loop) or self.inner.setdefault(loop, httpx.AsyncHTTPTransport())
        return await inner.handle_async_request(request)


async def submit(backend: CloudBackend, n: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 500):  # 10 batches of 50 in flight at a time
        sizes = [min(50, n - i) for i in range(start, min(n, start + 500), 50)]
        answers = await asyncio.gather(
            *(backend.client.create_batch([{"workflow": WORKFLOW}] * s) for s in sizes)
        )
        ids += [job.id for answer in answers for job in answer.jobs]
    return ids


async def until(probe: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(0.005)


async def raw_socket(url: str) -> Any:
    ws = await connect(
        url, additional_headers={"Authorization": f"Bearer {API_KEY}"}, max_size=None
    )
    await ws.recv()  # connected
    await ws.send(json.dumps({"type": "subscribe", "data": {"events": ["job.*"]}}))
    await ws.recv()  # subscribed
    return ws


async def scale(n: int, sockets: int) -> dict[str, float]:
    """Registration, memory per wait and reconciliation requests with N jobs that stay pending."""
    config = EmulatorConfig(api_keys=[API_KEY], step_duration=3600, concurrency=1, seed=1)
    with EmulatorServer(config) as emu:
        counting = CountingTransport()
        settings = ComfySettings(api_key=API_KEY, base_url=emu.url, reconnect_delay=0.05)
        backend = CloudBackend(settings=settings, transport=counting)
        hub = EventHub.shared(backend)
        await hub.ready(timeout=30)
        ids = await submit(backend, n)
        url = emu.url
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        started = time.perf_counter()
        waits = [asyncio.ensure_future(wait_for_job(API_KEY, jid, base_url=url)) for jid in ids]
        await until(lambda: hub.stats["pending"] == n)
        registered = time.perf_counter() - started
        await until(lambda: not hub.stats["reconciling"])  # its listing done, nothing in flight
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        per_wait = sum(s.size_diff for s in after.compare_to(before, "filename")) / n
        # registration once more, without tracemalloc slowing every allocation down
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        started = time.perf_counter()
        waits = [asyncio.ensure_future(wait_for_job(API_KEY, jid, base_url=url)) for jid in ids]
        await until(lambda: hub.stats["pending"] == n)
        registered_plain = time.perf_counter() - started
        await until(lambda: not hub.stats["reconciling"])
        # reconciliation after a drop
        requests, lists = counting.requests, hub.stats["rest_lists"]
        connections = hub.connections_opened
        emu.drop_connections()
        await until(lambda: hub.connections_opened > connections)
        await until(lambda: hub.stats["rest_lists"] > lists)
        await until(lambda: not hub.stats["reconciling"])
        reconcile_requests = counting.requests - requests
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        await hub.aclose()
        # raw sockets, for scale
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        raws = [await raw_socket(emu.ws_url) for _ in range(sockets)]
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        per_socket = sum(s.size_diff for s in after.compare_to(before, "filename")) / sockets
        for ws in raws:
            await ws.close()
    return {
        "registered_s_traced": registered,
        "registered_s": registered_plain,
        "bytes_per_wait": per_wait,
        "bytes_per_socket": per_socket,
        "reconcile_requests": reconcile_requests,
    }


async def latency(m: int) -> dict[str, list[float]]:
    """Seconds from the emulator publishing each outcome to the wait returning, and to a raw socket."""
    config = EmulatorConfig(api_keys=[API_KEY], step_duration=0.01, concurrency=4, seed=2)
    with EmulatorServer(config) as emu:
        published: dict[str, float] = {}
        bus = emu.state.bus
        original = bus.publish

        def publish(owner: str, name: str, payload: dict[str, Any]) -> None:
            if name == "job.completed":
                published[str(payload.get("id"))] = time.perf_counter()
            original(owner, name, payload)

        bus.publish = publish  # type: ignore[method-assign]
        settings = ComfySettings(api_key=API_KEY, base_url=emu.url)
        backend = CloudBackend(settings=settings)
        raw = await raw_socket(emu.ws_url)
        raw_seen: dict[str, float] = {}

        async def read_raw() -> None:
            async for frame in raw:
                now = time.perf_counter()
                data = json.loads(frame)
                if data.get("type") == "event" and data["data"]["event"] == "job.completed":
                    raw_seen[data["data"]["payload"]["id"]] = now

        reader = asyncio.ensure_future(read_raw())
        hub = EventHub.shared(backend)
        await hub.ready(timeout=30)
        hub_seen: dict[str, float] = {}

        async def wait(jid: str) -> None:
            await wait_for_job(API_KEY, jid, base_url=emu.url)
            hub_seen[jid] = time.perf_counter()

        ids = await submit(backend, m)
        waits = [asyncio.ensure_future(wait(jid)) for jid in ids]
        await until(lambda: hub.stats["pending"] >= m - len(published))
        registered = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*waits), 120)
        await until(lambda: len(raw_seen) >= m)
        reader.cancel()
        await raw.close()
        await hub.aclose()
        # Only outcomes published after every wait was registered (earlier ones come from REST).
        live = [j for j in ids if published.get(j, 0) > registered]
        return {
            "hub": [hub_seen[j] - published[j] for j in live],
            "raw": [raw_seen[j] - published[j] for j in live],
        }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(p / 100 * len(ordered))) - 1)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="pending waits (default 10000)")
    parser.add_argument("-m", type=int, default=300, help="jobs timed for latency (default 300)")
    parser.add_argument("--sockets", type=int, default=100, help="raw sockets for the memory ratio")
    args = parser.parse_args()
    s = await scale(args.n, args.sockets)
    print(f"== {args.n} pending wait_for_job calls")
    print(f"registration: {s['registered_s']:.3f} s (goal < 1 s for 10,000)")
    print(
        f"memory per pending wait: {s['bytes_per_wait']:.0f} B (goal <= 1536 B); "
        f"one raw WebSocket: {s['bytes_per_socket']:.0f} B; "
        f"ratio socket/wait: {s['bytes_per_socket'] / max(1.0, s['bytes_per_wait']):.1f}x"
    )
    bound = math.ceil(args.n / 100) + 1
    print(
        f"REST requests to reconcile after a drop: {s['reconcile_requests']:.0f} "
        f"(goal <= ceil(N/100)+1 = {bound}; one read per wait would be {args.n})"
    )
    lat = await latency(args.m)
    hub50, hub99 = pct(lat["hub"], 50) * 1e3, pct(lat["hub"], 99) * 1e3
    raw50, raw99 = pct(lat["raw"], 50) * 1e3, pct(lat["raw"], 99) * 1e3
    print(f"== completion latency over {len(lat['hub'])} jobs (publish -> caller)")
    print(f"waiting layer: p50 {hub50:.2f} ms, p99 {hub99:.2f} ms")
    print(f"raw socket:    p50 {raw50:.2f} ms, p99 {raw99:.2f} ms")
    print(
        f"ratio waiting/raw: p50 {hub50 / raw50:.2f}x, p99 {hub99 / raw99:.2f}x (goal p99 <= 2x); "
        f"mean {statistics.mean(lat['hub']) * 1e3:.2f} vs {statistics.mean(lat['raw']) * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
