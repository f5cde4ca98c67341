"""Ingest: a burst of 20,000 Comfy events through the listener into a real Prefect server.

One Prefect server stores a few hundred events a second and silently drops what overflows its
10,000-message queue; a listener that forwarded every event at 1,000+ a second lost half of a
20,400-event burst (issue 11, item 16). Here 1,000 jobs send 19 progress events and one outcome
each, from an emulator of their own (50 jobs at a time, about 1,000-1,500 events a second), and
the listener sends into the session's Prefect server (the test harness runs the same server app
as ``prefect server start``, with its event persister and in-memory queue). Every outcome must be
stored, read back by its deterministic id, and progress must stay within its budget.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import (
    EventFilter,
    EventIDFilter,
    EventNameFilter,
    EventResourceFilter,
)
from prefect.events.schemas.events import ResourceSpecification

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.listener.forwarder import ComfyListener
from prefect_comfy.orchestration.events import names as comfy_events
from prefect_comfy.orchestration.events.budget import ProgressBudget
from prefect_comfy_emulator import EmulatorConfig, EmulatorServer
from tests.support.keys import API_KEY
from tests.support.waiting import eventually, scaled
from tests.support.workflows import slow_workflow

pytestmark = pytest.mark.prefect

JOBS = 1_000
BATCH = 50
PROGRESS_PER_JOB = 19  # EmptyImage 1 step + EmulatorSleep 17 slices of 0.05 s + SaveImage 1 step
EVENTS = JOBS * (PROGRESS_PER_JOB + 1)
PROGRESS_RATE = 50.0


@pytest.fixture(scope="module")
def burst_emulator():
    """An emulator of its own: 50 jobs at once, so that the burst is about 1,000+ events a second."""
    # A frame queue larger than the burst: on a loaded machine the listener may read slower than the
    # emulator writes for a while, and this test is about what reaches Prefect, not about the
    # emulator cutting off a slow reader (its default closes a connection 10,000 frames behind).
    config = EmulatorConfig(
        api_keys=[API_KEY],
        seed=11,
        step_duration=0,
        upload_duration=0.01,
        concurrency=BATCH,
        ws_queue_size=2 * EVENTS,
    )
    with EmulatorServer(config) as server:
        yield server


async def submit_burst(emulator: Any, tag: str) -> list[str]:
    workflow = slow_workflow(17, step_seconds=0.05)
    ids: list[str] = []
    async with httpx.AsyncClient(
        base_url=emulator.api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    ) as http:
        for _ in range(JOBS // BATCH):
            jobs = [{"workflow": workflow, "tags": [tag]} for _ in range(BATCH)]
            response = await http.post("/jobs/batch", json={"jobs": jobs})
            assert response.status_code == 202, response.text
            ids += [job["id"] for job in response.json()["jobs"]]
    return ids


async def stored_ids(ids: list[uuid.UUID]) -> set[uuid.UUID]:
    found: set[uuid.UUID] = set()
    async with get_client() as client:
        for start in range(0, len(ids), 50):
            page = await client.read_events(
                filter=EventFilter(id=EventIDFilter(id=ids[start : start + 50])), limit=50
            )
            found.update(e.id for e in page.events)
    return found


async def stored_progress(tag: str) -> int:
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=[comfy_events.JOB_PROGRESS]),
                resource=EventResourceFilter(
                    labels=ResourceSpecification({f"comfy.tag.{tag}": "true"})
                ),
            ),
            limit=1,
        )
    return page.total


async def test_a_20000_event_burst_stores_every_outcome_and_keeps_progress_in_budget(
    burst_emulator, prefect_api_url
):
    tag = f"ingest{uuid.uuid4().hex[:8]}"
    budget = ProgressBudget(PROGRESS_RATE)
    backend = CloudBackend(API_KEY, burst_emulator.url)
    listener = ComfyListener(
        backend, listener_id="ingest", heartbeat_interval=None, progress_events=budget
    )
    task = asyncio.create_task(listener.run())
    try:
        await eventually(lambda: listener.stats.connects >= 1, message="listener connected")
        started = time.monotonic()
        job_ids = await submit_burst(burst_emulator, tag)
        await eventually(
            lambda: listener.stats.received >= EVENTS,
            timeout=240,
            interval=0.2,
            message=f"{EVENTS} Comfy events received",
        )
        burst_seconds = time.monotonic() - started
        await eventually(lambda: listener.stats.queued == 0, timeout=60, message="queue empty")
        sending_seconds = time.monotonic() - started
    finally:
        listener.stop()
        await asyncio.wait_for(task, scaled(60))
        await backend.aclose()
    stats = listener.stats
    assert stats.received == EVENTS, stats
    assert stats.connects == 1 and stats.disconnects == 0, stats  # nothing was lost on the way in
    # Every event received was sent or coalesced into a newer one of its job (progress only).
    assert stats.forwarded + stats.coalesced == stats.received, stats
    progress_sent = stats.forwarded - JOBS
    # Within the budget: at most its burst capacity plus its rate over the time it was sending.
    assert progress_sent <= budget.capacity + PROGRESS_RATE * sending_seconds, (
        stats,
        sending_seconds,
    )
    assert progress_sent >= 1

    completed = [
        comfy_events.event_id(
            backend.address, comfy_events.JOB_COMPLETED, comfy_events.resource_id("job", job_id)
        )
        for job_id in job_ids
    ]

    async def every_outcome_stored() -> bool:
        return len(await stored_ids(completed)) == len(completed)

    await eventually(
        every_outcome_stored, timeout=120, interval=1.0, message=f"{JOBS} completed events stored"
    )

    async def every_progress_stored() -> bool:
        return await stored_progress(tag) == progress_sent

    await eventually(
        every_progress_stored, timeout=60, interval=1.0, message="every progress event sent stored"
    )
    print(
        f"\ningest: {EVENTS} Comfy events in {burst_seconds:.1f}s "
        f"({EVENTS / burst_seconds:.0f}/s) -> {stats.forwarded} Prefect events "
        f"({JOBS} outcomes, {progress_sent} progress, {stats.coalesced} coalesced) "
        f"in {sending_seconds:.1f}s"
    )
