"""The emulator's state without sockets: event delivery, cancel semantics, faults, ids."""

from __future__ import annotations

import json

from prefect_comfy_emulator.bus import Close, EventBus
from prefect_comfy_emulator.config import EmulatorConfig
from prefect_comfy_emulator.records import IdFactory, now_iso
from prefect_comfy_emulator.state import EmulatorState, Fault
from tests.support.waiting import eventually

SLEEP = {"1": {"class_type": "EmulatorSleep", "inputs": {"seconds": 2.0}}}
QUICK = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}


def frames(conn) -> list:
    out = []
    while not conn.queue.empty():
        item = conn.queue.get_nowait()
        out.append(item if isinstance(item, Close) else json.loads(item))
    return out


async def test_events_go_to_matching_connections_of_the_same_key() -> None:
    bus = EventBus(IdFactory(1).new, now_iso, queue_size=10)
    jobs = bus.open("acct_1", "ses_1", None)
    jobs.patterns = ["job.*"]
    everything = bus.open("acct_1", "ses_2", None)
    everything.patterns = ["*"]
    other_key = bus.open("acct_2", "ses_3", None)
    other_key.patterns = ["*"]
    bus.publish("acct_1", "input.ready", {"id": "inp_1"})
    bus.publish("acct_1", "job.completed", {"id": "job_1"})
    assert [f["data"]["event"] for f in frames(jobs)] == ["job.completed"]
    got = frames(everything)
    assert [f["data"]["event"] for f in got] == ["input.ready", "job.completed"]
    assert got[0]["id"].startswith("evt_") and got[0]["timestamp"].endswith("Z")
    assert frames(other_key) == []


async def test_pause_duplicate_overflow_and_drop() -> None:
    bus = EventBus(IdFactory(1).new, now_iso, queue_size=3)
    conn = bus.open("a", "s", None)
    conn.patterns = ["job.progress"]
    bus.pause()
    bus.publish("a", "job.progress", {"id": "j"})
    assert frames(conn) == [] and len(conn.held) == 1
    assert bus.resume() == 1
    assert len(frames(conn)) == 1
    bus.duplicate = True
    bus.publish("a", "job.progress", {"id": "j"})
    first, second = frames(conn)
    assert first == second
    for _ in range(4):
        bus.publish("a", "job.progress", {"id": "j"})
    assert frames(conn) == [Close(1013, "event queue overflow: the client reads too slowly")]
    late = bus.open("a", "s2", None)
    assert bus.drop_all() == 2 and not bus.connections
    assert frames(late) == [Close(1012, "dropped by the emulator")]


def test_ids_are_unique_across_runs_with_the_same_seed() -> None:
    a, b = IdFactory(7), IdFactory(7)
    assert {a.new("job") for _ in range(50)}.isdisjoint({b.new("job") for _ in range(50)})
    ids = {a.new("job") for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("job_") for i in ids)
    assert a.token() == b.token()  # tokens (and images) stay seeded


def test_ids_can_be_seeded_for_generator_tests() -> None:
    a, b = IdFactory(7, unique=False), IdFactory(7, unique=False)
    assert [a.new("job") for _ in range(3)] == [b.new("job") for _ in range(3)]


def test_fault_matching() -> None:
    fault = Fault(500, 1, path="/jobs")
    assert fault.matches("/developer/api/v1/jobs/job_1")
    assert not fault.matches("/developer/api/v1/inputs")
    assert Fault(500, 1, path="/developer/api/v1/inputs").matches("/developer/api/v1/inputs/x")
    assert Fault(429, 1, retry_after=2).error().headers == {"Retry-After": "2"}
    assert Fault(429, 1, retry_after=0.5).error().headers == {"Retry-After": "0.5"}


async def test_cancel_semantics_at_state_level() -> None:
    state = EmulatorState(EmulatorConfig(api_keys=["k"], seed=3, step_duration=0.01, concurrency=1))
    try:
        _, (running, waiting) = state.create_jobs(
            "acct_1", "http://x", [(SLEEP, []), (SLEEP, [])], batch=True
        )
        await eventually(lambda: running.status == "running")
        assert waiting.status == "pending"
        assert state.cancel_job("acct_1", waiting.id).status == "cancelled"  # immediately
        assert state.cancel_job("acct_1", running.id).status == "running"  # at the next checkpoint
        await eventually(lambda: running.status == "cancelled", timeout=2)
        try:
            state.cancel_job("acct_1", running.id)
        except Exception as exc:
            assert getattr(exc, "status", None) == 400
        else:
            raise AssertionError("a terminal job must refuse to cancel")
        _, (done,) = state.create_jobs("acct_1", "http://x", [(QUICK, ["t"])], batch=False)
        await eventually(lambda: done.status == "completed")
        assert (
            done.progress == 100.0
            and len(done.outputs) == 1
            and done.outputs[0].name == "t_00001_.png"
        )
        assert state.stats()["jobs"] == {
            "pending": 0,
            "running": 0,
            "completed": 1,
            "failed": 0,
            "cancelled": 2,
        }
    finally:
        await state.shutdown()


async def test_many_jobs_finish_quickly() -> None:
    state = EmulatorState(EmulatorConfig(api_keys=["k"], seed=3, step_duration=0, concurrency=4))
    try:
        jobs = []
        for _ in range(20):
            jobs += state.create_jobs("acct_1", "http://x", [(QUICK, [])] * 50, batch=True)[1]
        assert len(jobs) == 1000
        await eventually(lambda: all(j.status == "completed" for j in jobs), timeout=20)
    finally:
        await state.shutdown()


async def test_reset_forgets_everything_but_keeps_ids_unique() -> None:
    state = EmulatorState(EmulatorConfig(api_keys=["k"], seed=3, step_duration=0))
    try:
        _, (job,) = state.create_jobs("acct_1", "http://x", [(QUICK, [])], batch=False)
        state.add_fault(Fault(500, 1))
        state.reset()
        assert not state.jobs and not state.faults
        _, (again,) = state.create_jobs("acct_1", "http://x", [(QUICK, [])], batch=False)
        assert again.id != job.id
    finally:
        await state.shutdown()
