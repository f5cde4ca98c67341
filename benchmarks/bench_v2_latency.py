"""Benchmark: completion latency and REST requests on Comfy API v2, past the stream cap, in one run.

Starts the emulator in-process (127.0.0.1, a free port; ``--concurrency`` jobs run at once, the
rest wait first in first out, as on a ComfyUI) and runs the same jobs (each an ``EmulatorSleep`` of a
seeded random ``--min``-``--max`` s) on its v2 face, side by side:

1. **SSE** (the latency reference): submit with httpx, then read ``GET /api/v2/jobs/{id}/events``
   until the terminal ``status`` frame, at most 8 in flight (the emulator's, and comfy-api-proxy's,
   stream cap): raw SSE, the outcome known when that frame arrives (no confirming read).
2. **comfy-sdk**: the official client, ``comfy_sdk.AsyncComfy`` 0.5.0, every job submitted at once,
   then ``AsyncJob.wait()`` on each (a read, then sleeps of 0.5 s x1.5 up to 5 s).
3. **The waiting layer**: ``wait_for(V2Backend, "job", id)`` through the process-wide hub, every job
   submitted at once: 8 on streams (the jobs closest to their end), the rest followed by the
   shared poll (one listing of the unfinished jobs a round); and (``--floor``, the default) with
   8 in flight, every job on a stream: what the waiting layer costs over raw SSE (the backend's
   confirming read of each outcome, the hand-off from the waiting loop's thread).

The sides alternate: every pass runs each side once, and the next pass runs them in the opposite
order (so no side always runs on a fresher or a more loaded emulator). Latency is the wall-clock time
from the job's ``completed_at`` (the emulator's clock, millisecond precision, same host) to the moment
the client knows the outcome. REST requests are counted by the emulator (an ASGI wrapper): job reads
(``GET /jobs/{id}``) and listings (``GET /jobs``) per job, submissions and stream opens apart; the
benchmark's own untimed reads are not counted. Prints p50/p99 of each, requests per job, the ratios,
and the load average before and after.

Run::

    .venv/bin/python benchmarks/bench_v2_latency.py                     # 48 jobs of 0.2-4 s
    .venv/bin/python benchmarks/bench_v2_latency.py -m 1000 --min 0.05 --max 0.4
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import json
import os
import random
import statistics
import time
from datetime import datetime
from typing import Any

import httpx

from prefect_comfy_emulator import EmulatorConfig, EmulatorServer

API_KEY = "comfyui-bench-key-not-real"
IN_FLIGHT = 8
SUBMITTING = 16
"""Submissions in flight at once on the sides that submit every job at once (comfy-sdk's pool of
100 connections times out with 1,000 at once on a loaded machine)."""
TERMINAL = {"succeeded", "failed", "canceled"}


def graph(seconds: float) -> dict[str, Any]:
    return {"1": {"class_type": "EmulatorSleep", "inputs": {"seconds": seconds}}}


def completed_at(job: dict[str, Any]) -> float:
    return datetime.fromisoformat(job["completed_at"].replace("Z", "+00:00")).timestamp()


async def sse_wait(client: httpx.AsyncClient, job_id: str) -> float:
    """Read the job's SSE stream until its terminal status; return when that frame arrived (raw
    SSE: no confirming read)."""
    event = ""
    async with client.stream("GET", f"/jobs/{job_id}/events") as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif (
                line.startswith("data:")
                and event == "status"
                and json.loads(line[5:])["status"] in TERMINAL
            ):
                return time.time()
    raise RuntimeError(f"the stream of {job_id} ended without an outcome")


UNTIMED = {"X-Bench-Untimed": "1"}
"""Marks the benchmark's own reads (of ``completed_at``): not counted."""


class Counted:
    """An ASGI wrapper of the emulator's app that counts v2 job requests by kind."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counts: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:  # the server reads app.state
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/api/v2/jobs"):
            headers = dict(scope.get("headers") or [])
            if b"x-bench-untimed" not in headers:
                self.counts[_kind(scope["method"], path)] += 1
        await self.app(scope, receive, send)


async def record_of(reader: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """The job as the server has it (untimed; a keep-alive connection the server closed at that
    moment is tried again)."""
    for attempt in range(3):
        try:
            return (await reader.get(f"/jobs/{job_id}", headers=UNTIMED)).json()
        except httpx.TransportError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _kind(method: str, path: str) -> str:
    rest = path.removeprefix("/api/v2/jobs").strip("/")
    if method == "POST":
        return "submit" if not rest else "other"
    if not rest:
        return "list"
    return "stream" if rest.endswith("/events") else "read"


async def run_sse(api: str, durations: list[float]) -> list[float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=2 * IN_FLIGHT + 4)
    slots = asyncio.Semaphore(IN_FLIGHT)
    async with httpx.AsyncClient(
        base_url=api, headers=headers, limits=limits, timeout=120
    ) as client:

        async def one(seconds: float) -> None:
            async with slots:
                answer = await client.post("/jobs", json={"workflow": graph(seconds)})
                answer.raise_for_status()
                job_id = answer.json()["id"]
                known = await sse_wait(client, job_id)
            job = await record_of(client, job_id)
            assert job["status"] == "succeeded", job
            latencies.append(known - completed_at(job))

        await asyncio.gather(*(one(s) for s in durations))
    return latencies


async def run_polling(api: str, durations: list[float]) -> list[float]:
    import comfy_sdk

    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {API_KEY}", **UNTIMED}
    limits = httpx.Limits(max_connections=64)
    async with (
        comfy_sdk.AsyncComfy(api_key=API_KEY) as comfy,
        httpx.AsyncClient(base_url=api, headers=headers, limits=limits, timeout=120) as reader,
    ):
        submitting = asyncio.Semaphore(SUBMITTING)

        async def one(seconds: float) -> None:
            async with submitting:
                job = await comfy.submit(comfy.workflows.from_json(graph(seconds)))
            for attempt in range(5):  # its pool of 100 connections, 1,000 pollers on a loaded box
                try:
                    await job.wait()
                    break
                except httpx.TransportError:
                    if attempt == 4:
                        raise
            known = time.time()
            record = await record_of(reader, job.id)
            assert record["status"] == "succeeded", record
            latencies.append(known - completed_at(record))

        await asyncio.gather(*(one(s) for s in durations))
    return latencies


async def run_hub(origin: str, durations: list[float], in_flight: int | None = None) -> list[float]:
    from prefect_comfy.backends.v2.backend import V2Backend
    from prefect_comfy.waiting.waits import wait_for

    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {API_KEY}", **UNTIMED}
    limits = httpx.Limits(max_connections=64)
    async with (
        V2Backend(origin, API_KEY) as backend,
        httpx.AsyncClient(
            base_url=f"{origin}/api/v2", headers=headers, limits=limits, timeout=120
        ) as reader,
    ):
        slots = asyncio.Semaphore(in_flight or len(durations))
        submitting = asyncio.Semaphore(SUBMITTING)

        async def one(seconds: float) -> None:
            async with slots:
                async with submitting:
                    job = await backend.submit(graph(seconds))
                event = await wait_for(backend, "job", job.id, timeout=600)
                known = time.time()
            assert event.event == "job.completed", event
            record = await record_of(reader, job.id)
            latencies.append(known - completed_at(record))

        await asyncio.gather(*(one(s) for s in durations))
    return latencies


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--jobs", type=int, default=48, help="jobs per side and pass")
    parser.add_argument("--min", type=float, default=0.2, help="shortest job, seconds")
    parser.add_argument("--max", type=float, default=4.0, help="longest job, seconds")
    parser.add_argument("--concurrency", type=int, default=4, help="jobs the emulator runs at once")
    parser.add_argument("--passes", type=int, default=2, help="passes, sides in alternate orders")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the waiting layer with 8 in flight (every job on a stream: its floor)",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    durations = [round(rng.uniform(args.min, args.max), 2) for _ in range(args.jobs)]
    config = EmulatorConfig(
        api_keys=[API_KEY],
        step_duration=0.01,
        concurrency=args.concurrency,
        v2_max_streams=IN_FLIGHT,
    )
    names = ["SSE (httpx, raw, 8 in flight)", "comfy-sdk Job.wait, all at once"]
    with_hub = importlib.util.find_spec("prefect_comfy.backends.v2") is not None
    if with_hub:
        names.append("waiting layer, all at once, cap 8")
        if args.floor:
            names.append("waiting layer, 8 in flight")
    found: dict[str, list[float]] = {name: [] for name in names}
    requests: dict[str, collections.Counter[str]] = {name: collections.Counter() for name in names}
    load_before = os.getloadavg()
    emu = EmulatorServer(config)
    counted = Counted(emu.app)
    emu.app = counted  # type: ignore[assignment]
    with emu:
        os.environ["COMFY_BASE_URL"] = emu.v2_url
        os.environ["COMFY_MAX_STREAMS"] = str(IN_FLIGHT)
        api = f"{emu.v2_url}/api/v2"
        sides = {
            names[0]: lambda: run_sse(api, durations),
            names[1]: lambda: run_polling(api, durations),
        }
        if with_hub:
            sides[names[2]] = lambda: run_hub(emu.v2_url, durations)
            if args.floor:
                sides[names[3]] = lambda: run_hub(emu.v2_url, durations, IN_FLIGHT)
        for number in range(args.passes):  # the sides in alternate orders
            for name in names if number % 2 == 0 else names[::-1]:
                before = collections.Counter(counted.counts)
                found[name] += asyncio.run(sides[name]())
                requests[name] += counted.counts - before
    load_after = os.getloadavg()
    jobs = args.jobs * args.passes
    print(
        f"{args.jobs} jobs of {args.min:g}-{args.max:g} s per side and pass, {args.passes} passes "
        f"in alternate orders, the emulator running {args.concurrency} at once, 8 streams at most; "
        f"load average (1, 5, 15 min) before {_load(load_before)}, after {_load(load_after)}"
    )
    print(
        f"{'':36} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'REST/job':>9} "
        f"{'reads':>7} {'lists':>7} {'streams':>8}"
    )
    per_job: dict[str, float] = {}
    for name in names:
        values, count = found[name], requests[name]
        rest = count["read"] + count["list"]
        per_job[name] = rest / jobs
        p50, p99 = quantile(values, 0.5) * 1000, quantile(values, 0.99) * 1000
        print(
            f"{name:36} {p50:9.1f} {p99:9.1f} {statistics.fmean(values) * 1000:9.1f} "
            f"{per_job[name]:9.2f} {count['read']:7d} {count['list']:7d} {count['stream']:8d}"
        )
    sse, polling = found[names[0]], found[names[1]]
    pairs = [("comfy-sdk / SSE", polling, sse)]
    if with_hub:
        pairs.append(("waiting layer / SSE", found[names[2]], sse))
        if args.floor:
            pairs.append(("waiting layer, 8 in flight / SSE", found[names[3]], sse))
    for name, top, bottom in pairs:
        ratios = [quantile(top, q) / max(quantile(bottom, q), 1e-3) for q in (0.5, 0.99)]
        print(f"{name}: p50 {ratios[0]:.1f}x, p99 {ratios[1]:.1f}x")
    if with_hub:
        hub, sdk = per_job[names[2]], per_job[names[1]]
        print(
            f"REST requests per job: waiting layer {hub:.2f}, comfy-sdk {sdk:.2f} "
            f"(waiting layer / comfy-sdk {hub / max(sdk, 1e-9):.2f})"
        )


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    main()
