"""Unit tests of :mod:`prefect_comfy.listener.follow` on an in-memory v2 server (one module).

The real-socket tests are in ``tests/integration/test_listener_v2.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from prefect_comfy.backends.base import Capabilities
from prefect_comfy.exceptions import (
    AuthenticationError,
    ComfyAPIError,
    ComfyProtocolError,
    NotFound,
    WebSocketAuthError,
)
from prefect_comfy.listener import follow
from prefect_comfy.listener.follow import JobFollower
from prefect_comfy.models import ComfyEvent, Job
from tests.support.waiting import eventually, scaled

END = {"completed": "job.completed", "failed": "job.failed", "cancelled": "job.cancelled"}


class FakeV2:
    """Jobs in memory; listing pages of 2, newest first; a job's stream yields its end."""

    address = "http://v2.invalid"
    kind = "v2"
    capabilities = Capabilities(per_job_streams=True, list_jobs=True)

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.list_error: Exception | None = None
        self.lists = 0
        self.limits: list[int] = []
        self._ended: dict[str, asyncio.Event] = {}

    def add(self, job_id: str, status: str = "running") -> None:
        self.jobs[job_id] = Job(id=job_id, status=status)
        self._ended[job_id] = asyncio.Event()
        if status in END:
            self._ended[job_id].set()

    def end(self, job_id: str, status: str = "completed") -> None:
        self.jobs[job_id] = Job(id=job_id, status=status)
        self._ended[job_id].set()

    async def list_jobs_page(
        self, cursor: str | None = None, *, limit: int = 100
    ) -> tuple[list[Job], Any]:
        self.lists += 1
        self.limits.append(limit)
        if self.list_error is not None:
            raise self.list_error
        newest = list(reversed(self.jobs.values()))
        start = int(cursor or 0)
        more = start + 2 < len(newest)
        return newest[start : start + 2], str(start + 2) if more else None

    async def get_job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise NotFound("no such job", status_code=404)
        return self.jobs[job_id]

    async def job_events(self, job_id: str) -> AsyncIterator[ComfyEvent]:
        if job_id not in self.jobs:
            raise NotFound("no such job", status_code=404)
        await self._ended[job_id].wait()
        job = self.jobs[job_id]
        yield ComfyEvent(event=END[job.status], payload=job.model_dump(mode="json"))


class Run:
    """The follower's ``events()`` consumed in a task, with its connects and disconnects counted."""

    def __init__(self, follower: JobFollower, patterns: tuple[str, ...] = ("*",)) -> None:
        self.follower = follower
        self.events: list[ComfyEvent] = []
        self.connects = self.disconnects = 0
        self.task = asyncio.create_task(self._consume(patterns))

    async def _connect(self) -> None:
        self.connects += 1

    async def _disconnect(self) -> None:
        self.disconnects += 1

    async def _consume(self, patterns: tuple[str, ...]) -> None:
        stream = self.follower.events(
            patterns, on_connect=self._connect, on_disconnect=self._disconnect
        )
        async for event in stream:
            self.events.append(event)

    def ends(self) -> list[tuple[str, str | None]]:
        return [(e.event, e.resource_id) for e in self.events if e.event != "job.progress"]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture(autouse=True)
def quick_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "DISCOVER_INITIAL", 0.02)
    monkeypatch.setattr(follow, "DISCOVER_MAX", 0.05)


async def test_listing_follows_new_jobs_and_sends_each_end_once() -> None:
    server = FakeV2()
    for i in range(5):
        server.add(f"old{i}", "completed")  # ended before the start: the cursor's business
    server.add("running")
    run = Run(JobFollower(server, max_streams=1))
    await eventually(lambda: run.connects == 1, message="connected")
    assert run.follower.mode == "listing" and run.follower.following == 1
    server.add("quick", "failed")  # started and ended between two rounds
    server.add("later")
    await eventually(lambda: run.follower.following == 2, message="the new job followed")
    server.end("running")
    server.end("later", "cancelled")
    await eventually(lambda: len(run.ends()) == 3, message="three ends")
    rounds = run.follower.rounds
    await eventually(lambda: run.follower.rounds >= rounds + 3, message="more rounds")
    await run.stop()
    assert sorted(run.ends()) == [
        ("job.cancelled", "later"),
        ("job.completed", "running"),
        ("job.failed", "quick"),
    ]
    assert run.follower.following == 0
    assert server.limits[0] == 100 and server.limits[-1] == follow.QUIET_PAGE


async def test_without_listing_it_follows_the_submitted_jobs_only() -> None:
    server = FakeV2()
    server.list_error = ComfyAPIError("not implemented", status_code=501)
    server.add("mine")
    server.add("someone-elses")
    asked: list[datetime] = []

    async def submitted(since: datetime) -> list[tuple[str, datetime]]:
        asked.append(since)
        return [("mine", datetime.now(UTC))]

    run = Run(JobFollower(server, submitted=submitted))
    await eventually(lambda: run.follower.following == 1, message="the submitted job followed")
    assert run.follower.mode == "submitted"
    assert "listing not available (501)" in run.follower.describe()
    server.end("mine")
    server.end("someone-elses")
    await eventually(lambda: run.ends(), message="its end")
    rounds = run.follower.rounds
    await eventually(lambda: run.follower.rounds >= rounds + 3, message="more rounds")
    await run.stop()
    assert run.ends() == [("job.completed", "mine")]
    assert server.lists == 1  # asked once; after the 501 only Prefect's events are read
    assert asked[0] < datetime.now(UTC) - follow.SUBMITTED_LOOKBACK


async def test_a_refused_key_stops_the_listener() -> None:
    server = FakeV2()
    server.list_error = AuthenticationError("bad key", status_code=401)
    with pytest.raises(WebSocketAuthError):
        async for _ in JobFollower(server).events():
            pass


async def test_a_failed_round_is_a_disconnect_and_the_next_good_one_a_reconnect() -> None:
    server = FakeV2()
    server.add("running")
    run = Run(JobFollower(server))
    await eventually(lambda: run.connects == 1, message="connected")
    server.list_error = ComfyAPIError("down", status_code=503)
    await eventually(lambda: run.disconnects == 1, message="a disconnect")
    server.list_error = None
    await eventually(lambda: run.connects == 2, message="a reconnect")
    server.end("running")
    await eventually(lambda: run.ends(), message="the end")
    await run.stop()
    assert run.ends() == [("job.completed", "running")]


async def test_without_a_job_pattern_nothing_is_followed() -> None:
    server = FakeV2()
    server.add("running")
    run = Run(JobFollower(server), patterns=("input.ready",))
    await eventually(lambda: run.connects == 1, message="connected")
    await run.stop()
    assert server.lists == 0 and run.follower.following == 0


async def test_a_server_down_at_the_start_is_an_error_and_no_disconnect() -> None:
    server = FakeV2()
    server.list_error = ComfyAPIError("unavailable", status_code=503)
    run = Run(JobFollower(server))
    with pytest.raises(ComfyAPIError):
        await asyncio.wait_for(run.task, scaled(5))
    assert (run.connects, run.disconnects) == (0, 0)


class Chatty(FakeV2):
    """A job's stream says ``burst`` progress snapshots at once, then its end."""

    burst = 2_500

    async def job_events(self, job_id: str) -> AsyncIterator[ComfyEvent]:
        for step in range(self.burst):
            yield ComfyEvent(event="job.progress", payload={"id": job_id, "value": step})
        async for end in super().job_events(job_id):
            yield end


async def test_a_listener_slower_than_the_progress_drops_progress_never_an_outcome() -> None:
    backend = Chatty()
    follower = JobFollower(backend)
    stream = follower.events(("*",))
    backend.add("j1", "completed")  # the baseline leaves it to the cursor: not followed
    first = asyncio.ensure_future(stream.__anext__())
    await eventually(lambda: backend.lists >= 1, timeout=5, message="the baseline round")
    backend.add("j2")  # running: followed, its stream says 2,500 snapshots at once
    follower.follow(["j2"])
    dropped = Chatty.burst - follow.MAX_QUEUED_PROGRESS
    await eventually(lambda: follower.progress_dropped == dropped, timeout=5, message="the burst")
    backend.end("j2")
    await eventually(lambda: follower.following == 0, timeout=5, message="j2's end queued")
    events = [await first]
    while len(events) < 1 + follow.MAX_QUEUED_PROGRESS:
        events.append(await asyncio.wait_for(stream.__anext__(), scaled(5)))
    await stream.aclose()
    progress = [e for e in events if e.event == "job.progress"]
    assert len(progress) == follow.MAX_QUEUED_PROGRESS
    assert follower.progress_dropped == dropped
    assert [(e.event, e.resource_id) for e in events[-1:]] == [("job.completed", "j2")]


class StuckCursor(FakeV2):
    """A job list whose ``next_cursor`` never changes (issue 20, #3)."""

    async def list_jobs_page(
        self, cursor: str | None = None, *, limit: int = 100
    ) -> tuple[list[Job], Any]:
        self.lists += 1
        return [], "stuck"


async def test_a_first_round_on_a_cursor_that_never_changes_ends_with_an_error() -> None:
    server = StuckCursor()
    run = Run(JobFollower(server))
    with pytest.raises(ComfyProtocolError, match="repeats the cursor"):
        await asyncio.wait_for(run.task, scaled(5))
    assert server.lists <= 3


async def test_an_end_first_seen_after_the_fact_is_marked_for_the_prefect_check() -> None:
    """A job found through Prefect (501) already ended may have had its outcome sent before (an
    HA peer, a restart): the listener checks it with Prefect. A job that listing shows as new is
    live, whatever its state, and is not checked (issue 20, point 7)."""
    server = FakeV2()
    server.list_error = ComfyAPIError("not implemented", status_code=501)
    server.add("ended-while-down", "completed")

    async def submitted(since: datetime) -> list[tuple[str, datetime]]:
        return [("ended-while-down", datetime.now(UTC))]

    run = Run(JobFollower(server, submitted=submitted))
    await eventually(lambda: run.ends(), message="its end")
    await run.stop()
    assert run.follower.first_seen_ended(run.events[-1])

    server = FakeV2()
    server.add("running")
    run = Run(JobFollower(server))
    await eventually(lambda: run.connects == 1, message="connected")
    server.add("quick", "failed")  # started and ended between two rounds: live
    await eventually(lambda: run.ends(), message="its end")
    await run.stop()
    assert run.ends() == [("job.failed", "quick")]
    assert not run.follower.first_seen_ended(run.events[-1])
    progress = ComfyEvent(event="job.progress", payload={"id": "other", "progress": 5})
    assert not run.follower.first_seen_ended(progress)
