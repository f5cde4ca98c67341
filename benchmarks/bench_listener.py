"""Forwarding throughput of the listener against raw WebSocket receive, in the same run.

A burst of events is produced on the emulator while its delivery is paused (jobs with many
KSampler steps, each step a ``job.progress``), then released at once, and timed until the last one
arrives, three ways:

1. **baseline**: a bare ``websockets`` client that subscribes to ``*`` and counts frames;
2. **listener**: :class:`ComfyListener` with a counting Prefect events client (no server);
3. **listener+json**: the same, with the client serialising each event as the real one does.

The ratio listener/baseline is how much of the raw stream rate the listener keeps. The listener
runs unpaced here (``events_per_second=0``, no progress interval, an unlimited progress budget), so
this is what it can take in; an event counts once it is sent or coalesced into a newer one of its
job. By default it sends at most 300 events a second to a Prefect server (which stores a few
hundred a second) and coalesces progress: see ``tests/integration/test_listener_ingest.py``.

With ``--against CHECKOUT`` it also measures the listener's CPU per Comfy event with the default
progress interval (most progress coalesced), here and in another checkout of the package (such as
the previous release), each in a child process, alternated.

    .venv/bin/python benchmarks/bench_listener.py [--jobs 8 --steps 500 --rounds 3]
    .venv/bin/python benchmarks/bench_listener.py --against ../main
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import httpx
from websockets.asyncio.client import connect

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.listener.forwarder import ComfyListener
from prefect_comfy.orchestration.events.budget import ProgressBudget
from prefect_comfy_emulator import EmulatorConfig, EmulatorServer

KEY = "comfyui-bench-key-not-real"


def workflow(steps: int) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "bench", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0], "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["5", 0],
                "seed": 1, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "bench"}},
    }  # fmt: skip


class CountingClient:
    """A Prefect events client stand-in that counts (and optionally serialises) what it gets."""

    def __init__(self, serialise: bool) -> None:
        self.count = 0
        self.serialise = serialise
        self.changed = asyncio.Event()

    async def __aenter__(self) -> CountingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def emit(self, event: Any) -> None:
        if self.serialise:
            event.model_dump_json()
        self.count += 1
        self.changed.set()


async def produce_burst(emu: EmulatorServer, jobs: int, steps: int) -> int:
    """Run ``jobs`` jobs to completion with delivery paused; return how many events are held."""
    emu.pause_events()
    async with httpx.AsyncClient(
        base_url=emu.api_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    ) as http:
        ids = []
        for _ in range(jobs):
            r = await http.post("/jobs", json={"workflow": workflow(steps)})
            r.raise_for_status()
            ids.append(r.json()["id"])
        for job_id in ids:
            while (await http.get(f"/jobs/{job_id}")).json()["status"] not in (
                "completed",
                "failed",
            ):
                await asyncio.sleep(0.05)
    return jobs * (steps + 1)  # one progress per step, one completed per job


async def baseline(emu: EmulatorServer, jobs: int, steps: int) -> tuple[int, float]:
    async with connect(emu.ws_url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        await ws.send(json.dumps({"type": "subscribe", "data": {"events": ["*"]}}))
        while json.loads(await ws.recv())["type"] != "subscribed":
            pass
        expected = await produce_burst(emu, jobs, steps)
        count = 0
        start = time.perf_counter()
        emu.resume_events()
        while count < expected:
            if json.loads(await ws.recv())["type"] == "event":
                count += 1
        return count, time.perf_counter() - start


async def through_listener(
    emu: EmulatorServer, jobs: int, steps: int, serialise: bool
) -> tuple[int, float]:
    client = CountingClient(serialise)
    async with CloudBackend(KEY, emu.url) as backend:
        listener = ComfyListener(
            backend,
            events_client=lambda: client,
            heartbeat_interval=None,
            listener_id="bench",
            events_per_second=0,
            progress_interval=0,
            progress_events=ProgressBudget(1e12),
        )
        task = asyncio.create_task(listener.run())
        while listener.stats.connects < 1:
            await asyncio.sleep(0.01)
        expected = await produce_burst(emu, jobs, steps)
        start = time.perf_counter()
        emu.resume_events()
        # Each job's outcome comes last and is always sent: the last event handled is an emit.
        while listener.stats.forwarded + listener.stats.coalesced < expected:
            client.changed.clear()
            await client.changed.wait()
        elapsed = time.perf_counter() - start
        listener.stop()
        await task
    return listener.stats.forwarded + listener.stats.coalesced, elapsed


async def cpu_per_event(emu: EmulatorServer, jobs: int, steps: int) -> float:
    """CPU seconds of the listener's thread per Comfy event, with the default progress interval
    (1 s per job, so most progress is coalesced) and no rate limit, from the release of the
    burst until every event is sent or coalesced; the emulator runs on a thread of its own."""
    client = CountingClient(serialise=True)
    async with CloudBackend(KEY, emu.url) as backend:
        listener = ComfyListener(
            backend,
            events_client=lambda: client,
            heartbeat_interval=None,
            listener_id="bench",
            events_per_second=0,
            progress_events=ProgressBudget(1e12),
        )
        task = asyncio.create_task(listener.run())
        while listener.stats.connects < 1:
            await asyncio.sleep(0.01)
        expected = await produce_burst(emu, jobs, steps)
        start = time.thread_time()
        emu.resume_events()
        while listener.stats.forwarded + listener.stats.coalesced < expected:
            client.changed.clear()
            await client.changed.wait()
        used = time.thread_time() - start
        listener.stop()
        await task
    return used / expected


async def cpu_child(jobs: int, steps: int, rounds: int) -> None:
    config = EmulatorConfig(
        api_keys=[KEY], seed=1, step_duration=0, upload_duration=0, concurrency=jobs,
        ws_queue_size=1_000_000,
    )  # fmt: skip
    with EmulatorServer(config) as emu:
        values = [await cpu_per_event(emu, jobs, steps) for _ in range(rounds)]
    print(json.dumps(values))


def compare_cpu(against: str, jobs: int, steps: int, rounds: int) -> None:
    """The listener's CPU per event here and in another checkout (``against``), each in a child
    process (its PYTHONPATH pointed at that checkout), alternated ABBA."""
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found: dict[str, list[float]] = {"this": [], "against": []}
    for side in ("this", "against", "against", "this"):
        env = {**os.environ, "PYTHONPATH": here if side == "this" else against}
        args = [sys.executable, __file__, "--cpu-child", "--jobs", str(jobs)]
        args += ["--steps", str(steps), "--rounds", str(rounds)]
        out = subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout
        found[side] += json.loads(out.strip().splitlines()[-1])
    this, other = statistics.median(found["this"]), statistics.median(found["against"])
    print(
        f"listener CPU per Comfy event (default progress interval, events serialised): "
        f"{this * 1e6:.1f} us here vs {other * 1e6:.1f} us in {against}: ratio {this / other:.2f} "
        f"(load average {os.getloadavg()[0]:.2f})"
    )


async def main(jobs: int, steps: int, rounds: int) -> None:
    config = EmulatorConfig(
        api_keys=[KEY], seed=1, step_duration=0, upload_duration=0, concurrency=jobs,
        ws_queue_size=1_000_000,
    )  # fmt: skip
    with EmulatorServer(config) as emu:
        results: dict[str, list[float]] = {"baseline": [], "listener": [], "listener+json": []}
        for _ in range(rounds):
            for name, run in (
                ("baseline", lambda: baseline(emu, jobs, steps)),
                ("listener", lambda: through_listener(emu, jobs, steps, False)),
                ("listener+json", lambda: through_listener(emu, jobs, steps, True)),
            ):
                count, elapsed = await run()
                results[name].append(count / elapsed)
    base = statistics.median(results["baseline"])
    print(f"events per burst: {jobs * (steps + 1)} ({jobs} jobs x {steps} steps), {rounds} rounds")
    for name, rates in results.items():
        rate = statistics.median(rates)
        print(f"{name:>14}: {rate:10,.0f} events/s (median)   ratio to baseline {rate / base:5.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="listener forwarding throughput")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--against", metavar="CHECKOUT", help="also compare CPU per event with this checkout"
    )
    parser.add_argument("--cpu-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_child:
        asyncio.run(cpu_child(args.jobs, args.steps, args.rounds))
    else:
        asyncio.run(main(args.jobs, args.steps, args.rounds))
        if args.against:
            compare_cpu(args.against, args.jobs, args.steps, args.rounds)
