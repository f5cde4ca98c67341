"""Benchmark: N concurrent job waits through the shared EventHub vs REST polling, in one run.

Starts the emulator in a process of its own (127.0.0.1, a free port: a poller every 0.05 s once
saturated the in-process emulator, so the benchmark measured the emulator, not polling), then, for
each mode, alternated (hub, poll, poll, hub), submits N small jobs in batches of 50 and waits for
all of them:

- ``hub``: ``wait_for_job`` for every job, all at once (one shared WebSocket; after connecting, the
  unfinished jobs are listed in pages of 100 and only the jobs missing from the list are read);
- ``poll``: the baseline, ``GET /jobs/{id}`` every ``--interval`` seconds per job until it ends
  (default 1 s, what a polling integration would choose).

It prints wall time, WebSocket connections and REST requests (from the emulator's stats) of each
mode, and their ratios. Run::

    .venv/bin/python benchmarks/bench_waiters.py            # N=1000
    .venv/bin/python benchmarks/bench_waiters.py -n 200 --interval 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

from _emulator import emulator_stats, start_emulator

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.models import JOB_TERMINAL
from prefect_comfy.waiting.hub import EventHub
from prefect_comfy.waiting.waiters import wait_for_job

API_KEY = "comfyui-bench-key-not-real"
WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
}


async def submit(backend: CloudBackend, n: int) -> list[str]:
    sizes = [min(50, n - i) for i in range(0, n, 50)]
    answers = await asyncio.gather(
        *(backend.client.create_batch([{"workflow": WORKFLOW}] * size) for size in sizes)
    )
    return [job.id for answer in answers for job in answer.jobs]


async def wait_hub(backend: CloudBackend, ids: list[str], url: str) -> list[str]:
    await EventHub.shared(backend).aclose()  # start without a stream
    results = await asyncio.gather(
        *(wait_for_job(API_KEY, job_id, timeout=120, base_url=url) for job_id in ids)
    )
    return [r.payload.get("status", r.event.split(".")[1]) for r in results]


async def wait_poll(backend: CloudBackend, ids: list[str], interval: float) -> list[str]:
    async def one(job_id: str) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = await backend.get_job(job_id)
            if job.status in JOB_TERMINAL:
                return job.status
            await asyncio.sleep(interval)
        raise TimeoutError(job_id)

    return list(await asyncio.gather(*(one(job_id) for job_id in ids)))


async def measure(url: str, mode: str, n: int, interval: float) -> dict[str, Any]:
    async with CloudBackend(API_KEY, url) as backend:
        ids = await submit(backend, n)
        before = emulator_stats(url)
        started = time.perf_counter()
        if mode == "hub":
            statuses = await wait_hub(backend, ids, url)
        else:
            statuses = await wait_poll(backend, ids, interval)
        wall = time.perf_counter() - started
        after = emulator_stats(url)
    assert statuses == ["completed"] * n, f"{mode}: unexpected outcomes"
    return {
        "wall_s": wall,
        "ws_connections": after["ws_connections_total"] - before["ws_connections_total"],
        "rest_requests": after["requests_total"] - before["requests_total"],
    }


async def main(n: int, interval: float, job_seconds: float) -> None:
    proc, url = start_emulator(
        API_KEY,
        seed=7,
        step_duration=job_seconds / 2,  # the workflow runs two one-step nodes
        upload_duration=0.01,
        concurrency=min(n, 1000),
    )
    runs: dict[str, list[dict[str, Any]]] = {"hub": [], "poll": []}
    try:
        for mode in ("hub", "poll", "poll", "hub"):  # alternated
            runs[mode].append(await measure(url, mode, n, interval))
    finally:
        proc.terminate()
        proc.wait(10)
    hub = {k: statistics.median(r[k] for r in runs["hub"]) for k in runs["hub"][0]}
    poll = {k: statistics.median(r[k] for r in runs["poll"]) for k in runs["poll"][0]}
    print(
        f"{n} concurrent waits on jobs of ~{job_seconds:g} s each; poll every {interval:g} s; "
        f"emulator in its own process; medians of 2 alternated runs each; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'':14}{'hub':>12}{'poll':>12}{'poll/hub':>10}")
    for field in ("wall_s", "ws_connections", "rest_requests"):
        a, b = hub[field], poll[field]
        ratio = f"{b / a:.1f}x" if a else "-"
        print(f"{field:14}{a:>12.3g}{b:>12.3g}{ratio:>10}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="concurrent waits (default 1000)")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="polling interval, seconds (default 1)"
    )
    parser.add_argument("--job-seconds", type=float, default=8.0, help="how long each job runs")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.interval, args.job_seconds))
