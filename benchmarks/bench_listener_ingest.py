"""What a Prefect server stores of a 20,000-event burst: the paced listener against an unpaced one.

One Prefect server (here the test harness: the same app as ``prefect server start``, SQLite) stores a
few hundred events a second and silently drops what overflows its 10,000-message queue. The same
burst (1,000 jobs x 19 progress events + 1 outcome, 50 jobs at a time on the emulator) goes through
the listener twice, into the same server:

1. **paced** (the default: 300 events/s, progress coalesced per job within 50/s);
2. **every event** (the baseline, what the listener did before: each of the 20,000 events sent as
   fast as Prefect's events client takes them). The listener collects them with an in-memory client
   (unpaced, no interval, so that it keeps up and coalesces nothing), then they are sent to the
   server through ``get_events_client()`` in a tight loop.

For each it prints the events sent, the events the server stored (counted by the jobs' tag), and
the outcomes stored (read back by id). Takes about 2-3 minutes.

    .venv/bin/python benchmarks/bench_listener_ingest.py [--jobs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from typing import Any

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-ingest-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL", "0.5")

import httpx  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.events.filters import EventFilter, EventIDFilter, EventResourceFilter  # noqa: E402
from prefect.events.schemas.events import ResourceSpecification  # noqa: E402

from prefect_comfy import events as comfy_events  # noqa: E402
from prefect_comfy.backends.cloud.backend import CloudBackend  # noqa: E402
from prefect_comfy.budget import ProgressBudget  # noqa: E402
from prefect_comfy.emulator import EmulatorConfig, EmulatorServer  # noqa: E402
from prefect_comfy.listener.forwarder import ComfyListener  # noqa: E402

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


async def stored_ids(ids: list[uuid.UUID]) -> int:
    found = 0
    async with get_client() as client:
        for start in range(0, len(ids), 50):
            page = await client.read_events(
                filter=EventFilter(id=EventIDFilter(id=ids[start : start + 50])), limit=50
            )
            found += len(page.events)
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


async def burst(emu: EmulatorServer, jobs: int, paced: bool) -> dict[str, Any]:
    tag = f"bench{uuid.uuid4().hex[:8]}"
    collector = Collector()
    options: dict[str, Any] = (
        {"progress_events": ProgressBudget(50)}
        if paced
        else {
            "events_client": lambda: collector,
            "events_per_second": 0,
            "progress_interval": 0,
            "progress_events": ProgressBudget(1e12),
        }
    )
    async with CloudBackend(KEY, emu.url) as backend:
        listener = ComfyListener(backend, heartbeat_interval=None, listener_id="bench", **options)
        task = asyncio.create_task(listener.run())
        while listener.stats.connects < 1:
            await asyncio.sleep(0.01)
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
        expected = jobs * 20
        while listener.stats.received < expected or listener.stats.queued:
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - start
        listener.stop()
        await task
        if not paced:
            elapsed = await send_all(collector.events)
        outcome_ids = [
            comfy_events.event_id(
                backend.address, comfy_events.JOB_COMPLETED, comfy_events.resource_id("job", j)
            )
            for j in ids
        ]
    stored = await settle(lambda: stored_by_tag(tag))
    outcomes = await stored_ids(outcome_ids)
    return {
        "received": listener.stats.received,
        "sent": listener.stats.forwarded,
        "stored": stored,
        "outcomes": outcomes,
        "seconds": elapsed,
    }


async def main(jobs: int) -> None:
    from prefect.testing.utilities import prefect_test_harness

    config = EmulatorConfig(
        api_keys=[KEY], seed=3, step_duration=0, upload_duration=0, concurrency=BATCH
    )
    with prefect_test_harness(server_startup_timeout=90), EmulatorServer(config) as emu:
        results = {
            name: await burst(emu, jobs, paced)
            for name, paced in (("paced", True), ("every event", False))
        }
    print(f"burst: {jobs} jobs x 20 events = {jobs * 20} Comfy events, into one Prefect server")
    for name, r in results.items():
        lost = r["sent"] - r["stored"]
        print(
            f"{name:>11}: sent {r['sent']:6,} in {r['seconds']:5.1f}s ({r['sent'] / r['seconds']:6,.0f}/s)"
            f"  stored {r['stored']:6,}  lost {lost:6,} ({lost / r['sent']:5.1%})"
            f"  outcomes stored {r['outcomes']:,}/{jobs}"
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
