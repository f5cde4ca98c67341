"""EventHub with an in-memory backend: fan-out, reconciliation, timeouts, linger, sharing."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import pytest

from prefect_comfy.backends.base import Capabilities
from prefect_comfy.exceptions import (
    JobTimedOut,
    NotFound,
    WaitTimedOut,
    WebSocketAuthError,
    WebSocketConnectionError,
)
from prefect_comfy.models import ComfyEvent, Input, Job, Model
from prefect_comfy.waiting.hub import EventHub
from prefect_comfy.waiting.waits import wait_for
from tests.support.memory import STREAM_ONLY, MemoryBackend, MemoryServer
from tests.support.waiting import eventually, scaled

_keys = itertools.count()


@pytest.fixture
def world() -> MemoryServer:
    return MemoryServer()


@pytest.fixture
def backend(world) -> MemoryBackend:
    # A server that lists nothing: the hub reads each pending resource, what is tested here.
    return MemoryBackend(world, capabilities=STREAM_ONLY, key=f"fake#{next(_keys)}")


@pytest.fixture
def hub(backend):
    return EventHub(backend.clone(), linger=0.05)


def job(jid: str, status: str, **extra: Any) -> Job:
    return Job(id=jid, status=status, **extra)


def start(coro: Any) -> asyncio.Task[Any]:
    return asyncio.ensure_future(coro)


async def test_fan_out_to_many_waiters_over_one_stream(hub, world):
    for i in range(3):
        world.jobs[f"job_{i}"] = job(f"job_{i}", "running")
    waits = [start(hub.wait("job", f"job_{i}")) for i in range(3)]
    same = [start(hub.wait("job", "job_0")) for _ in range(2)]
    await eventually(lambda: hub.connections_opened == 1 and len(world.reads) == 3)
    world.emit("job.completed", "job_0", status="completed")
    world.emit("job.failed", "job_1", status="failed", error={"code": "x", "message": "boom"})
    world.emit("job.cancelled", "job_2", status="cancelled")
    results = await asyncio.wait_for(asyncio.gather(*waits, *same), scaled(5))
    assert [r.event for r in results] == [
        "job.completed",
        "job.failed",
        "job.cancelled",
        "job.completed",
        "job.completed",
    ]
    assert results[1].payload["error"]["message"] == "boom"
    assert world.streams_opened == 1 and hub.streams_opened == 1
    assert world.patterns == [["job.*", "input.*", "model.*"]]


async def test_progress_in_order_once_each_and_callback_errors_are_not_fatal(hub, world, caplog):
    world.jobs["job_p"] = job("job_p", "running")
    seen_sync: list[int] = []
    seen_async: list[int] = []

    def sync_cb(event: ComfyEvent) -> None:
        seen_sync.append(event.payload["progress"])
        if event.payload["progress"] == 20:
            raise RuntimeError("callback bug")

    async def async_cb(event: ComfyEvent) -> None:
        await asyncio.sleep(0)
        seen_async.append(event.payload["progress"])

    a = start(hub.wait("job", "job_p", on_progress=sync_cb))
    b = start(hub.wait("job", "job_p", on_progress=async_cb))
    await eventually(lambda: len(world.reads) >= 1 and hub.stats["pending"] == 2)
    for n, p in enumerate([10, 20, 20, 30]):
        world.emit("job.progress", "job_p", f"evt_{n if p != 20 else 1}", progress=p)
    world.emit("job.completed", "job_p", "evt_end", status="completed")
    world.emit("job.progress", "job_p", "evt_late", progress=99)
    first, second = await asyncio.wait_for(asyncio.gather(a, b), scaled(5))
    assert first.event == second.event == "job.completed"
    assert seen_sync == [10, 20, 30] and seen_async == [10, 20, 30]
    assert "callback bug" in caplog.text


async def test_already_finished_job_resolves_from_the_first_connect(hub, world):
    world.jobs["job_done"] = job("job_done", "completed", outputs=[{"id": "o1", "type": "image"}])
    result = await asyncio.wait_for(hub.wait("job", "job_done"), scaled(5))
    assert result.event == "job.completed" and result.id is None
    assert result.payload["outputs"][0]["id"] == "o1" and "error" not in result.payload


async def test_reconciles_after_reconnect(hub, world):
    world.jobs["job_r"] = job("job_r", "running")
    world.inputs["inp_r"] = Input(id="inp_r", name="a.png", status="uploading")
    world.models["mod_r"] = Model(id="mod_r", name="m", status="uploading", type="lora")
    waits = [
        start(hub.wait("job", "job_r")),
        start(hub.wait("input", "inp_r")),
        start(hub.wait("model", "mod_r")),
    ]
    await eventually(lambda: len(world.reads) == 3)
    # Everything ends while "disconnected": no event ever arrives for it.
    world.jobs["job_r"] = job("job_r", "failed", error={"code": "oom", "message": "x"})
    world.inputs["inp_r"] = Input(id="inp_r", name="a.png", status="ready")
    world.models["mod_r"] = Model(id="mod_r", name="m", status="failed", type="lora")
    world.drop()
    results = await asyncio.wait_for(asyncio.gather(*waits), scaled(5))
    assert [r.event for r in results] == ["job.failed", "input.ready", "model.failed"]
    assert results[0].payload["error"]["code"] == "oom"
    assert hub.connections_opened == 2 and len(world.reads) == 6 and world.streams_opened == 1


async def test_late_waiter_reads_once_after_registering(hub, world):
    world.jobs["job_a"] = job("job_a", "running")
    world.jobs["job_b"] = job("job_b", "completed")
    first = start(hub.wait("job", "job_a"))
    await eventually(lambda: len(world.reads) == 1)
    assert (await asyncio.wait_for(hub.wait("job", "job_b"), scaled(5))).event == "job.completed"
    assert len(world.reads) == 2 and world.streams_opened == 1
    world.emit("job.completed", "job_a", status="completed")
    await asyncio.wait_for(first, scaled(5))
    assert len(world.reads) == 2  # no polling


async def test_job_timeout_names_the_last_known_status(hub, world):
    world.jobs["job_t"] = job("job_t", "pending")
    waiter = start(hub.wait("job", "job_t", timeout=1.0))
    await eventually(lambda: len(world.reads) == 1)
    world.emit("job.progress", "job_t", progress=5)
    await eventually(lambda: hub.events_received == 1)
    with pytest.raises(JobTimedOut) as caught:
        await waiter
    assert caught.value.status == "running" and caught.value.job_id == "job_t"
    assert isinstance(caught.value, TimeoutError) and "running" in str(caught.value)


async def test_input_timeout_uses_the_rest_status(hub, world):
    world.inputs["inp_t"] = Input(id="inp_t", name="x", status="downloading")
    with pytest.raises(WaitTimedOut) as caught:
        await hub.wait("input", "inp_t", timeout=0.5)
    assert not isinstance(caught.value, JobTimedOut)
    assert caught.value.status == "downloading" and caught.value.kind == "input"


async def test_not_found_fails_the_wait(hub, world):
    with pytest.raises(NotFound):
        await asyncio.wait_for(hub.wait("job", "job_missing"), scaled(5))


async def test_a_refused_key_fails_every_pending_wait_and_the_next_opens_anew(hub, world):
    world.jobs["job_x"] = job("job_x", "running")
    waits = [start(hub.wait("job", "job_x")) for _ in range(3)]
    await eventually(lambda: hub.stats["pending"] == 3 and len(world.reads) == 1)
    world.break_streams(WebSocketAuthError("check the key"))
    for w in waits:
        with pytest.raises(WebSocketAuthError):
            await asyncio.wait_for(w, scaled(5))
    world.jobs["job_x"] = job("job_x", "completed")
    assert (await asyncio.wait_for(hub.wait("job", "job_x"), scaled(5))).event == "job.completed"
    assert world.streams_opened == 2 and hub.streams_opened == 2


async def test_the_hub_asks_the_stream_to_reconnect_for_ever(hub, world):
    """One loop reconnects: the backend's. The hub asks it never to give up (as the listener
    does) and reads the waits over REST while the link is down (issue 18)."""
    world.jobs["job_x"] = job("job_x", "running")
    wait = start(hub.wait("job", "job_x", timeout=30))
    await eventually(lambda: hub.stats["pending"] == 1 and world.streams_opened == 1)
    assert world.forever == [True]
    world.drop(reconnect=False)  # the link is down, the backend's loop reconnecting
    world.jobs["job_x"] = job("job_x", "completed")  # ended while it was down: read over REST
    assert (await asyncio.wait_for(wait, scaled(10))).event == "job.completed"
    assert world.streams_opened == 1, "the hub opened no stream of its own"


async def test_a_stream_that_ends_anyway_leaves_the_waits_to_rest(hub, world):
    """A kind whose stream ends although asked to reconnect for ever: a wait that REST can answer
    never fails, and the next wait opens the stream again."""
    world.jobs["job_x"] = job("job_x", "running")
    world.jobs["job_y"] = job("job_y", "running")
    waits = [start(hub.wait("job", jid, timeout=30)) for jid in ("job_x", "job_x", "job_y")]
    await eventually(lambda: hub.stats["pending"] == 3 and len(world.reads) == 2)
    world.break_streams(WebSocketConnectionError("gave up after 6 reconnects"))
    world.jobs["job_x"] = job("job_x", "completed")  # ended while the stream was down: read
    world.jobs["job_y"] = job("job_y", "failed")
    results = await asyncio.wait_for(asyncio.gather(*waits), scaled(10))
    assert [r.event for r in results] == ["job.completed", "job.completed", "job.failed"]
    world.jobs["job_z"] = job("job_z", "running")
    later = start(hub.wait("job", "job_z", timeout=30))
    await eventually(lambda: world.streams_opened == 2, message="the next wait opened it")
    world.emit("job.completed", "job_z", status="completed")
    assert (await asyncio.wait_for(later, scaled(10))).event == "job.completed"


async def test_a_stream_the_kind_cannot_open_frees_the_hub_at_once(world):
    """A kind with no stream of any sort raises on ``events()`` itself: the hub used to keep that
    dead task as its open stream, so every submit waited the whole `stream_ready` timeout (10 s)."""
    backend = MemoryBackend(world, capabilities=Capabilities(), key=f"fake#{next(_keys)}")
    hub = EventHub(backend.clone(), linger=0.05)
    with pytest.raises(WebSocketConnectionError, match="has no event stream"):
        await hub.ready(timeout=scaled(30))
    assert not hub.stream_open and isinstance(hub.stopped_with, NotImplementedError)
    with pytest.raises(WebSocketConnectionError, match="has no event stream"):
        await hub.ready(timeout=scaled(30))  # asked again: tried again, not stuck
    assert hub.streams_opened == 2


async def test_stream_closes_after_linger_and_reopens(backend, world):
    hub = EventHub(backend.clone(), linger=0.5)
    world.jobs["job_l"] = job("job_l", "completed")
    await asyncio.wait_for(hub.wait("job", "job_l"), scaled(5))
    await asyncio.wait_for(hub.wait("job", "job_l"), scaled(5))  # within the linger: same stream
    assert world.streams_opened == 1
    await eventually(lambda: not hub.stream_open and world.closed_backends == 1)
    await asyncio.wait_for(hub.wait("job", "job_l"), scaled(5))
    assert world.streams_opened == 2 and hub.backend.closed is False


async def test_shared_hub_per_connection_key_owns_a_clone(world, backend):
    hub = EventHub.shared(backend)
    assert EventHub.shared(backend.clone()) is hub
    assert hub.backend is not backend
    other = MemoryBackend(world, capabilities=STREAM_ONLY, key=backend.key + "-other")
    assert EventHub.shared(other) is not hub
    world.jobs["job_s"] = job("job_s", "running")
    waits = [start(wait_for(backend, "job", "job_s")) for _ in range(5)]
    await eventually(lambda: hub.stats["pending"] == 5)
    await backend.aclose()  # the hub's clone outlives the caller's backend
    world.emit("job.completed", "job_s", status="completed")
    assert all(r.event == "job.completed" for r in await asyncio.gather(*waits))
    assert world.streams_opened == 1
    await hub.aclose()


async def test_reconcile_reads_are_bounded(hub, world):
    world.read_gate = asyncio.Event()
    for i in range(40):
        world.jobs[f"job_{i}"] = job(f"job_{i}", "completed")
    waits = [start(hub.wait("job", f"job_{i}")) for i in range(40)]
    await eventually(lambda: world.in_flight == 16)
    world.read_gate.set()
    await asyncio.wait_for(asyncio.gather(*waits), scaled(5))
    assert world.max_in_flight == 16 and len(world.reads) == 40


async def test_cancelled_wait_leaves_cleanly(hub, world, caplog):
    caplog.set_level(logging.WARNING)
    world.jobs["job_c"] = job("job_c", "running")
    waiter = start(hub.wait("job", "job_c"))
    await eventually(lambda: hub.stats["pending"] == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert hub.stats["pending"] == 0
    await eventually(lambda: not hub.stream_open)


async def test_a_job_the_server_forgets_is_lost_not_missing(hub, world):
    """Issue 11 item 7: a job seen before and unknown after a reconnect ends ``job.lost``."""
    world.jobs["job_gone"] = job("job_gone", "running")
    waiter = start(hub.wait("job", "job_gone"))
    await eventually(lambda: len(world.reads) == 1)
    del world.jobs["job_gone"]  # the server restarted and forgot it
    world.drop()
    result = await asyncio.wait_for(waiter, scaled(5))
    assert result.event == "job.lost" and result.payload["error"]["code"] == "lost"
    with pytest.raises(NotFound):  # never seen: a wrong id stays NotFound
        await asyncio.wait_for(hub.wait("job", "job_never"), scaled(5))


async def test_a_large_outcome_of_nobodys_job_is_not_kept_a_late_wait_reads_it(hub, world):
    """The stream carries other users' jobs: their big final events are not held (issue 20, #5)."""
    world.jobs["job_w"] = job("job_w", "running")
    start(hub.wait("job", "job_w", timeout=30))  # keeps the stream open
    await eventually(lambda: hub.stats["pending"] == 1 and len(world.reads) == 1)
    for i in range(20):
        world.emit("job.completed", f"other_{i}", status="completed", log="x" * 2**20)
    world.jobs["other_0"] = job("other_0", "completed")
    await eventually(lambda: hub.events_received == 20)
    reads = len(world.reads)
    late = await asyncio.wait_for(hub.wait("job", "other_0"), scaled(5))
    assert late.event == "job.completed"
    assert len(world.reads) == reads + 1  # read over REST, not remembered
    assert hub._recall.outcome_bytes < 2**20


async def test_outcomes_from_the_hubs_thread_wake_the_waits_loop_once_per_batch(monkeypatch):
    """Issue 21 §5: a burst of outcomes handed from the waiting layer's thread costs the wait's
    loop one wake-up (one ``call_soon_threadsafe``), not one per wait; each still in order."""
    import threading

    from prefect_comfy.waiting.waiter import Waiter

    loop = asyncio.get_running_loop()
    wakes: list[Any] = []
    original = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        wakes.append(callback)
        return original(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    progress: list[str] = []
    waiters = [Waiter("job", f"j{i}", loop.create_future(), loop) for i in range(200)]
    followed = Waiter("job", "p", loop.create_future(), loop, progress.append)

    def hub_thread() -> None:  # as the hub's loop does: deliver from another thread
        for n in range(3):
            followed.deliver(ComfyEvent(event="job.progress", payload={"id": "p", "progress": n}))
        for w in waiters:
            w.deliver(ComfyEvent(event="job.completed", payload={"id": w.resource_id}))
        followed.deliver(ComfyEvent(event="job.completed", payload={"id": "p"}))

    thread = threading.Thread(target=hub_thread)
    thread.start()
    thread.join()  # the loop is held here: everything is queued before it can drain
    results = await asyncio.wait_for(asyncio.gather(*(w.future for w in waiters)), scaled(10))
    assert [r.payload["id"] for r in results] == [w.resource_id for w in waiters]
    assert (await asyncio.wait_for(followed.future, scaled(10))).event == "job.completed"
    assert [e.payload["progress"] for e in progress] == [0, 1, 2]
    assert len(wakes) == 1
    followed.close()
