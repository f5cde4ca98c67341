"""The listener's paced queue on a fake clock: outcomes first, progress coalesced, the pace kept."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prefect.events import Event

from prefect_comfy.exceptions import ComfyConfigError
from prefect_comfy.listener.pacing import BEHIND_AFTER, PacedQueue
from prefect_comfy.listener.sender import PrefectSender, events_per_second_from_env
from prefect_comfy.listener.stats import ListenerStats
from prefect_comfy.orchestration.events.budget import ProgressBudget
from tests.support.waiting import eventually, scaled


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def event(name: str, job: str = "j1", progress: float | None = None) -> Event:
    return Event(
        event=f"comfy.{name}",
        resource={"prefect.resource.id": f"comfy.{name.split('.')[0]}.{job}"},
        payload={} if progress is None else {"progress": progress},
    )


def queue(clock: Clock, **kw) -> tuple[PacedQueue, ListenerStats, ProgressBudget]:
    stats = ListenerStats()
    budget = kw.pop("budget", None) or ProgressBudget(1_000, clock=clock)
    kw.setdefault("events_per_second", 0)
    return PacedQueue(stats, progress_events=budget, clock=clock, **kw), stats, budget


def drain_now(q: PacedQueue) -> list[Event]:
    out = []
    while True:
        item, _ = q.next()
        if item is None:
            return out
        out.append(item.event)


def test_outcomes_jump_the_queue_ahead_of_progress():
    clock = Clock()
    q, _, _ = queue(clock)
    q.put_nowait(event("job.progress", "a", 10))
    q.put_nowait(event("job.progress", "b", 10))
    q.put_nowait(event("input.ready", "i1"))
    q.put_nowait(event("job.completed", "c"))
    assert [e.event for e in drain_now(q)] == [
        "comfy.input.ready",
        "comfy.job.completed",
        "comfy.job.progress",
        "comfy.job.progress",
    ]


async def test_a_heartbeat_goes_first_and_never_waits():
    clock = Clock()
    q, _, _ = queue(clock, queue_size=2)
    await q.put(event("job.completed", "a"))
    await q.put(event("job.completed", "b"))
    await asyncio.wait_for(q.put(event("listener.heartbeat", "x"), counted=False), scaled(1))
    assert [e.event for e in drain_now(q)] == [
        "comfy.listener.heartbeat",
        "comfy.job.completed",
        "comfy.job.completed",
    ]


def test_progress_is_coalesced_per_job_newest_wins_and_once_per_interval():
    clock = Clock()
    q, stats, _ = queue(clock, progress_interval=1.0)
    for p in (10, 20, 30):
        q.put_nowait(event("job.progress", "a", p))
    (sent,) = drain_now(q)
    assert sent.payload["progress"] == 30 and stats.coalesced == 2
    q.put_nowait(event("job.progress", "a", 40))
    item, wait = q.next()
    assert item is None and wait == pytest.approx(1.0)  # not before the interval
    clock.now += 1.0
    assert [e.payload["progress"] for e in drain_now(q)] == [40]


def test_an_outcome_discards_its_jobs_pending_progress_and_later_progress():
    clock = Clock()
    q, stats, _ = queue(clock)
    q.put_nowait(event("job.progress", "a", 90))
    q.put_nowait(event("job.progress", "b", 50))
    q.put_nowait(event("job.completed", "a"))
    q.put_nowait(event("job.progress", "a", 100))  # late, after the outcome
    sent = drain_now(q)
    assert [(e.event, e.resource.id) for e in sent] == [
        ("comfy.job.completed", "comfy.job.a"),
        ("comfy.job.progress", "comfy.job.b"),
    ]
    assert stats.coalesced == 2


def test_progress_stays_within_its_budget_and_outcomes_do_not_touch_it():
    clock = Clock()
    budget = ProgressBudget(2, clock=clock)
    q, _, _ = queue(clock, budget=budget, progress_interval=0)
    for job in "abcde":
        q.put_nowait(event("job.progress", job, 1))
    for job in "vwxyz":
        q.put_nowait(event("job.failed", job))
    sent = drain_now(q)
    assert [e.event for e in sent].count("comfy.job.failed") == 5
    assert [e.event for e in sent].count("comfy.job.progress") == 2  # 2 in any one second
    _, wait = q.next()
    assert wait == pytest.approx(1.0)  # the sliding window: the next when the first is 1 s old
    clock.now += 1.0
    assert len(drain_now(q)) == 2


def test_a_budget_of_zero_sends_no_progress():
    clock = Clock()
    q, stats, _ = queue(clock, budget=ProgressBudget(0, clock=clock))
    q.put_nowait(event("job.progress", "a", 1))
    assert drain_now(q) == [] and len(q) == 0 and stats.coalesced == 1


def test_the_pace_holds_every_kind_of_event():
    clock = Clock()
    q, _, _ = queue(clock, events_per_second=2)  # at most 2 in any one second
    for job in "abc":
        q.put_nowait(event("job.completed", job))
    assert len(drain_now(q)) == 2
    item, wait = q.next()
    assert item is None and wait == pytest.approx(1.0)
    clock.now += 1.01
    assert len(drain_now(q)) == 1


def test_backlog_says_the_depth_and_the_oldest_age_and_when_it_is_behind():
    clock = Clock()
    q, stats, _ = queue(clock, events_per_second=1)
    q.put_nowait(event("job.completed", "a"))
    q.put_nowait(event("job.completed", "b"))
    assert stats.queued == 2
    clock.now += BEHIND_AFTER + 1
    backlog = q.backlog()
    assert backlog.queued == 2 and backlog.oldest_pending_seconds == pytest.approx(6.0)
    assert backlog.behind
    assert q.pending_resources() == [("job", "a"), ("job", "b")]


async def test_put_waits_while_the_outcome_queue_is_full_but_progress_never_waits():
    clock = Clock()
    q, _, _ = queue(clock, queue_size=1)
    await q.put(event("job.completed", "a"))
    await asyncio.wait_for(q.put(event("job.progress", "b", scaled(1))), scaled(1))
    blocked = asyncio.create_task(q.put(event("job.completed", "c")))
    await asyncio.sleep(0)
    assert not blocked.done()
    q.next()
    await asyncio.wait_for(blocked, scaled(1))


async def test_the_sender_warns_when_behind_and_when_caught_up(caplog):
    class SlowClient:
        def __init__(self) -> None:
            self.gate = asyncio.Event()
            self.sent: list[Event] = []

        async def emit(self, e: Event) -> None:
            await self.gate.wait()
            self.sent.append(e)

    caplog.set_level(logging.INFO, logger="prefect_comfy.listener.sender")
    clock = Clock()
    sender = PrefectSender(ListenerStats(), drain_timeout=5, events_per_second=0)
    sender.queue._clock = clock
    client = SlowClient()
    task = asyncio.create_task(sender.send_loop(client))
    await sender.put(event("job.completed", "a"))
    await sender.put(event("job.completed", "b"))
    await eventually(lambda: sender._in_hand is not None, message="sending a")
    assert sender.pending_resources() == [("job", "b"), ("job", "a")]  # "a" is being sent
    clock.now += BEHIND_AFTER + 1
    assert sender.backlog().behind
    client.gate.set()
    await sender.drain(task)
    assert [e.resource.id for e in client.sent] == ["comfy.job.a", "comfy.job.b"]
    assert "the listener is behind" in caplog.text
    assert "the listener caught up" in caplog.text
    assert not sender.backlog().behind


def test_a_bad_rate_is_refused_with_what_to_do(monkeypatch):
    monkeypatch.setenv("COMFY_LISTENER_EVENTS_PER_SECOND", "fast")
    with pytest.raises(
        ComfyConfigError, match="COMFY_LISTENER_EVENTS_PER_SECOND='fast'.*0: no limit"
    ):
        events_per_second_from_env()
    monkeypatch.setenv("COMFY_LISTENER_EVENTS_PER_SECOND", "120")
    assert events_per_second_from_env() == 120
    with pytest.raises(ComfyConfigError, match=">= 0"):
        PacedQueue(ListenerStats(), events_per_second=-1)
