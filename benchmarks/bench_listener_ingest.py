"""What a Prefect server stores of a 20,000-event burst: the paced listener against an unpaced one.

One Prefect server (here the test harness: the same app as ``prefect server start``, SQLite) stores a
few hundred events a second and silently drops what overflows its 10,000-message queue. The same
burst (1,000 jobs x 19 progress events + 1 outcome, 50 jobs at a time on the emulator) goes through
the listener twice, into the same server:

1. **paced** (the default: 300 events/s, progress coalesced per job within 50/s);
2. **every event** (the baseline: each of the 20,000 events sent as fast as Prefect's events client
   takes them). A plain reader of the Comfy stream turns every frame into its Prefect event
   (nothing coalesced: the listener's queue would coalesce progress whenever its sender lags),
   then they are sent to the server through ``get_events_client()`` in a tight loop.

For each it prints the events sent, the events the server stored (counted by the jobs' tag), the
outcomes stored (read back by id), and how long after each job ended its outcome reached the server
(p50, p99: the server's ``received`` minus the job's ``completed_at``). Takes about 2-3 minutes.

    .venv/bin/python benchmarks/bench_listener_ingest.py [--jobs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from datetime import datetime
from typing import Any

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-ingest-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL", "0.5")

import httpx  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.events.filters import EventFilter, EventIDFilter, EventResourceFilter  # noqa: E402
from prefect.events.schemas.events import ResourceSpecification  # noqa: E402

from prefect_comfy.backends.cloud.backend import CloudBackend  # noqa: E402
from prefect_comfy.listener.forwarder import ComfyListener  # noqa: E402
from prefect_comfy.orchestration.events import names as comfy_events  # noqa: E402
from prefect_comfy.orchestration.events.budget import ProgressBudget  # noqa: E402
from prefect_comfy_emulator import EmulatorConfig, EmulatorServer  # noqa: E402

KEY = "comfyui-bench-key-not-real"
BATCH = 50
SLEEP_WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "3": {"class_type": "EmulatorSleep", "inputs": {"seconds": 0.85, "images": ["1", 0]}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bench"}},
}  # fmt: skip
"""19 progress events (1 + 17 slices of 0.05 s + 1) and one outcome per job."""


async def stored_by_tag(tag: str) -> int:
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(
                resource=EventResourceFilter(
                    labels=ResourceSpecification({f"comfy.tag.{tag}": "true"})
                )
            ),
            limit=1,
        )
    return page.total


async def stored_ids(ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """The stored events among ``ids``, by id (each with the server's ``received`` time)."""
    found: dict[uuid.UUID, Any] = {}
    async with get_client() as client:
        for start in range(0, len(ids), 50):
            page = await client.read_events(
                filter=EventFilter(id=EventIDFilter(id=ids[start : start + 50])), limit=50
            )
            found.update((event.id, event) for event in page.events)
    return found


async def settle(probe: Any, seconds: float = 15.0) -> int:
    """The probe's value once it has not changed for ``seconds`` (the persister has caught up)."""
    last, since = -1, time.monotonic()
    while True:
        value = await probe()
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return value
        await asyncio.sleep(1.0)


class Collector:
    """An in-memory events client: what the listener would have sent."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    async def __aenter__(self) -> Collector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def emit(self, event: Any) -> None:
        self.events.append(event)


async def send_all(events: list[Any]) -> float:
    """Send ``events`` through a real Prefect events client as fast as it takes them."""
    from prefect.events.clients import get_events_client

    start = time.monotonic()
    async with get_events_client() as client:
        for event in events:
            await client.emit(event)
    return time.monotonic() - start


async def collect_every_event(backend: CloudBackend, into: list[Any], connected: Any) -> None:
    """The baseline's reader: every Comfy event becomes a Prefect event, nothing coalesced."""

    async def on_connect() -> None:
        connected.set()

    async for comfy_event in backend.events(["*"], on_connect=on_connect):
        into.append(
            comfy_events.from_comfy_event(
                comfy_event, address=backend.address, backend_kind=backend.kind
            )
        )


async def burst(emu: EmulatorServer, jobs: int, paced: bool) -> dict[str, Any]:
    tag = f"bench{uuid.uuid4().hex[:8]}"
    collected: list[Any] = []
    expected = jobs * 20
    async with CloudBackend(KEY, emu.url) as backend:
        if paced:
            listener = ComfyListener(
                backend,
                heartbeat_interval=None,
                listener_id="bench",
                progress_events=ProgressBudget(50),
            )
            task = asyncio.create_task(listener.run())
            while listener.stats.connects < 1:
                await asyncio.sleep(0.01)
        else:
            connected = asyncio.Event()
            task = asyncio.create_task(collect_every_event(backend, collected, connected))
            await connected.wait()
        start = time.monotonic()
        ids: list[str] = []
        async with httpx.AsyncClient(
            base_url=emu.api_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
        ) as http:
            for _ in range(jobs // BATCH):
                body = {"jobs": [{"workflow": SLEEP_WORKFLOW, "tags": [tag]}] * BATCH}
                response = await http.post("/jobs/batch", json=body)
                response.raise_for_status()
                ids += [job["id"] for job in response.json()["jobs"]]
        if paced:
            while listener.stats.received < expected or listener.stats.queued:
                await asyncio.sleep(0.2)
            elapsed = time.monotonic() - start
            listener.stop()
            await task
            received, sent = listener.stats.received, listener.stats.forwarded
        else:
            while len(collected) < expected:
                await asyncio.sleep(0.2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            received = sent = len(collected)
            elapsed = await send_all(collected)
        outcome_ids = [
            comfy_events.event_id(
                backend.address, comfy_events.JOB_COMPLETED, comfy_events.resource_id("job", j)
            )
            for j in ids
        ]
    stored = await settle(lambda: stored_by_tag(tag))
    outcomes = await stored_ids(outcome_ids)
    # how long after each job ended its outcome reached the server
    ended = {
        eid: datetime.fromisoformat(emu.state.jobs[j].completed_at.replace("Z", "+00:00"))
        for eid, j in zip(outcome_ids, ids, strict=True)
    }
    lags = sorted(
        (event.received - ended[eid]).total_seconds()
        for eid, event in outcomes.items()
        if eid in ended
    )
    return {
        "received": received,
        "sent": sent,
        "stored": stored,
        "outcomes": len(outcomes),
        "seconds": elapsed,
        "lag_p50": lags[len(lags) // 2] if lags else float("nan"),
        "lag_p99": lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else float("nan"),
    }


async def main(jobs: int) -> None:
    from prefect.testing.utilities import prefect_test_harness

    config = EmulatorConfig(
        api_keys=[KEY], seed=3, step_duration=0, upload_duration=0, concurrency=BATCH
    )
    with prefect_test_harness(server_startup_timeout=300), EmulatorServer(config) as emu:
        results = {
            name: await burst(emu, jobs, paced)
            for name, paced in (("paced", True), ("every event", False))
        }
    print(
        f"burst: {jobs} jobs x 20 events = {jobs * 20} Comfy events, into one Prefect server; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for name, r in results.items():
        lost = r["sent"] - r["stored"]
        print(
            f"{name:>11}: sent {r['sent']:6,} in {r['seconds']:5.1f}s ({r['sent'] / r['seconds']:6,.0f}/s)"
            f"  stored {r['stored']:6,}  lost {lost:6,} ({lost / r['sent']:5.1%})"
            f"  outcomes stored {r['outcomes']:,}/{jobs}"
            f"  stored after the job ended: p50 {r['lag_p50']:.1f}s p99 {r['lag_p99']:.1f}s"
        )
    paced, unpaced = results["paced"], results["every event"]
    print(
        f"ratio: paced sends {paced['sent'] / unpaced['sent']:.2f} of the baseline's events and "
        f"stores {paced['outcomes'] / max(1, unpaced['outcomes']):.2f}x its outcomes"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="listener burst into a Prefect server")
    parser.add_argument("--jobs", type=int, default=1000)
    asyncio.run(main(parser.parse_args().jobs))
