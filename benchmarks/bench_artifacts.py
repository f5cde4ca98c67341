"""Benchmark: do progress and outputs artifacts slow the waits? 200 concurrent waits on 5-s jobs.

One flow waits for N jobs at once (``watch_comfy_job``, the body of ``wait_for_comfy_job``), each
a 5-s job on the emulator (100 progress updates), into one Prefect server (the test harness: the
same app as ``prefect server start``, SQLite), with the progress and outputs artifacts on, and
off (the baseline), alternated (on, off, off, on). It prints the wall time of each side from the
first submit to the last wait returning, their ratio (goal <= 1.2x), and the artifacts stored.

    .venv/bin/python benchmarks/bench_artifacts.py [-n 200 --seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from typing import Any

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-artifacts-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from prefect import flow  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402

from prefect_comfy.backends.cloud.backend import CloudBackend  # noqa: E402
from prefect_comfy.orchestration.sensor import watch_comfy_job  # noqa: E402

try:  # against an older checkout (--against style runs), which awaited every write itself
    from prefect_comfy.orchestration.writes import flush_artifact_writes
except ImportError:

    async def flush_artifact_writes() -> bool:  # type: ignore[misc]
        return True


from prefect_comfy_emulator import EmulatorConfig, EmulatorServer  # noqa: E402

KEY = "comfyui-bench-key-not-real"


def workflow(seconds: float) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "3": {"class_type": "EmulatorSleep", "inputs": {"seconds": seconds, "images": ["1", 0]}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bench"}},
    }  # fmt: skip


@flow(name="bench-artifacts", log_prints=False)
async def many_waits(url: str, n: int, seconds: float, artifacts: bool) -> tuple[float, float]:
    async with CloudBackend(KEY, url) as backend:
        started = time.perf_counter()
        batches = await asyncio.gather(
            *(
                backend.client.create_batch([{"workflow": workflow(seconds)}] * min(50, n - i))
                for i in range(0, n, 50)
            )
        )
        ids = [job.id for batch in batches for job in batch.jobs]
        await asyncio.gather(
            *(
                watch_comfy_job(
                    backend,
                    jid,
                    timeout=600,
                    emit_events=True,
                    progress_artifact=artifacts,
                    outputs_artifact=artifacts,
                )
                for jid in ids
            )
        )
        waited = time.perf_counter() - started
        # The final writes went on in the background: the flow ends when they are done, as a task
        # (wait_for_comfy_job) does for its job, so the artifacts counted below are all there.
        await flush_artifact_writes()
        return waited, time.perf_counter() - started


async def count_artifacts() -> int:
    """Every artifact stored (the API answers at most 200 a page: one read of 10,000 was refused
    with a 422, so the benchmark never printed its figures)."""
    count = 0
    async with get_client() as client:
        while page := await client.read_artifacts(limit=200, offset=count):
            count += len(page)
    return count


def main(n: int, seconds: float) -> None:
    from prefect.testing.utilities import prefect_test_harness

    config = EmulatorConfig(
        api_keys=[KEY], seed=5, step_duration=0, upload_duration=0, concurrency=n
    )
    walls: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    loads = [os.getloadavg()[0]]
    with prefect_test_harness(server_startup_timeout=300), EmulatorServer(config) as emu:
        for artifacts in (True, False, False, True):
            walls[artifacts].append(asyncio.run(many_waits(emu.url, n, seconds, artifacts)))
            loads.append(os.getloadavg()[0])
        stored = asyncio.run(count_artifacts())
    on = statistics.median(w for w, _ in walls[True])
    off = statistics.median(w for w, _ in walls[False])
    on_end = statistics.median(e for _, e in walls[True])
    off_end = statistics.median(e for _, e in walls[False])
    print(
        f"{n} concurrent waits on {seconds:g}-s jobs, one flow, one Prefect server; "
        f"load average {min(loads):.2f}-{max(loads):.2f} (1 min, {os.cpu_count()} cores)"
    )
    print(
        f"last wait returned: artifacts on {on:.1f} s, off {off:.1f} s (medians of 2, "
        f"alternated); ratio {on / off:.2f}x (goal <= 1.2x)"
    )
    print(
        f"flow done, its artifacts written: on {on_end:.1f} s, off {off_end:.1f} s; ratio "
        f"{on_end / off_end:.2f}x; artifacts stored: {stored} (expected {4 * n}: a progress "
        f"and an outputs artifact per job, two runs)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    main(args.n, args.seconds)
