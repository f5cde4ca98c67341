"""Benchmark: the waiting layer at scale, against raw WebSockets measured in the same run.

Prints, each with the load average and a baseline from the same run:

1. **registration**: seconds to register N pending ``wait_for_job`` calls (the public SDK call, one
   task each) until the hub holds all of them; goal < 1 s for 10,000;
2. **reconciliation** after the stream is dropped with N waits pending: seconds from the drop until
   nothing is left to read (goal < 2 s for 10,000), and REST requests (goal <= min(N,
   ceil(backlog/100)) + 1), against a plain client listing the backlog page after page; and the
   same for 3 waits against the whole backlog (goal <= 5 requests), against 3 plain reads;
3. **memory per pending wait** (tracemalloc and RSS) against one raw subscribed WebSocket: each
   side in a child process of its own, alternated, and the emulator in a third (it once counted
   the in-process emulator's per-connection state as the socket's); goal <= 1.5 KB traced;
4. **completion latency** p50/p99 of M jobs, from the emulator publishing the outcome to the wait
   returning, against a raw WebSocket client in the same loop receiving the same frame (emulator
   in-process, for the publish hook); goal p99 within 2x.

Registration and reconciliation run against the emulator in a process of its own.

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
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import Any

import httpx
from _emulator import start_emulator
from websockets.asyncio.client import connect

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.settings import ComfySettings
from prefect_comfy.waiting.hub import EventHub
from prefect_comfy.waiting.waiters import wait_for_job
from prefect_comfy_emulator import EmulatorConfig, EmulatorServer

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
        await asyncio.sleep(0.005)  # probes are O(1): they must not slow what they measure


async def raw_socket(url: str) -> Any:
    ws = await connect(
        url, additional_headers={"Authorization": f"Bearer {API_KEY}"}, max_size=None
    )
    await ws.recv()  # connected
    await ws.send(json.dumps({"type": "subscribe", "data": {"events": ["job.*"]}}))
    await ws.recv()  # subscribed
    return ws


async def settled(hub: EventHub) -> None:
    """Until the registration's reconciliation is over and its hub loop has let go of what the
    listing read: "reconciling" turns 0 a moment before the waiting thread has dropped the pages
    (the memory figure of the previous round counted 2-3 KB per wait of them)."""
    await until(lambda: not hub.reconciling)
    for _ in range(2):  # a full turn of the waiting loop after the reconciliation ended
        await hub._home.run(lambda: None)
    await until(lambda: not hub.reconciling)


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


async def side_waits(url: str, ids: list[str], how: str) -> dict[str, float]:
    """In a child process: bytes per pending wait (``rss`` or ``traced``), the stream already up."""
    backend = CloudBackend(settings=ComfySettings(api_key=API_KEY, base_url=url))
    hub = EventHub.shared(backend)
    await hub.ready(timeout=30)
    result: dict[str, float] = {}
    if how:
        gc.collect()
        if how == "traced":
            tracemalloc.start(25 if os.environ.get("BENCH_TOP") else 1)
            before_t = tracemalloc.take_snapshot()
        before = rss()
        waits = [asyncio.ensure_future(wait_for_job(API_KEY, jid, base_url=url)) for jid in ids]
        await until(lambda: hub.waited_for == len(ids))
        await settled(hub)
        gc.collect()
        if how == "traced":
            after_t = tracemalloc.take_snapshot()
            tracemalloc.stop()
            diff = sum(s.size_diff for s in after_t.compare_to(before_t, "filename"))
            if os.environ.get("BENCH_TOP"):
                for stat in after_t.compare_to(before_t, "traceback")[:2]:
                    print(stat, *stat.traceback.format()[-30:], sep="\n", file=sys.stderr)
            result["traced"] = diff / len(ids)
        else:
            result["rss"] = (rss() - before) / len(ids)
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        await until(lambda: hub.waited_for == 0)
    await hub.aclose()
    return result


async def side_sockets(url: str, count: int, how: str) -> dict[str, float]:
    """In a child process: bytes per raw subscribed WebSocket (``rss`` or ``traced``)."""
    ws_url = "ws" + url[len("http") :] + "/developer/api/v1/ws"
    result: dict[str, float] = {}
    if how:
        gc.collect()
        if how == "traced":
            tracemalloc.start()
            before_t = tracemalloc.take_snapshot()
        before = rss()
        raws = [await raw_socket(ws_url) for _ in range(count)]
        gc.collect()
        if how == "traced":
            after_t = tracemalloc.take_snapshot()
            tracemalloc.stop()
            diff = sum(s.size_diff for s in after_t.compare_to(before_t, "filename"))
            result["traced"] = diff / count
        else:
            result["rss"] = (rss() - before) / count
        for ws in raws:
            await ws.close()
    return result


def run_side(side: str, how: str, url: str, arg: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--side", side, "--how", how, "--url", url, "--arg", arg],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


async def reconcile_once(hub: EventHub, url: str) -> tuple[float, int]:
    """Drop the stream; return (seconds, requests) until the reconnect's reconciliation is done."""
    lists, connections = hub._reconciler.lists + hub.rest_reads, hub.connections_opened
    before = COUNTER.requests
    started = time.perf_counter()
    async with httpx.AsyncClient() as control:
        await control.post(url + "/_emulator/drop-connections")
    await until(lambda: hub.connections_opened > connections)
    await until(lambda: hub._reconciler.lists + hub.rest_reads > lists)
    await until(lambda: not hub.reconciling)
    return time.perf_counter() - started, COUNTER.requests - before


async def plain_listing(url: str) -> tuple[float, int]:
    """The baseline: every page of pending jobs, one after another, with a plain httpx client."""
    pages = 0
    async with httpx.AsyncClient(
        base_url=url + "/developer/api/v1", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as client:
        started = time.perf_counter()
        offset, more = 0, True
        while more:
            page = (
                await client.get(
                    "/jobs", params={"status": "pending", "offset": offset, "limit": 100}
                )
            ).json()
            pages += 1
            offset += 100
            more = page["has_more"]
        return time.perf_counter() - started, pages


async def plain_reads(url: str, ids: list[str]) -> float:
    async with httpx.AsyncClient(
        base_url=url + "/developer/api/v1", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as client:
        started = time.perf_counter()
        for jid in ids:
            (await client.get(f"/jobs/{jid}")).raise_for_status()
        return time.perf_counter() - started


COUNTER = None  # type: ignore[var-annotated]


async def scale(n: int, sockets: int, repeats: int) -> dict[str, Any]:
    """Registration, reconciliation and memory with N jobs that stay pending, against an emulator
    in a process of its own."""
    global COUNTER
    proc, url = start_emulator(API_KEY, step_duration=3600, concurrency=1, seed=1)
    try:
        COUNTER = counting = CountingTransport()
        settings = ComfySettings(api_key=API_KEY, base_url=url, reconnect_delay=0.05)
        backend = CloudBackend(settings=settings, transport=counting)
        hub = EventHub.shared(backend)
        await hub.ready(timeout=30)
        ids = await submit(backend, n)
        out: dict[str, Any] = {"registered": [], "reconcile": [], "listing": []}
        out["three"], out["three_plain"] = [], []
        for _ in range(repeats):
            # registration, then the reconciliation of N waits after a drop, alternated with
            # the plain listing of the whole backlog
            started = time.perf_counter()
            waits = [asyncio.ensure_future(wait_for_job(API_KEY, jid, base_url=url)) for jid in ids]
            await until(lambda: hub.waited_for == n)
            out["registered"].append(time.perf_counter() - started)
            await until(lambda: not hub.reconciling)
            out["listing"].append(await plain_listing(url))
            out["reconcile"].append(await reconcile_once(hub, url))
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            await until(lambda: hub.waited_for == 0)
            # three waits against the whole backlog (the oldest jobs: last pages of a listing)
            three = ids[:3]
            waits = [
                asyncio.ensure_future(wait_for_job(API_KEY, jid, base_url=url)) for jid in three
            ]
            await until(lambda: hub.waited_for == 3)
            await until(lambda: not hub.reconciling)
            out["three_plain"].append(await plain_reads(url, three))
            out["three"].append(await reconcile_once(hub, url))
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            await until(lambda: hub.waited_for == 0)
        await hub.aclose()
        # memory, each side in a child process of its own, alternated (ABBA)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(ids, f)
        mem: dict[str, list[dict[str, float]]] = {"waits": [], "sockets": []}
        for how in ("rss", "traced"):  # one measure per child: neither skews the other
            for side in ("waits", "sockets", "sockets", "waits"):
                arg = f.name if side == "waits" else str(sockets)
                mem[side].append(run_side(side, how, url, arg))
        os.unlink(f.name)
        out["memory"] = mem
        return out
    finally:
        proc.terminate()
        proc.wait(10)


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
        await until(lambda: hub.waited_for >= m - len(published))
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


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="pending waits (default 10000)")
    parser.add_argument("-m", type=int, default=300, help="jobs timed for latency (default 300)")
    parser.add_argument("--sockets", type=int, default=200, help="raw sockets for the memory ratio")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of each timing")
    parser.add_argument("--side", choices=["waits", "sockets"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--how", choices=["rss", "traced"], help=argparse.SUPPRESS)
    parser.add_argument("--arg", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "waits":
        with open(args.arg) as f:
            print(json.dumps(await side_waits(args.url, json.load(f), args.how)))
        return
    if args.side == "sockets":
        print(json.dumps(await side_sockets(args.url, int(args.arg), args.how)))
        return
    n = args.n
    print(f"== {n} pending wait_for_job calls; emulator in its own process; {load()}")
    s = await scale(n, args.sockets, args.repeats)
    med = statistics.median
    print(f"registration: median {med(s['registered']):.3f} s (goal < 1 s for 10,000)")
    rec_s = med(t for t, _ in s["reconcile"])
    rec_r = max(r for _, r in s["reconcile"])
    list_s = med(t for t, _ in s["listing"])
    pages = s["listing"][0][1]
    bound = min(n, math.ceil(n / 100)) + 1
    print(
        f"reconciling {n} waits after a drop: median {rec_s:.3f} s (goal < 2 s), at most "
        f"{rec_r} requests (goal <= min(N, ceil(backlog/100)) + 1 = {bound}); baseline, a plain "
        f"client listing the {pages} pages one after another: {list_s:.3f} s; "
        f"ratio {rec_s / list_s:.2f}x ({load()})"
    )
    three_s = med(t for t, _ in s["three"])
    three_r = max(r for _, r in s["three"])
    plain = med(s["three_plain"])
    print(
        f"3 waits against {n} unfinished jobs, after a drop: {three_r} requests (goal <= 5), "
        f"{three_s * 1000:.1f} ms from the drop; baseline, 3 plain reads: {plain * 1000:.1f} ms"
    )
    waits = s["memory"]["waits"]
    socks = s["memory"]["sockets"]
    w_t = med(x["traced"] for x in waits if "traced" in x)
    w_r = med(x["rss"] for x in waits if "rss" in x)
    k_t = med(x["traced"] for x in socks if "traced" in x)
    k_r = med(x["rss"] for x in socks if "rss" in x)
    print(
        f"memory per pending wait (child process, emulator elsewhere): {w_t:.0f} B traced "
        f"(goal <= 1536 B), {w_r:.0f} B RSS; one raw subscribed WebSocket ({args.sockets} in a "
        f"child process): {k_t:.0f} B traced, {k_r:.0f} B RSS; ratio socket/wait "
        f"{k_t / max(1.0, w_t):.1f}x traced, {k_r / max(1.0, w_r):.1f}x RSS"
    )
    lat = await latency(args.m)
    hub50, hub99 = pct(lat["hub"], 50) * 1e3, pct(lat["hub"], 99) * 1e3
    raw50, raw99 = pct(lat["raw"], 50) * 1e3, pct(lat["raw"], 99) * 1e3
    print(f"== completion latency over {len(lat['hub'])} jobs (publish -> caller); {load()}")
    print(f"waiting layer: p50 {hub50:.2f} ms, p99 {hub99:.2f} ms")
    print(f"raw socket:    p50 {raw50:.2f} ms, p99 {raw99:.2f} ms")
    print(
        f"ratio waiting/raw: p50 {hub50 / raw50:.2f}x, p99 {hub99 / raw99:.2f}x (goal p99 <= 2x); "
        f"mean {statistics.mean(lat['hub']) * 1e3:.2f} vs {statistics.mean(lat['raw']) * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
