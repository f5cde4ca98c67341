"""Unit tests of :mod:`prefect_comfy.listener.follow` on the memory server without its account-wide
stream, as Comfy API v2 (one module).

The real-socket tests are in ``tests/integration/test_listener_v2.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest

from prefect_comfy.exceptions import (
    AuthenticationError,
    ComfyAPIError,
    ComfyProtocolError,
    WebSocketAuthError,
)
from prefect_comfy.listener import follow
from prefect_comfy.listener.follow import JobFollower
from prefect_comfy.models import ComfyEvent
from tests.support.memory import PER_JOB_ONLY, MemoryBackend
from tests.support.waiting import eventually, scaled


def v2() -> MemoryBackend:
    """A memory server without an account-wide stream (as Comfy API v2), listing pages of 2."""
    backend = MemoryBackend(capabilities=PER_JOB_ONLY)
    backend.server.page_size = 2
    return backend


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
    backend = v2()
    server = backend.server
    for i in range(5):
        server.add_job(f"old{i}", "completed")  # ended before the start: the cursor's business
    server.add_job("running")
    run = Run(JobFollower(backend, max_streams=1))
    await eventually(lambda: run.connects == 1, message="connected")
    assert run.follower.mode == "listing" and run.follower.following == 1
    server.add_job("quick", "failed")  # started and ended between two rounds
    server.add_job("later")
    await eventually(lambda: run.follower.following == 2, message="the new job followed")
    server.finish("running")
    server.finish("later", "cancelled")
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
    limits = [c.get("limit") for c in server.lists]
    assert limits[0] == 100 and limits[-1] == follow.QUIET_PAGE


async def test_without_listing_it_follows_the_submitted_jobs_only() -> None:
    backend = v2()
    server = backend.server
    server.fail("list_jobs_page", ComfyAPIError("not implemented", status_code=501))
    server.add_job("mine")
    server.add_job("someone-elses")
    asked: list[datetime] = []

    async def submitted(since: datetime) -> list[tuple[str, datetime]]:
        asked.append(since)
        return [("mine", datetime.now(UTC))]

    run = Run(JobFollower(backend, submitted=submitted))
    await eventually(lambda: run.follower.following == 1, message="the submitted job followed")
    assert run.follower.mode == "submitted"
    assert "listing not available (501)" in run.follower.describe()
    server.finish("mine")
    server.finish("someone-elses")
    await eventually(lambda: run.ends(), message="its end")
    rounds = run.follower.rounds
    await eventually(lambda: run.follower.rounds >= rounds + 3, message="more rounds")
    await run.stop()
    assert run.ends() == [("job.completed", "mine")]
    assert len(server.lists) == 1  # asked once; after the 501 only Prefect's events are read
    assert asked[0] < datetime.now(UTC) - follow.SUBMITTED_LOOKBACK


async def test_a_refused_key_stops_the_listener() -> None:
    backend = v2()
    server = backend.server
    server.fail("list_jobs_page", AuthenticationError("bad key", status_code=401))
    with pytest.raises(WebSocketAuthError):
        async for _ in JobFollower(backend).events():
            pass


async def test_a_failed_round_is_a_disconnect_and_the_next_good_one_a_reconnect() -> None:
    backend = v2()
    server = backend.server
    server.add_job("running")
    run = Run(JobFollower(backend))
    await eventually(lambda: run.connects == 1, message="connected")
    server.fail("list_jobs_page", ComfyAPIError("down", status_code=503))
    await eventually(lambda: run.disconnects == 1, message="a disconnect")
    server.heal("list_jobs_page")
    await eventually(lambda: run.connects == 2, message="a reconnect")
    server.finish("running")
    await eventually(lambda: run.ends(), message="the end")
    await run.stop()
    assert run.ends() == [("job.completed", "running")]


async def test_without_a_job_pattern_nothing_is_followed() -> None:
    backend = v2()
    server = backend.server
    server.add_job("running")
    run = Run(JobFollower(backend), patterns=("input.ready",))
    await eventually(lambda: run.connects == 1, message="connected")
    await run.stop()
    assert len(server.lists) == 0 and run.follower.following == 0


async def test_a_server_down_at_the_start_is_an_error_and_no_disconnect() -> None:
    backend = v2()
    server = backend.server
    server.fail("list_jobs_page", ComfyAPIError("unavailable", status_code=503))
    run = Run(JobFollower(backend))
    with pytest.raises(ComfyAPIError):
        await asyncio.wait_for(run.task, scaled(5))
    assert (run.connects, run.disconnects) == (0, 0)


async def test_a_listener_slower_than_the_progress_drops_progress_never_an_outcome() -> None:
    backend = v2()
    server = backend.server
    server.snapshot_first = False  # the burst is all the progress there is
    burst = 2_500
    follower = JobFollower(backend)
    stream = follower.events(("*",))
    server.add_job("j1", "completed")  # the baseline leaves it to the cursor: not followed
    first = asyncio.ensure_future(stream.__anext__())
    await eventually(lambda: server.lists, timeout=5, message="the baseline round")
    server.add_job("j2")  # running: followed, its stream says 2,500 snapshots at once
    follower.follow(["j2"])
    await eventually(lambda: server.streams_of("j2"), timeout=5, message="j2's stream")
    for step in range(burst):
        server.progress("j2", step)
    dropped = burst - follow.MAX_QUEUED_PROGRESS
    await eventually(lambda: follower.progress_dropped == dropped, timeout=5, message="the burst")
    server.finish("j2")
    await eventually(lambda: follower.following == 0, timeout=5, message="j2's end queued")
    events = [await first]
    while len(events) < 1 + follow.MAX_QUEUED_PROGRESS:
        events.append(await asyncio.wait_for(stream.__anext__(), scaled(5)))
    await stream.aclose()
    progress = [e for e in events if e.event == "job.progress"]
    assert len(progress) == follow.MAX_QUEUED_PROGRESS
    assert follower.progress_dropped == dropped
    assert [(e.event, e.resource_id) for e in events[-1:]] == [("job.completed", "j2")]


class StuckCursor(MemoryBackend):
    """A job list whose ``next_cursor`` never changes (issue 20, #3)."""

    async def list_jobs_page(self, cursor: str | None = None, **filters: Any) -> tuple[list, Any]:
        self.server.lists.append({"cursor": cursor, **filters})
        return [], "stuck"


async def test_a_first_round_on_a_cursor_that_never_changes_ends_with_an_error() -> None:
    backend = StuckCursor(capabilities=PER_JOB_ONLY)
    server = backend.server
    run = Run(JobFollower(backend))
    with pytest.raises(ComfyProtocolError, match="repeats the cursor"):
        await asyncio.wait_for(run.task, scaled(5))
    assert len(server.lists) <= 3


async def test_an_end_first_seen_after_the_fact_is_marked_for_the_prefect_check() -> None:
    """A job found through Prefect (501) already ended may have had its outcome sent before (an
    HA peer, a restart): the listener checks it with Prefect. A job that listing shows as new is
    live, whatever its state, and is not checked (issue 20, point 7)."""
    backend = v2()
    server = backend.server
    server.fail("list_jobs_page", ComfyAPIError("not implemented", status_code=501))
    server.add_job("ended-while-down", "completed")

    async def submitted(since: datetime) -> list[tuple[str, datetime]]:
        return [("ended-while-down", datetime.now(UTC))]

    run = Run(JobFollower(backend, submitted=submitted))
    await eventually(lambda: run.ends(), message="its end")
    await run.stop()
    assert run.follower.first_seen_ended(run.events[-1])

    backend = v2()
    server = backend.server
    server.add_job("running")
    run = Run(JobFollower(backend))
    await eventually(lambda: run.connects == 1, message="connected")
    server.add_job("quick", "failed")  # started and ended between two rounds: live
    await eventually(lambda: run.ends(), message="its end")
    await run.stop()
    assert run.ends() == [("job.failed", "quick")]
    assert not run.follower.first_seen_ended(run.events[-1])
    progress = ComfyEvent(event="job.progress", payload={"id": "other", "progress": 5})
    assert not run.follower.first_seen_ended(progress)
