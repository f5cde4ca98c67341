"""Benchmark: completion latency on Comfy API v2, a per-job SSE stream against polling, in one run.

Starts the emulator in-process (127.0.0.1, a free port) and runs the same jobs twice on its v2 face,
at most 8 in flight (the emulator's, and comfy-api-proxy's, stream cap), each an ``EmulatorSleep`` of
a seeded random 0.2-4 s:

1. **SSE**: submit with httpx, then read ``GET /api/v2/jobs/{id}/events`` with httpx until the
   terminal ``status`` frame: raw SSE, the outcome known when that frame arrives (no confirming
   read).
2. **Polling**: the official client itself, ``comfy_sdk.AsyncComfy`` 0.5.0: ``submit`` then
   ``AsyncJob.wait()`` (a read, then sleeps of 0.5 s x1.5 up to 5 s).
3. Where the project's v2 backend is installed (``prefect_comfy.backends.v2``), **the waiting
   layer** itself: ``wait_for(V2Backend, "job", id)`` through the process-wide hub's per-job streams,
   8 in flight (every job on a stream); and the same with every job submitted at once (8 on
   streams, the rest read by the shared poll and moved onto streams as slots free up).

Every side runs twice, in opposite orders (so no side always runs on a fresher or a more loaded
emulator). Latency is the wall-clock time from the job's ``completed_at`` (the emulator's clock, millisecond
precision, same host) to the moment the client knows the outcome. Prints p50/p99 of each and the
ratio polling / SSE.

Run::

    .venv/bin/python benchmarks/bench_v2_latency.py            # 200 jobs
    .venv/bin/python benchmarks/bench_v2_latency.py -m 1000
"""

from __future__ import annotations

import argparse
import asyncio
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


async def run_sse(api: str, durations: list[float]) -> list[float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=2 * IN_FLIGHT + 4)
    slots = asyncio.Semaphore(IN_FLIGHT)
    async with httpx.AsyncClient(
        base_url=api, headers=headers, limits=limits, timeout=60
    ) as client:

        async def one(seconds: float) -> None:
            async with slots:
                answer = await client.post("/jobs", json={"workflow": graph(seconds)})
                answer.raise_for_status()
                job_id = answer.json()["id"]
                known = await sse_wait(client, job_id)
            job = (await client.get(f"/jobs/{job_id}")).json()  # not timed
            assert job["status"] == "succeeded", job
            latencies.append(known - completed_at(job))

        await asyncio.gather(*(one(s) for s in durations))
    return latencies


async def run_polling(api: str, durations: list[float]) -> list[float]:
    import comfy_sdk

    latencies: list[float] = []
    slots = asyncio.Semaphore(IN_FLIGHT)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with (
        comfy_sdk.AsyncComfy(api_key=API_KEY) as comfy,
        httpx.AsyncClient(base_url=api, headers=headers, timeout=60) as reader,
    ):

        async def one(seconds: float) -> None:
            async with slots:
                job = await comfy.submit(comfy.workflows.from_json(graph(seconds)))
                await job.wait()
                known = time.time()
                record = (await reader.get(f"/jobs/{job.id}")).json()  # not timed
                assert record["status"] == "succeeded", record
                latencies.append(known - completed_at(record))

        await asyncio.gather(*(one(s) for s in durations))
    return latencies


async def run_hub(origin: str, durations: list[float], in_flight: int) -> list[float]:
    from prefect_comfy.waiting.waits import wait_for

    # Imported by name: the backend lives on another branch until it is merged.
    V2Backend = importlib.import_module("prefect_comfy.backends.v2.backend").V2Backend  # noqa: N806

    latencies: list[float] = []
    slots = asyncio.Semaphore(in_flight)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with (
        V2Backend(origin, API_KEY) as backend,
        httpx.AsyncClient(base_url=f"{origin}/api/v2", headers=headers, timeout=60) as reader,
    ):

        async def one(seconds: float) -> None:
            async with slots:
                job = await backend.submit(graph(seconds))
                event = await wait_for(backend, "job", job.id, timeout=120)
                known = time.time()
                assert event.event == "job.completed", event
                record = (await reader.get(f"/jobs/{job.id}")).json()  # not timed
                latencies.append(known - completed_at(record))

        await asyncio.gather(*(one(s) for s in durations))
    return latencies


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--jobs", type=int, default=200, help="jobs per side and pass")
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    durations = [round(rng.uniform(0.2, 4.0), 2) for _ in range(args.jobs)]
    config = EmulatorConfig(api_keys=[API_KEY], step_duration=0.01)
    names = ["SSE (httpx, raw)", "polling (comfy_sdk AsyncJob.wait)"]
    with_hub = importlib.util.find_spec("prefect_comfy.backends.v2") is not None
    if with_hub:
        names += [f"waiting layer, {IN_FLIGHT} in flight", "waiting layer, all at once"]
    found: dict[str, list[float]] = {name: [] for name in names}
    with EmulatorServer(config) as emu:
        os.environ["COMFY_BASE_URL"] = emu.v2_url
        api = f"{emu.v2_url}/api/v2"
        sides = {
            names[0]: lambda: run_sse(api, durations),
            names[1]: lambda: run_polling(api, durations),
        }
        if with_hub:
            sides[names[2]] = lambda: run_hub(emu.v2_url, durations, IN_FLIGHT)
            sides[names[3]] = lambda: run_hub(emu.v2_url, durations, len(durations))
        for order in (names, names[::-1]):  # two passes, the sides in opposite orders
            for name in order:
                found[name] += asyncio.run(sides[name]())
    rows = [(name, found[name]) for name in names]
    print(
        f"{args.jobs} jobs of 0.2-4 s per side and pass, 2 passes in opposite orders, "
        f"{IN_FLIGHT} in flight, emulator v2 face; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'':36} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for name, values in rows:
        p50, p99 = quantile(values, 0.5) * 1000, quantile(values, 0.99) * 1000
        print(f"{name:36} {p50:9.1f} {p99:9.1f} {statistics.fmean(values) * 1000:9.1f}")
    sse, polling = found[names[0]], found[names[1]]
    pairs = [("polling / SSE", polling, sse)]
    if with_hub:
        pairs += [
            ("waiting layer 8 in flight / SSE", found[names[2]], sse),
            ("polling / waiting layer all at once", polling, found[names[3]]),
        ]
    for name, top, bottom in pairs:
        ratios = [quantile(top, q) / max(quantile(bottom, q), 1e-3) for q in (0.5, 0.99)]
        print(f"{name}: p50 {ratios[0]:.1f}x, p99 {ratios[1]:.1f}x")


if __name__ == "__main__":
    main()
