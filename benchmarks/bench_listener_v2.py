"""Outcome latency of the listener on Comfy API v2, where it finds jobs by listing and follows each.

v2 has no account-wide stream: the listener lists jobs (every 1 s, backed off while nothing is
new), follows each unfinished one on its own SSE stream within the server's cap, and reads the rest
in one shared poll (:mod:`prefect_comfy.listener.follow`). This submits ``--jobs`` jobs at once
from plain HTTP (as another client would) to the emulator's v2 face with a cap of ``--cap``
streams, and measures for each job the time from its end on the server (``completed_at``) to the
listener handing its terminal event to Prefect (a counting events client, no server), plus how many
streams the server saw at once. The baseline, in the same run on the same jobs: comfy-sdk's
``Job.wait`` schedule (one poller per job, ``GET /api/v2/jobs/{id}`` 0.5 s apart, x1.5 up to 5 s).

    .venv/bin/python benchmarks/bench_listener_v2.py [--jobs 40 --cap 8 --seconds 6.0]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from prefect_comfy.backends.v2.backend import V2Backend
from prefect_comfy.listener.forwarder import ComfyListener
from prefect_comfy_emulator import EmulatorConfig, EmulatorServer

KEY = "comfyui-bench-key-not-real"
TERMINAL = {"comfy.job.completed", "comfy.job.failed", "comfy.job.cancelled"}


def workflow(seconds: float) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "EmulatorSleep", "inputs": {"seconds": seconds, "images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
    }  # fmt: skip


class Stamping:
    """A Prefect events client stand-in: when each terminal event was handed over."""

    def __init__(self) -> None:
        self.ends: dict[str, datetime] = {}

    async def __aenter__(self) -> Stamping:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def emit(self, event: Any) -> None:
        if event.event in TERMINAL:
            self.ends.setdefault(event.resource.id.removeprefix("comfy.job."), _now())


def _now() -> datetime:
    return datetime.now(UTC)


async def run(jobs: int, cap: int, seconds: float) -> None:
    config = EmulatorConfig(
        api_keys=[KEY], step_duration=0.01, v2_max_streams=cap, concurrency=jobs
    )
    with EmulatorServer(config) as emu:
        client = Stamping()
        async with V2Backend(emu.v2_url, KEY) as backend:
            listener = ComfyListener(
                backend, heartbeat_interval=None, events_client=lambda: client, events_per_second=0
            )
            task = asyncio.create_task(listener.run())
            deadline = time.monotonic() + 30
            while not listener.connected:
                assert time.monotonic() < deadline, "the listener did not start"
                await asyncio.sleep(0.05)
            async with httpx.AsyncClient(
                base_url=emu.url + "/api/v2", headers={"Authorization": f"Bearer {KEY}"}, timeout=30
            ) as http:
                answers = await asyncio.gather(
                    *(http.post("/jobs", json={"workflow": workflow(seconds)}) for _ in range(jobs))
                )
                ids = [a.raise_for_status().json()["id"] for a in answers]
                polled = asyncio.gather(*(_poll_like_comfy_sdk(http, i) for i in ids))
                deadline = time.monotonic() + 60 + seconds * jobs
                while not all(i in client.ends for i in ids):
                    assert time.monotonic() < deadline, "not every outcome arrived"
                    await asyncio.sleep(0.05)
                ended = {i: (await http.get(f"/jobs/{i}")).json()["completed_at"] for i in ids}
                seen_by_polling = dict(zip(ids, await polled, strict=True))
            stats = listener.follower.stats if listener.follower else {}
            listener.stop()
            await task
        lags = _lags(client.ends, ended)
        baseline = _lags(seen_by_polling, ended)
        peak = emu.v2_stats()["streams_peak"]
    print(
        f"{jobs} jobs of {seconds:.1f} s, stream cap {cap}: outcome lag after the job ended, "
        f"listener {_describe(lags)}; comfy-sdk polling {_describe(baseline)}; ratio of medians "
        f"{statistics.median(lags) / statistics.median(baseline):.2f}; server saw at most {peak} "
        f"streams; streams opened {stats.get('job_streams_opened')}, poll reads "
        f"{stats.get('poll_reads')}"
    )


async def _poll_like_comfy_sdk(http: httpx.AsyncClient, job_id: str) -> datetime:
    delay = 0.5
    ends = ("succeeded", "failed", "canceled", "expired")
    while (await http.get(f"/jobs/{job_id}")).json()["status"] not in ends:
        await asyncio.sleep(delay)  # the client's schedule, measured, not a synchronisation
        delay = min(delay * 1.5, 5.0)
    return _now()


def _lags(seen: dict[str, datetime], ended: dict[str, str]) -> list[float]:
    return sorted(
        (seen[i] - datetime.fromisoformat(ended[i].replace("Z", "+00:00"))).total_seconds()
        for i in ended
    )


def _describe(lags: list[float]) -> str:
    p95 = lags[min(len(lags) - 1, int(0.95 * len(lags)))]
    return (
        f"median {statistics.median(lags) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {lags[-1] * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--cap", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.cap, args.seconds))


if __name__ == "__main__":
    main()
