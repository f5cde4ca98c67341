"""Recovered outcomes that Prefect already stores are not sent again (issue 20, point 7).

`StoredEvents` on a fake Prefect client (its ``read_events``); the listener's reconciliation and
catch-up on the memory server, with a fake `StoredEvents`.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect_comfy.listener.catchup import catch_up
from prefect_comfy.listener.stored import BATCH_SIZE, WINDOW_SLACK, StoredEvents
from prefect_comfy.models import ComfyEvent, Job
from prefect_comfy.orchestration.events import names as comfy_events
from tests.support.listener_fakes import FakeEventsClient, make_listener
from tests.support.memory import MemoryBackend

NOW = datetime.now(UTC)


class Page:
    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.next_page = None


class FakePrefect:
    """A Prefect client whose events API stores ``stored`` (ids), and records each filter."""

    def __init__(self, stored: set[uuid.UUID], fail: int = 0) -> None:
        self.stored = stored
        self.filters: list[Any] = []
        self.limits: list[int] = []
        self.fail = fail

    def __call__(self) -> FakePrefect:
        return self

    async def __aenter__(self) -> FakePrefect:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    async def read_events(self, filter: Any, limit: int) -> Page:
        self.filters.append(filter)
        self.limits.append(limit)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("prefect.invalid unreachable")
        return Page([type("E", (), {"id": i})() for i in filter.id.id if i in self.stored])


def ids(n: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(n)]


async def test_asks_in_batches_within_the_events_own_window():
    every = ids(120)
    prefect = FakePrefect(set(every[::3]))
    checker = StoredEvents(prefect)
    old = NOW - timedelta(days=3)  # older than the events API's default window of a day
    candidates = [(i, old + timedelta(minutes=n)) for n, i in enumerate(every)]

    found = await checker.stored(candidates)

    assert found == set(every[::3])
    assert [len(f.id.id) for f in prefect.filters] == [BATCH_SIZE, BATCH_SIZE, 20]
    assert all(limit <= BATCH_SIZE for limit in prefect.limits)
    window = prefect.filters[0].occurred
    assert window.since == old - WINDOW_SLACK
    assert window.until >= NOW + WINDOW_SLACK - timedelta(seconds=5)


async def test_a_caller_time_widens_the_window_and_unknown_times_do_not_narrow_it():
    prefect = FakePrefect(set())
    watermark = NOW - timedelta(hours=5)
    await StoredEvents(prefect).stored([(uuid.uuid4(), None)], since=watermark)
    assert prefect.filters[0].occurred.since == watermark - WINDOW_SLACK


async def test_an_unreadable_events_api_counts_as_none_stored_and_is_logged_once(caplog):
    every = ids(3)
    prefect = FakePrefect(set(every), fail=2)
    checker = StoredEvents(prefect)
    with caplog.at_level(logging.DEBUG, logger="prefect_comfy.listener.stored"):
        assert await checker.stored([(i, NOW) for i in every]) == set()
        assert await checker.stored([(i, NOW) for i in every]) == set()
        assert checker.failing
        assert await checker.stored([(i, NOW) for i in every]) == set(every)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "sending them anyway" in warnings[0].getMessage()
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert not checker.failing


def completed_id(job_id: str, address: str) -> uuid.UUID:
    done = ComfyEvent(event="job.completed", payload={"id": job_id})
    return comfy_events.event_id_of(done, address=address)


async def test_reconciliation_skips_the_outcomes_prefect_already_stores():
    backend, client = MemoryBackend(), FakeEventsClient()
    prefect = FakePrefect({completed_id("job_sent_by_peer", backend.address)})
    listener = make_listener(backend, client, stored_events=StoredEvents(prefect))
    for job_id in ("job_sent_by_peer", "job_unsent"):
        listener._in_flight.remember(("job", job_id), "running")
        backend.server.add_job(job_id, "completed", completed_at=NOW)

    assert await listener.reconcile() == 1

    assert listener._sender.pending_resources() == [("job", "job_unsent")]  # queued to be sent
    assert listener.stats.already_stored == 1
    assert listener.stats.reconciled == 1
    assert ("job", "job_sent_by_peer") in listener._ended  # the next catch-up skips it locally
    # One request, with the ids of both outcomes, in a window around their completion.
    (asked,) = prefect.filters
    assert set(asked.id.id) == {
        completed_id("job_sent_by_peer", backend.address),
        completed_id("job_unsent", backend.address),
    }
    assert asked.occurred.since <= NOW - WINDOW_SLACK


async def test_catch_up_forwards_only_what_the_filter_leaves():
    class Listed:
        def __init__(self, job: Job) -> None:
            self.kind, self.resource, self.ended = "job", job, job.completed_at

    class ListingBackend(MemoryBackend):
        async def recent(self, since: datetime, limit: int) -> list[Listed]:
            # j0 twice (a page shift): it is forwarded once
            ended = [Job(id=f"j{n}", status="completed", completed_at=NOW) for n in (0, 1, 2, 0)]
            return [Listed(job) for job in ended]

    forwarded: list[str] = []
    asked: list[tuple[list[str], datetime | None]] = []

    async def forward(event: ComfyEvent) -> None:
        forwarded.append(event.resource_id)

    async def unsent(events: list[ComfyEvent], since: datetime | None) -> list[ComfyEvent]:
        asked.append(([e.resource_id for e in events], since))
        return [e for e in events if e.resource_id != "j1"]

    since = NOW - timedelta(hours=1)
    found = await catch_up(
        ListingBackend(),
        since,
        forward=forward,
        track=lambda *entry: None,
        already=lambda kind, rid: rid == "j2",
        unsent=unsent,
    )
    assert asked == [(["j0", "j1"], since)]  # what this run sent already is not even asked
    assert forwarded == ["j0"] and found == 1
