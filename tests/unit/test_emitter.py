"""The emitter: coalescing per job, the shared budget, outcomes never throttled, event building."""

from __future__ import annotations

import json
import uuid

import pytest

from prefect_comfy.models import ComfyEvent, Job, Output
from prefect_comfy.orchestration.events import emitter as emitter_module
from prefect_comfy.orchestration.events.budget import Coalescer
from prefect_comfy.orchestration.events.emitter import (
    PROGRESS_BUDGET_ENV,
    ComfyEventEmitter,
    ProgressBudget,
    emit_submitted,
    progress_budget,
    set_progress_events_per_second,
)
from tests.support.memory import MemoryBackend

ADDRESS = "http://127.0.0.1:8765"
FLOW_RUN = str(uuid.uuid4())
TASK_RUN = str(uuid.uuid4())
SECRET = "comfyui-secret-key-for-unit-tests"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sent() -> list:
    return []


def make(sent, clock, *, rate=1000.0, interval=1.0, budget=None) -> ComfyEventEmitter:
    return ComfyEventEmitter(
        ADDRESS,
        "cloud",
        flow_run_id=FLOW_RUN,
        task_run_id=TASK_RUN,
        progress_interval=interval,
        budget=budget or ProgressBudget(rate, clock=clock),
        sink=sent.append,
        clock=clock,
    )


def progress(job_id: str, value: float, **extra) -> ComfyEvent:
    payload = {"id": job_id, "status": "running", "progress": value, "node_id": "3", **extra}
    return ComfyEvent(event="job.progress", payload=payload)


def outcome(job_id: str, name: str = "completed", **payload) -> ComfyEvent:
    return ComfyEvent(event=f"job.{name}", payload={"id": job_id, "status": name, **payload})


def values(sent) -> list:
    return [(e.resource.id, e.event, e.payload.get("progress")) for e in sent]


# -- coalescing -------------------------------------------------------------------------------------
def test_first_progress_goes_out_at_once_then_one_per_interval(sent, clock):
    em = make(sent, clock)
    assert em.progress(progress("j1", 1)) is True
    for v in range(2, 10):
        clock.advance(0.1)
        assert em.progress(progress("j1", v)) is False
    assert values(sent) == [("comfy.job.j1", "comfy.job.progress", 1)]
    assert em.next_due() == pytest.approx(0.2)
    clock.advance(0.2)
    assert em.next_due() == 0
    assert em.flush_due() == 1
    # coalesced: only the newest held value went out
    assert values(sent)[-1] == ("comfy.job.j1", "comfy.job.progress", 9)
    assert em.next_due() is None


def test_update_after_interval_goes_out_immediately(sent, clock):
    em = make(sent, clock)
    em.progress(progress("j1", 10))
    clock.advance(1.0)
    assert em.progress(progress("j1", 20)) is True
    assert [v for _, _, v in values(sent)] == [10, 20]


def test_outcome_takes_the_place_of_the_held_progress(sent, clock):
    em = make(sent, clock)
    em.progress(progress("j1", 10))
    clock.advance(0.3)
    em.progress(progress("j1", 90, node_class="KSampler", step=18, steps=20))
    em.progress(progress("j1", 100, node_class="SaveImage"))
    em.outcome(outcome("j1"))
    # No final progress event right before the outcome: the outcome says 100 % itself.
    assert values(sent) == [
        ("comfy.job.j1", "comfy.job.progress", 10),
        ("comfy.job.j1", "comfy.job.completed", 100),
    ]
    completed = sent[-1]
    assert completed.resource["comfy.progress"] == "100"
    assert completed.resource["comfy.node-class"] == "SaveImage"
    assert completed.resource["prefect.resource.name"] == "j1 · completed · 100%"
    assert em.next_due() is None  # the job's state is gone


def test_failed_outcome_says_where_the_job_stopped(sent, clock):
    em = make(sent, clock)
    em.progress(progress("j1", 10))
    clock.advance(0.3)
    em.progress(progress("j1", 40, node_class="KSampler", step=8, steps=20))
    event = em.outcome(outcome("j1", "failed", error={"code": "oom", "node_id": "3"}))
    assert [e.event for e in sent] == ["comfy.job.progress", "comfy.job.failed"]
    assert (event.payload["progress"], event.payload["step"], event.payload["steps"]) == (40, 8, 20)
    assert event.resource["prefect.resource.name"] == "j1 · failed · 40% · KSampler step 8/20"
    assert event.resource["comfy.step"] == "8/20"


def test_outcome_ids_do_not_depend_on_the_progress_taken_over(clock):
    a, b = [], []
    em_a, em_b = make(a, clock), make(b, clock)
    em_a.progress(progress("j1", 10))
    clock.advance(0.1)
    em_a.progress(progress("j1", 20))
    assert em_a.outcome(outcome("j1")).id == em_b.outcome(outcome("j1")).id


def test_flush_without_an_outcome_stays_within_the_budget(sent, clock):
    em = make(sent, clock, rate=0)
    assert em.progress(progress("j1", 50)) is False
    assert em.next_due() == 60.0  # a budget of 0 never frees up: the pump sleeps long
    assert em.flush("j1") == 0  # no room: dropped, never forced through
    assert sent == [] and em.next_due() is None
    roomy = make(sent, clock, rate=10, interval=60)
    roomy.progress(progress("j2", 10))
    roomy.progress(progress("j2", 20))
    assert roomy.flush("j2") == 1  # within the budget, whatever the interval
    assert values(sent) == [
        ("comfy.job.j2", "comfy.job.progress", 10),
        ("comfy.job.j2", "comfy.job.progress", 20),
    ]


def test_repeated_identical_progress_is_not_sent_twice(sent, clock):
    em = make(sent, clock)
    em.progress(progress("j1", 50))
    clock.advance(5)
    assert em.progress(progress("j1", 50)) is False
    assert em.flush() == 0
    assert len(sent) == 1


def test_jobs_are_coalesced_independently(sent, clock):
    em = make(sent, clock)
    em.progress(progress("a", 1))
    em.progress(progress("b", 1))
    em.progress(progress("a", 2))
    assert values(sent) == [
        ("comfy.job.a", "comfy.job.progress", 1),
        ("comfy.job.b", "comfy.job.progress", 1),
    ]
    assert em.flush() == 1
    assert values(sent)[-1] == ("comfy.job.a", "comfy.job.progress", 2)


def test_budget_is_shared_across_emitters(sent, clock):
    budget = ProgressBudget(3, clock=clock)  # 3 a second, bursts of 3
    emitters = [make(sent, clock, budget=budget) for _ in range(5)]
    results = [em.progress(progress(f"job{i}", 1)) for i, em in enumerate(emitters)]
    assert results == [True, True, True, False, False]
    assert len(sent) == 3
    # the held ones wait for room in the window, not for their interval
    assert emitters[3].next_due() == pytest.approx(1.0)
    clock.advance(0.5)
    assert emitters[3].flush_due() == 0
    clock.advance(0.5)
    assert emitters[3].flush_due() == 1
    assert emitters[4].flush_due() == 1
    assert len(sent) == 5


def test_outcomes_are_never_throttled(sent, clock):
    em = make(sent, clock, rate=0)
    names = ["completed", "failed", "cancelled"]
    for i, name in enumerate(names):
        em.outcome(outcome(f"j{i}", name))
    em.timed_out("j9", timeout=5.0, last_status="running")
    em.outcome(ComfyEvent(event="input.ready", payload={"id": "in1", "name": "a.png"}))
    em.outcome(ComfyEvent(event="model.failed", payload={"id": "m1", "error": {"code": "x"}}))
    assert [e.event for e in sent] == [
        "comfy.job.completed",
        "comfy.job.failed",
        "comfy.job.cancelled",
        "comfy.job.timed-out",
        "comfy.input.ready",
        "comfy.model.failed",
    ]


def test_budget_is_a_sliding_one_second_window(clock):
    budget = ProgressBudget(10, clock=clock)
    assert sum(budget.try_acquire() for _ in range(20)) == 10
    clock.advance(0.5)
    # a token bucket would let 5 more through here, and 15 in this second in all
    assert sum(budget.try_acquire() for _ in range(20)) == 0
    assert budget.seconds_until_available() == pytest.approx(0.5)
    clock.advance(0.5)
    assert sum(budget.try_acquire() for _ in range(20)) == 10


@pytest.mark.parametrize(
    ("rate", "capacity", "window"), [(50, 50, 1.0), (2.5, 2, 1.0), (0.5, 1, 2.0), (0, 0, None)]
)
def test_budget_window_for_any_rate(clock, rate, capacity, window):
    budget = ProgressBudget(rate, clock=clock)
    assert budget.capacity == capacity
    if window is None:
        assert budget.try_acquire() is False
        assert budget.seconds_until_available() == float("inf")
    else:
        assert budget.window == window
        assert sum(budget.try_acquire() for _ in range(100)) == capacity


def test_end_of_batch_never_exceeds_the_budget_in_any_second(clock):
    """Issue 11 item 17: 200 jobs ending together once forced 190 progress events into one second."""
    sent: list = []
    rate, jobs = 50, 200
    budget = ProgressBudget(rate, clock=clock)
    emitters = [make(sent, clock, budget=budget) for _ in range(jobs)]
    stamps: list[float] = []
    record = sent.append

    def sink(event):
        stamps.append(clock.now) if event.event == "comfy.job.progress" else None
        record(event)

    for em in emitters:
        em._sink = sink
    for tick in range(100):  # 10 s of updates every 0.1 s, the pumps flushing at each tick
        for j, em in enumerate(emitters):
            em.progress(progress(f"job{j}", min(100, tick + 1)))
            em.flush_due()
        clock.advance(0.1)
    for j, em in enumerate(emitters):  # every job ends in the same instant
        em.outcome(outcome(f"job{j}"))
    outcomes = [e for e in sent if e.event == "comfy.job.completed"]
    assert len(outcomes) == jobs and all(e.payload["progress"] == 100 for e in outcomes)
    assert stamps, "some progress went out"
    for start in stamps:  # every one-second window that starts at a send
        assert sum(1 for t in stamps if start <= t < start + 1.0) <= rate


def test_process_budget_from_environment_read_lazily(monkeypatch):
    monkeypatch.setenv(PROGRESS_BUDGET_ENV, "7")
    set_progress_events_per_second(None)
    try:
        assert progress_budget().rate == 7
        assert progress_budget() is progress_budget()
        assert set_progress_events_per_second(123).rate == 123
        emitter = ComfyEventEmitter(ADDRESS, "cloud", sink=lambda e: None)
        assert emitter.budget is progress_budget()
        monkeypatch.setenv(PROGRESS_BUDGET_ENV, "not-a-number")
        assert (
            set_progress_events_per_second(None).rate
            == emitter_module.DEFAULT_PROGRESS_EVENTS_PER_SECOND
        )
    finally:
        monkeypatch.delenv(PROGRESS_BUDGET_ENV)
        set_progress_events_per_second(None)


# -- building ---------------------------------------------------------------------------------------
def test_progress_event_labels_related_and_payload(sent, clock):
    em = make(sent, clock)
    em.progress(progress("job_1", 42.5, tags=["hero", f"prefect.flow-run.{FLOW_RUN}"]))
    (event,) = sent
    assert event.event == "comfy.job.progress"
    assert event.resource.id == "comfy.job.job_1"
    assert event.resource["prefect.resource.name"] == "job_1 · 42% · node 3"
    assert event.resource["comfy.progress"] == "42"
    assert event.resource["comfy.node"] == "3"
    # what the UI's event card shows: a related resource of our own whose id says it
    shown = [r for r in event.related if r.role == "comfy-progress"]
    assert [r.id for r in shown] == ["comfy.progress.42% · node 3"]
    assert event.resource["comfy.backend"] == "cloud"
    assert event.resource["comfy.status"] == "running"
    assert event.resource["comfy.tags"] == "hero"
    assert event.resource["comfy.tag.hero"] == "true"
    related = {r.id: r.role for r in event.related}
    assert related == {
        f"prefect.flow-run.{FLOW_RUN}": "flow-run",
        f"prefect.task-run.{TASK_RUN}": "task-run",
        "comfy.progress.42% · node 3": "comfy-progress",
    }
    assert event.payload["progress"] == 42.5
    assert json.loads(json.dumps(event.payload)) == event.payload


def test_ids_are_deterministic_per_occurrence(clock):
    a, b = [], []
    em_a, em_b = make(a, clock), make(b, clock)
    em_a.progress(progress("j1", 10))
    em_b.progress(progress("j1", 10))
    em_a.outcome(outcome("j1"))
    em_b.outcome(outcome("j1"))
    assert [e.id for e in a] == [e.id for e in b]
    c = []
    make(c, clock).progress(progress("j1", 11))
    assert c[0].id != a[0].id
    assert a[1].id != a[0].id


def test_timed_out_payload_and_status(sent, clock):
    em = make(sent, clock)
    em.progress(progress("j1", 10))
    clock.advance(0.1)
    em.progress(progress("j1", 30))
    event = em.timed_out("j1", timeout=2.5, last_status="running")
    assert [e.event for e in sent] == ["comfy.job.progress", "comfy.job.timed-out"]
    assert event.payload == {
        "id": "j1",
        "timeout": 2.5,
        "last_status": "running",
        "status": "running",
        "progress": 30,
        "node_id": "3",
    }
    assert event.resource["comfy.status"] == "running"


def test_failed_event_carries_the_comfy_error(sent, clock):
    em = make(sent, clock)
    raw = outcome("j1", "failed", error={"type": "node_error", "message": "boom", "node_id": "7"})
    event = em.outcome(raw)
    assert event.payload["error"] == {"code": "node_error", "message": "boom", "node_id": "7"}
    assert event.resource["comfy.status"] == "failed"


def test_outcome_payload_completed_from_the_job_read_afterwards(sent, clock):
    em = make(sent, clock)
    job = Job(
        id="j1",
        status="completed",
        workflow={"3": {"class_type": "KSampler", "inputs": {}}},
        outputs=[
            Output(id="o1", name="a.png", download_url="https://s/a.png?sig=1&api_key=" + SECRET)
        ],
    )
    event = em.outcome(outcome("j1", outputs=[]), resource=job)
    assert event.payload["outputs"][0]["name"] == "a.png"
    assert "workflow" not in event.payload
    assert SECRET not in json.dumps(event.payload)
    assert "sig=1" in event.payload["outputs"][0]["download_url"]


def test_status_is_filled_in_when_missing(sent, clock):
    em = make(sent, clock)
    event = em.outcome(ComfyEvent(event="job.cancelled", payload={"id": "j1"}))
    assert event.resource["comfy.status"] == "cancelled"


def test_emit_submitted(sent):
    backend = MemoryBackend()
    job = Job(id="j1", status="pending", tags=["x"], workflow={"1": {}})
    first = emit_submitted(job, backend, flow_run_id=FLOW_RUN, sink=sent.append)
    again = emit_submitted(job, backend.clone(), flow_run_id=FLOW_RUN, sink=sent.append)
    assert first.event == "comfy.job.submitted" and first.id == again.id
    assert first.resource["comfy.status"] == "pending"
    assert first.resource["comfy.tag.x"] == "true"
    assert f"prefect.flow-run.{FLOW_RUN}" in {r.id for r in first.related}
    assert "workflow" not in first.payload


def test_sink_errors_never_fail_the_wait(clock, caplog):
    def broken(event):
        raise RuntimeError("server gone")

    em = ComfyEventEmitter(
        ADDRESS, "cloud", sink=broken, budget=ProgressBudget(10, clock=clock), clock=clock
    )
    em.outcome(outcome("j1"))
    assert "Could not emit" in caplog.text


def test_prefect_sink_queues_each_id_once(monkeypatch):
    calls = []
    monkeypatch.setattr("prefect.events.emit_event", lambda **kw: calls.append(kw))
    em = ComfyEventEmitter(ADDRESS, "cloud", flow_run_id=FLOW_RUN)
    unique = f"j-{uuid.uuid4()}"
    em.outcome(outcome(unique))
    em.outcome(outcome(unique))
    assert len(calls) == 1
    (kw,) = calls
    assert kw["event"] == "comfy.job.completed"
    assert kw["resource"]["prefect.resource.id"] == f"comfy.job.{unique}"
    assert kw["id"] is not None and kw["related"]


def test_a_100_percent_update_waits_an_interval_for_the_outcome(sent, clock):
    em = make(sent, clock)
    em.progress(progress("j1", 90))
    clock.advance(5)  # the interval has long passed: 100 % would go out at once
    assert em.progress(progress("j1", 100)) is False
    assert em.next_due() == pytest.approx(1.0)
    em.outcome(outcome("j1"))
    assert values(sent) == [
        ("comfy.job.j1", "comfy.job.progress", 90),
        ("comfy.job.j1", "comfy.job.completed", 100),
    ]
    # with no outcome after it, it goes out one interval later
    em.progress(progress("j2", 100))
    clock.advance(0.5)
    assert em.flush_due() == 0
    clock.advance(0.5)
    assert em.flush_due() == 1
    assert values(sent)[-1] == ("comfy.job.j2", "comfy.job.progress", 100)


# -- the one coalescing (the listener's PacedQueue holds its progress in it too) -----------------
def test_the_coalescer_keeps_the_newest_in_place_and_says_how_long_to_wait() -> None:
    budget = ProgressBudget(1, clock=lambda: 0.0)
    held: Coalescer[str] = Coalescer(1.0, lambda: budget)
    assert held.offer("a", "a1") is None and held.offer("b", "b1") is None
    assert held.offer("a", "a2") == "a1" and held.keys() == ["a", "b"]  # in a1's place
    assert held.take(0.0) == ("a2", None)  # the budget's one event this second
    assert held.take(0.0) == (None, 1.0)  # b is due, the budget is not
    held.hold("b", 5.0)
    held.hold("b", 2.0)  # the first hold stands
    assert held.due_in("b", 0.0) == 5.0 and held.next_due(0.0) == 5.0
    assert held.end("b") == "b1" and held.next_due(0.0) is None and len(held) == 0
    held.offer("a", "a3")
    assert held.take(0.5) == (None, 0.5)  # a's interval runs until 1.0
