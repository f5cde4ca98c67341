"""The hub on a server without a global stream: per-job streams under a cap, one shared poll.

The memory server (tests/support/memory.py), without its account-wide stream, caps open streams:
one stream above the cap raises TooManyStreams, as Comfy API v2 answers 429 ``too_many_streams``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta

import pytest

from prefect_comfy.backends.base import UnfinishedJobs
from prefect_comfy.exceptions import NotFound, ServerError
from prefect_comfy.models import Input, Job
from prefect_comfy.waiting import slots
from prefect_comfy.waiting.hub import EventHub
from tests.support.memory import STREAM_ONLY, STREAMS_ONLY, MemoryBackend, MemoryServer
from tests.support.waiting import eventually, scaled

_keys = itertools.count()


def stream_server(cap: int, retry_after: float | None = 0.3) -> MemoryServer:
    """A server with one event stream per job and a cap on open streams."""
    server = MemoryServer()
    server.stream_cap = cap
    server.retry_after = retry_after
    return server


@pytest.fixture(autouse=True)
def quick_poll(monkeypatch):
    """The poll's schedule, shortened (the same shape: x1.5 per quiet round, capped)."""
    monkeypatch.setattr(slots, "POLL_INITIAL", 0.05)
    monkeypatch.setattr(slots, "POLL_MAX", 0.2)


def make_hub(world: MemoryServer, max_streams: int = 8) -> EventHub:
    backend = MemoryBackend(world, capabilities=STREAMS_ONLY, key=f"v2fake#{next(_keys)}")
    return EventHub(backend, linger=0.05, max_streams=max_streams)


def running(world: MemoryServer, n: int) -> list[str]:
    ids = [f"job_{i:03d}" for i in range(n)]
    for jid in ids:
        world.jobs[jid] = Job(id=jid, status="running")
    return ids


def poll_loops() -> int:
    return sum(
        1 for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "JobStreams._poll_loop"
    )


async def test_200_waits_with_a_cap_of_8_share_8_streams_and_one_poll():
    world = stream_server(cap=8)
    hub = make_hub(world, max_streams=8)
    ids = running(world, 200)
    waits = [asyncio.ensure_future(hub.wait("job", jid, timeout=60)) for jid in ids]
    jobs = hub.job_streams
    assert jobs is not None
    await eventually(lambda: jobs.open_streams == 8 and jobs.polled == 192, message="8 + 192")
    assert poll_loops() == 1  # one shared loop reads all 192, not one per wait
    streamed = sorted(jid for jid in ids if world.streams_of(jid))
    assert streamed == ids[:8]  # the first come get the streams

    # Slots free up: the oldest polled jobs move onto streams (no stream for a finished job's slot
    # stays empty while jobs are polled).
    for jid in streamed:
        world.finish(jid, "completed")
    await eventually(
        lambda: len(world.opened_at) == 16 and jobs.open_streams == 8, message="refill"
    )
    assert sorted(jid for jid in ids if world.streams_of(jid)) == ids[8:16]
    assert jobs.polled == 184

    # Everything ends at once: streamed jobs by their streams, the rest by the shared poll.
    for i, jid in enumerate(ids[8:]):
        world.finish(jid, "failed" if i % 3 == 0 else "completed")
    results = await asyncio.wait_for(asyncio.gather(*waits), scaled(30))
    for i, (jid, event) in enumerate(zip(ids, results, strict=True)):
        expected = "job.failed" if i >= 8 and (i - 8) % 3 == 0 else "job.completed"
        assert (event.resource_id, event.event) == (jid, expected)
    assert world.max_open == 8
    assert len(world.refused_at) == 0
    assert jobs.reads >= 184  # the polled ones were read, …
    assert jobs.rounds < 200  # … in shared rounds, far fewer than the waits
    await eventually(lambda: jobs.open_streams == 0 and jobs.polled == 0 and poll_loops() == 0)


async def test_progress_from_a_job_stream_reaches_on_progress():
    world = stream_server(cap=8)
    hub = make_hub(world)
    (jid,) = running(world, 1)
    seen: list[float] = []
    wait = asyncio.ensure_future(
        hub.wait("job", jid, on_progress=lambda e: seen.append(e.payload["progress"]))
    )
    await eventually(lambda: world.streams_of(jid))
    world.progress(jid, 0.5)
    world.progress(jid, 0.9)
    world.finish(jid, "completed")
    assert (await asyncio.wait_for(wait, scaled(5))).event == "job.completed"
    assert seen == [0.0, 0.5, 0.9]  # the snapshot, then each progress, in order
    assert len(world.reads) == 0  # a stream needs no REST read


async def test_a_stream_that_ends_early_is_followed_by_one_read_then_streamed_again():
    world = stream_server(cap=8)
    hub = make_hub(world)
    (jid,) = running(world, 1)
    wait = asyncio.ensure_future(hub.wait("job", jid, timeout=10))
    await eventually(lambda: world.streams_of(jid))
    ended = time.monotonic()
    world.end_job_stream(jid)
    await eventually(
        lambda: len(world.opened_at) == 2 and world.streams_of(jid), message="reopened"
    )
    assert len(world.reads) == 1
    assert world.opened_at[1] - ended >= slots.REOPEN_DELAY - 0.01  # no tight reopen loop
    world.finish(jid, "completed")
    assert (await asyncio.wait_for(wait, scaled(5))).event == "job.completed"
    assert len(world.reads) == 1


async def test_a_stream_that_ends_early_on_a_finished_job_ends_the_wait_by_its_read():
    world = stream_server(cap=8)
    hub = make_hub(world)
    (jid,) = running(world, 1)
    wait = asyncio.ensure_future(hub.wait("job", jid, timeout=10))
    await eventually(lambda: world.streams_of(jid))
    world.jobs[jid] = Job(id=jid, status="failed")  # ended while the stream was going away
    world.end_job_stream(jid)
    assert (await asyncio.wait_for(wait, scaled(5))).event == "job.failed"
    assert len(world.reads) == 1
    assert len(world.opened_at) == 1


async def test_too_many_streams_lowers_the_cap_and_honours_retry_after():
    world = stream_server(cap=3, retry_after=0.4)
    hub = make_hub(world, max_streams=8)
    ids = running(world, 10)
    waits = [asyncio.ensure_future(hub.wait("job", jid, timeout=30)) for jid in ids]
    jobs = hub.job_streams
    assert jobs is not None
    await eventually(lambda: jobs.cap == 3 and jobs.polled == 7, message="cap learned")
    refused = len(world.refused_at)
    assert refused == 5  # the burst tried 8; the server held 3 and refused the other 5
    assert jobs.refusals == refused
    # Slots free at once, but no new stream is tried before Retry-After has passed.
    for jid in ids[:3]:
        world.finish(jid, "completed")
    await eventually(lambda: len(world.opened_at) == 6, message="three more streams")
    assert min(world.opened_at[3:]) >= world.refused_at[-1] + 0.4 - 0.01
    assert len(world.refused_at) == refused  # the learned cap holds: no second refusal
    assert world.max_open == 3
    for jid in ids[3:]:
        world.finish(jid, "completed")
    results = await asyncio.wait_for(asyncio.gather(*waits), scaled(10))
    assert [r.event for r in results] == ["job.completed"] * 10


async def test_inputs_and_models_end_on_their_first_read():
    world = stream_server(cap=8)
    hub = make_hub(world)
    world.inputs["in_1"] = Input(id="in_1", name="photo.png", status="ready")
    event = await asyncio.wait_for(hub.wait("input", "in_1"), scaled(5))
    assert event.event == "input.ready"
    assert len(world.reads) == 1
    assert len(world.opened_at) == 0


async def test_a_wait_for_an_unknown_job_fails_with_not_found():
    world = stream_server(cap=8)
    hub = make_hub(world)
    with pytest.raises(NotFound):
        await asyncio.wait_for(hub.wait("job", "nope"), scaled(5))


async def test_a_left_wait_closes_its_stream():
    world = stream_server(cap=8)
    hub = make_hub(world)
    (jid,) = running(world, 1)
    with pytest.raises(TimeoutError):
        await hub.wait("job", jid, timeout=0.3)
    await eventually(lambda: world.open_streams == 0, message="stream closed")


async def test_streams_that_keep_failing_leave_every_job_to_the_shared_poll():
    world = stream_server(cap=8)
    world.fail(
        "job_events", ServerError("no streams here", status_code=501, error_code="not_implemented")
    )
    hub = make_hub(world)
    ids = running(world, 5)
    waits = [asyncio.ensure_future(hub.wait("job", jid, timeout=30)) for jid in ids]
    jobs = hub.job_streams
    assert jobs is not None
    await eventually(lambda: jobs.polled == 5 and jobs.open_streams == 0, message="all polled")
    tried = jobs.streams_opened
    assert tried <= slots.FAILURES_BEFORE_POLLING + 5  # a few tries, then no more streams
    for jid in ids:
        world.finish(jid, "completed")
    results = await asyncio.wait_for(asyncio.gather(*waits), scaled(10))
    assert [r.event for r in results] == ["job.completed"] * 5
    assert jobs.streams_opened == tried


async def test_the_cap_starts_from_comfy_max_streams(monkeypatch):
    monkeypatch.setenv("COMFY_MAX_STREAMS", "2")
    world = stream_server(cap=8)
    hub = EventHub(
        MemoryBackend(world, capabilities=STREAMS_ONLY, key=f"v2fake#{next(_keys)}"), linger=0.05
    )
    assert hub.job_streams is not None and hub.job_streams.cap == 2
    ids = running(world, 4)
    waits = [asyncio.ensure_future(hub.wait("job", jid, timeout=10)) for jid in ids]
    await eventually(lambda: hub.stats["job_streams_open"] == 2 and hub.stats["polled"] == 2)
    for jid in ids:
        world.finish(jid, "completed")
    assert [e.event for e in await asyncio.wait_for(asyncio.gather(*waits), scaled(10))] == [
        "job.completed"
    ] * 4
    assert world.max_open == 2


async def test_a_server_with_a_global_stream_keeps_the_one_stream():
    world = MemoryServer()
    hub = EventHub(
        MemoryBackend(world, capabilities=STREAM_ONLY, key=f"fake#{next(_keys)}"), linger=0.05
    )
    assert hub.job_streams is None
    world.jobs["job_1"] = Job(id="job_1", status="running")
    wait = asyncio.ensure_future(hub.wait("job", "job_1"))
    await eventually(lambda: world.streams_opened == 1 and len(world.reads) == 1)
    world.emit("job.completed", "job_1", status="completed")
    assert (await asyncio.wait_for(wait, scaled(5))).event == "job.completed"


# -- refusals with a Retry-After that is no help (issue 20, #2) ----------------------------------
@pytest.mark.parametrize("retry_after", [0.0, -5.0, float("nan")])
async def test_a_refusal_with_no_real_retry_after_moves_the_job_to_the_rest_read(retry_after):
    world = stream_server(cap=0, retry_after=retry_after)  # another client holds every slot
    hub = make_hub(world)
    (jid,) = running(world, 1)
    wait = asyncio.ensure_future(hub.wait("job", jid, timeout=20))
    await eventually(lambda: len(world.reads) >= 1, message="the job read over REST")
    world.jobs[jid] = Job(id=jid, status="completed")
    assert (await asyncio.wait_for(wait, scaled(10))).event == "job.completed"
    # A floor on the pause: a handful of tries, not a tight loop of hundreds.
    assert len(world.refused_at) <= 3, len(world.refused_at)


async def test_a_huge_retry_after_is_capped(monkeypatch):
    monkeypatch.setattr(slots, "REFUSAL_CEILING", 0.3)
    world = stream_server(cap=0, retry_after=1e9)
    hub = make_hub(world)
    (jid,) = running(world, 1)
    wait = asyncio.ensure_future(hub.wait("job", jid, timeout=20))
    await eventually(lambda: len(world.refused_at) == 1)
    world.stream_cap = 1  # the slot frees: a new stream is tried after the ceiling, not in 30 years
    await eventually(lambda: world.streams_of(jid), timeout=10, message="streamed again")
    world.finish(jid, "completed")
    assert (await asyncio.wait_for(wait, scaled(10))).event == "job.completed"


async def test_a_malformed_read_fails_the_wait_at_once():
    """A read the server answers with something that is not the job (issue 20, #13)."""
    from prefect_comfy.exceptions import ComfyProtocolError

    world = stream_server(cap=0, retry_after=None)  # no stream: the job is read
    hub = make_hub(world)
    (jid,) = running(world, 1)

    world.fail("get_job", ComfyProtocolError("Comfy API v2 answered a job without a string 'id'"))
    with pytest.raises(ComfyProtocolError):
        await asyncio.wait_for(hub.wait("job", jid, timeout=30), scaled(5))
    assert len(world.reads) == 1


class ListingBackend(MemoryBackend):
    """The memory server's per-job streams, and a listing of its unfinished jobs, 100 a page (as
    the v2 backend lists with ``status=queued,running,canceling``); each listing is counted in
    ``server.lists`` with its pages."""

    async def list_unfinished(self, *, max_requests=None):
        with self.server.lock:
            unfinished = [job for job in self.server.jobs.values() if not job.is_terminal]
        pages = max(1, -(-len(unfinished) // 100))
        budget = pages if max_requests is None else min(pages, max_requests)
        self.server.lists.append({"unfinished": True, "pages": budget})
        await asyncio.sleep(0)
        return UnfinishedJobs(unfinished[: budget * 100], complete=budget == pages, requests=budget)


def listing_hub(world: MemoryServer, max_streams: int) -> EventHub:
    backend = ListingBackend(world, capabilities=STREAMS_ONLY, key=f"v2list#{next(_keys)}")
    return EventHub(backend, linger=0.05, max_streams=max_streams)


def list_pages(world: MemoryServer) -> int:
    return sum(entry["pages"] for entry in world.lists)


def queued(world: MemoryServer, n: int, start: int = 0) -> list[str]:
    ids = [f"job_{i:03d}" for i in range(start, start + n)]
    for i, jid in enumerate(ids):
        created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=start + i)
        world.jobs[jid] = Job(id=jid, status="pending", created_at=created)
    return ids


async def test_the_shared_poll_lists_once_a_round_and_reads_only_the_jobs_that_ended():
    world = stream_server(cap=8)
    hub = listing_hub(world, max_streams=8)
    ids = queued(world, 200)
    waits = [asyncio.ensure_future(hub.wait("job", jid, timeout=60)) for jid in ids]
    jobs = hub.job_streams
    assert jobs is not None
    await eventually(lambda: jobs.open_streams == 8 and jobs.polled == 192, message="8 + 192")
    await eventually(lambda: jobs.rounds >= 3, message="three rounds")
    assert len(world.reads) == 0  # 192 polled jobs, and not one read: each round is one listing …
    assert jobs.lists >= 4 and jobs.list_requests == 2 * jobs.lists  # … of two pages
    assert list_pages(world) == jobs.list_requests

    # Five polled jobs end: the next round lists, misses them, and reads those five only.
    ended = [jid for jid in ids if not world.streams_of(jid)][:5]
    for jid in ended:
        world.finish(jid, "completed")
    done = await asyncio.wait_for(
        asyncio.gather(*(w for w, jid in zip(waits, ids, strict=True) if jid in ended)), scaled(10)
    )
    assert [e.event for e in done] == ["job.completed"] * 5
    assert len(world.reads) == 5
    for jid in ids:
        if not world.jobs[jid].is_terminal:
            world.finish(jid, "completed")
    await asyncio.wait_for(asyncio.gather(*waits), scaled(30))
    assert not world.refused_at


async def test_a_freed_stream_goes_to_the_polled_job_with_the_most_progress():
    world = stream_server(cap=2)
    hub = listing_hub(world, max_streams=2)
    ids = queued(world, 6)  # job_000 and job_001 get the streams (the first tracked)
    waits = [asyncio.ensure_future(hub.wait("job", jid, timeout=60)) for jid in ids]
    jobs = hub.job_streams
    assert jobs is not None
    await eventually(lambda: jobs.open_streams == 2 and jobs.polled == 4, message="2 + 4")
    assert {jid for jid in ids if world.streams_of(jid)} == {"job_000", "job_001"}
    # The newest polled job runs furthest; an older one runs less; the others are queued.
    world.jobs["job_005"] = world.jobs["job_005"].model_copy(
        update={"status": "running", "progress": 80.0}
    )
    world.jobs["job_003"] = world.jobs["job_003"].model_copy(
        update={"status": "running", "progress": 20.0}
    )
    # Both running polled jobs take the streams of the two queued streamed jobs, most progress
    # first (a running polled job takes the stream of a job that is only queued) …
    await eventually(
        lambda: world.streams_of("job_005") and world.streams_of("job_003"), message="swapped"
    )
    assert jobs.preempted == 2
    assert not world.streams_of("job_000") and not world.streams_of("job_001")
    # … and a freed slot goes to the oldest queued job (a queue runs first in first out).
    world.finish("job_005", "completed")
    await eventually(lambda: world.streams_of("job_000"), message="job_000 streamed")
    assert not world.streams_of("job_001") and not world.streams_of("job_002")
    for jid in ids:
        if not world.jobs[jid].is_terminal:
            world.finish(jid, "completed")
    results = await asyncio.wait_for(asyncio.gather(*waits), scaled(30))
    assert [e.event for e in results] == ["job.completed"] * 6
    assert not world.refused_at and world.max_open == 2


async def test_without_a_listing_a_freed_slot_still_goes_to_the_most_progress():
    world = stream_server(cap=1)
    hub = make_hub(world, max_streams=1)  # reads each polled job (no listing)
    ids = queued(world, 4)
    world.jobs["job_002"] = world.jobs["job_002"].model_copy(
        update={"status": "running", "progress": 60.0}
    )
    waits = [asyncio.ensure_future(hub.wait("job", jid, timeout=60)) for jid in ids]
    jobs = hub.job_streams
    assert jobs is not None
    await eventually(lambda: jobs.open_streams == 1 and jobs.reads >= 3, message="read once")
    assert world.streams_of("job_000")
    world.finish("job_000", "completed")
    await eventually(lambda: world.streams_of("job_002"), message="the running job next")
    for jid in ids:
        if not world.jobs[jid].is_terminal:
            world.finish(jid, "completed")
    await asyncio.wait_for(asyncio.gather(*waits), scaled(30))
