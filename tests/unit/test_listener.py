"""The listener's logic on in-memory seams: a fake backend and a fake Prefect events client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from prefect_comfy.exceptions import (
    ComfyConfigError,
    WebSocketAuthError,
    WebSocketConnectionError,
)
from prefect_comfy.listener.forwarder import ComfyListener
from prefect_comfy.listener.sender import require_prefect_api_url
from prefect_comfy.models import ComfyEvent, Input, Job, Model
from prefect_comfy.orchestration.events import names as comfy_events
from tests.support.listener_fakes import (
    FakeEventsClient,
    make_listener,
    started,
)
from tests.support.memory import STREAM_ONLY, MemoryBackend
from tests.support.waiting import eventually, scaled

FLOW_RUN = "0b7e2b2a-9d5f-4a53-9a3c-4d2a0f6f1c11"


async def stop(listener: ComfyListener, task: asyncio.Task[None]) -> None:
    listener.stop()
    await asyncio.wait_for(task, scaled(10))


async def test_forwards_with_the_sensor_ids_and_relates_the_flow_run():
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    listener = make_listener(backend, client)
    task = await started(listener)
    tags = ["portraits", f"{comfy_events.FLOW_RUN_TAG_PREFIX}{FLOW_RUN}"]
    backend.server.emit("job.completed", id="job_1", status="completed", outputs=[], tags=tags)
    await eventually(lambda: len(client.events) == 1)
    await stop(listener, task)

    (event,) = client.events
    expected = comfy_events.from_comfy_event(
        ComfyEvent(event="job.completed", payload={"id": "job_1", "tags": tags}),
        address=backend.address,
        backend_kind=backend.kind,
    )
    assert event.id == expected.id
    assert event.event == "comfy.job.completed"
    assert event.resource.id == "comfy.job.job_1"
    assert event.resource["comfy.tag.portraits"] == "true"
    assert [r.id for r in event.related] == [f"prefect.flow-run.{FLOW_RUN}"]
    assert client.exited == 1


async def test_progress_without_tags_gets_the_tags_seen_for_the_job():
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    listener = make_listener(backend, client)
    task = await started(listener)
    tags = [f"{comfy_events.FLOW_RUN_TAG_PREFIX}{FLOW_RUN}"]
    backend.server.emit("job.progress", id="job_1", status="running", progress=10, tags=tags)
    await eventually(lambda: len(client.events) == 1)  # else the second replaces the first
    backend.server.emit("job.progress", id="job_1", status="running", progress=50)
    await eventually(lambda: len(client.events) == 2)
    await stop(listener, task)
    assert all(
        e.related and e.related[0].id == f"prefect.flow-run.{FLOW_RUN}" for e in client.events
    )
    assert backend.server.reads == []


async def test_progress_of_an_unknown_job_reads_its_tags_once():
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    tags = [f"{comfy_events.FLOW_RUN_TAG_PREFIX}{FLOW_RUN}"]
    backend.server.jobs["job_2"] = Job(id="job_2", status="running", tags=tags)
    listener = make_listener(backend, client)
    task = await started(listener)
    for sent, p in enumerate((10, 20, 30), start=1):
        backend.server.emit("job.progress", id="job_2", status="running", progress=p)
        await eventually(lambda sent=sent: len(client.events) == sent)
    await stop(listener, task)
    assert backend.server.reads == [("job", "job_2")]
    assert all(e.related[0].id == f"prefect.flow-run.{FLOW_RUN}" for e in client.events)


async def test_tag_memory_is_bounded():
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    listener = make_listener(backend, client, max_tracked=3)
    task = await started(listener)
    for i in range(10):
        backend.server.emit("job.progress", id=f"job_{i}", status="running", progress=1, tags=[])
    await eventually(lambda: len(client.events) == 10)
    await stop(listener, task)
    assert list(listener._tags) == ["job_7", "job_8", "job_9"]
    assert len(listener._in_flight) == 3


async def test_reconnect_reconciles_what_was_in_flight():
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    listener = make_listener(backend, client)
    task = await started(listener)
    backend.server.emit("job.progress", id="job_a", status="running", progress=40, tags=["x"])
    backend.server.emit("job.progress", id="job_b", status="running", progress=40, tags=[])
    backend.server.emit("job.progress", id="job_gone", status="running", progress=40, tags=[])
    backend.server.emit("job.progress", id="job_c", status="running", progress=40, tags=[])
    backend.server.emit("job.completed", id="job_c", status="completed", tags=[])
    # job_c's progress may be dropped for its outcome (coalesced), never both lost.
    await eventually(lambda: len(client.events) + listener.stats.coalesced == 5)
    assert set(listener._in_flight) == {("job", "job_a"), ("job", "job_b"), ("job", "job_gone")}

    # While the stream is down, job_a completes and job_b fails; job_gone was deleted.
    backend.server.jobs["job_a"] = Job(
        id="job_a", status="completed", tags=["x"], workflow={"1": {}}, outputs=[]
    )
    backend.server.jobs["job_b"] = Job(
        id="job_b", status="failed", error={"code": "oom", "message": "out of memory"}
    )
    backend.server.break_streams(WebSocketConnectionError("gone"))
    await eventually(lambda: listener.stats.connects == 2, message="reconnect")
    await eventually(lambda: listener.stats.reconciled == 2, message="reconciliation")
    await eventually(lambda: len(client.events) + listener.stats.coalesced == 7)
    await stop(listener, task)

    completed = client.named("comfy.job.completed")
    failed = client.named("comfy.job.failed")
    assert {e.resource.id for e in completed} == {"comfy.job.job_c", "comfy.job.job_a"}
    assert [e.payload["error"]["code"] for e in failed] == ["oom"]
    reconciled_a = next(e for e in completed if e.resource.id == "comfy.job.job_a")
    assert "workflow" not in reconciled_a.payload
    assert reconciled_a.resource["comfy.tag.x"] == "true"
    # Same deterministic id as the live event would have had: a duplicate is harmless.
    live = comfy_events.from_comfy_event(
        ComfyEvent(event="job.completed", payload={"id": "job_a"}),
        address=backend.address,
        backend_kind=backend.kind,
    )
    assert reconciled_a.id == live.id
    assert listener._in_flight == {}
    assert listener.stats.stream_restarts == 1


async def test_a_still_running_job_stays_in_flight_after_reconcile():
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    listener = make_listener(backend, client)
    task = await started(listener)
    backend.server.emit("job.progress", id="job_r", status="running", progress=5, tags=[])
    await eventually(lambda: len(client.events) == 1)
    backend.server.jobs["job_r"] = Job(id="job_r", status="running")
    assert await listener.reconcile() == 0
    assert ("job", "job_r") in listener._in_flight
    backend.server.jobs["job_r"] = Job(id="job_r", status="cancelled")
    assert await listener.reconcile() == 1
    await eventually(lambda: len(client.events) == 2)
    await stop(listener, task)
    assert client.events[-1].event == "comfy.job.cancelled"


async def test_uploads_seen_in_flight_are_reconciled():
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    listener = make_listener(backend, client)
    task = await started(listener)
    backend.server.emit("input.uploading", id="inp_1", name="cat.png", status="uploading")
    backend.server.emit("model.downloading", id="mod_1", name="m.safetensors", status="downloading")
    await eventually(lambda: len(client.events) == 2)
    backend.server.inputs["inp_1"] = Input(id="inp_1", name="cat.png", status="ready")
    backend.server.models["mod_1"] = Model(
        id="mod_1", name="m.safetensors", status="ready", type="lora"
    )
    assert await listener.reconcile() == 2
    await eventually(lambda: len(client.events) == 4)
    await stop(listener, task)
    names = {e.event: e for e in client.events}
    assert names["comfy.input.ready"].payload["name"] == "cat.png"
    assert names["comfy.model.ready"].resource["comfy.model-type"] == "lora"


async def test_heartbeats_say_whether_the_stream_is_connected():
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    listener = make_listener(backend, client, heartbeat_interval=0.05)
    hb = listener.heartbeat_event()
    assert hb.event == "comfy.listener.heartbeat"
    assert hb.resource.id == "comfy.listener.unit"
    assert hb.resource["comfy.connected"] == "false"

    task = await started(listener)
    await eventually(lambda: any(e.resource["comfy.connected"] == "true" for e in client.events))
    backend.server.break_streams(WebSocketConnectionError("gone"))
    # The replacement stream waits for its restart delay: heartbeats go on meanwhile.
    await eventually(lambda: listener.stats.heartbeats >= 3)
    await stop(listener, task)
    beats = client.named("comfy.listener.heartbeat")
    assert len({b.id for b in beats}) == len(beats)
    assert beats[-1].payload["received"] == listener.stats.received
    assert listener.stats.forwarded == 0  # heartbeats are not counted as forwarded


async def test_heartbeats_say_when_the_listener_is_behind():
    class StuckClient(FakeEventsClient):
        """Takes heartbeats, holds everything else until ``gate`` opens."""

        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()

        async def emit(self, event: Any) -> None:
            if event.event != comfy_events.LISTENER_HEARTBEAT:
                await self.gate.wait()
            await super().emit(event)

    backend, client = MemoryBackend(capabilities=STREAM_ONLY), StuckClient()
    listener = make_listener(backend, client)
    task = await started(listener)
    for i in range(3):
        backend.server.emit("job.completed", id=f"job_{i}", status="completed", tags=[])
    backend.server.emit("job.progress", id="job_x", status="running", progress=5, tags=[])
    backend.server.emit("job.progress", id="job_x", status="running", progress=6, tags=[])
    await eventually(lambda: listener.stats.received == 5)
    # The first outcome is being sent (stuck), two more and one progress wait.
    queue = listener._sender.queue
    queue._clock = lambda: time.monotonic() + 60  # a minute later, as far as ages go
    beat = listener.heartbeat_event()
    assert beat.resource["comfy.behind"] == "true"
    assert beat.payload["queued"] == 4
    assert beat.payload["coalesced"] == 1
    assert beat.payload["oldest_pending_seconds"] >= 59
    assert beat.payload["behind"] is True
    queue._clock = time.monotonic
    client.gate.set()
    await eventually(lambda: listener.stats.queued == 0)
    assert listener.heartbeat_event().resource["comfy.behind"] == "false"
    await stop(listener, task)


async def test_heartbeats_go_on_while_disconnected():
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    listener = make_listener(backend, client, heartbeat_interval=0.02, restart_delay=60)
    task = await started(listener)
    backend.server.break_streams(WebSocketConnectionError("gone"))
    await eventually(lambda: not listener.connected)
    n = len(client.events)
    await eventually(lambda: len(client.events) >= n + 2)
    await stop(listener, task)
    assert client.events[-1].resource["comfy.connected"] == "false"


async def test_a_heartbeat_during_a_disconnect_says_false():
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    listener = make_listener(backend, client, heartbeat_interval=0.02)
    task = await started(listener)

    def beats() -> list[Any]:
        return client.named("comfy.listener.heartbeat")

    await eventually(lambda: any(b.resource["comfy.connected"] == "true" for b in beats()))
    backend.server.drop(reconnect=False)
    # An event still queued from before the drop must not make it look connected again.
    backend.server.emit("job.progress", id="job_1", status="running", tags=[])
    await eventually(lambda: listener.stats.received == 1 and not listener.connected)
    seen = len(beats())
    await eventually(lambda: len(beats()) >= seen + 2, message="heartbeats while reconnecting")
    during = beats()[-1]
    assert during.resource["comfy.connected"] == "false"
    assert during.payload["connected"] is False and during.payload["disconnects"] == 1

    backend.server.reconnect()
    await eventually(lambda: beats()[-1].resource["comfy.connected"] == "true", message="back")
    await stop(listener, task)
    # The stream reconnected by itself: the listener never had to open a new one.
    assert backend.server.streams_opened == 1 and listener.stats.stream_restarts == 0
    # ... and was asked to do so for ever: the listener wraps no reconnect loop of its own
    # around the stream's (one loop reconnects, with no budget: a listener never gives up).
    assert backend.server.forever == [True]
    assert listener.stats.connects == 2


async def test_stop_sends_everything_received_even_when_prefect_hiccups():
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient(fail_first=2)
    listener = make_listener(backend, client)
    task = await started(listener)
    for i in range(200):
        backend.server.emit("input.ready", id=f"inp_{i}", name=f"{i}.png", status="ready")
    await eventually(lambda: listener.stats.received >= 50)
    await stop(listener, task)
    assert listener.stats.forwarded == listener.stats.received
    assert len(client.events) == listener.stats.received
    assert listener.stats.send_errors == 2


async def test_auth_failure_stops_the_listener():
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    backend.server.fail("events", WebSocketAuthError("refused"))
    listener = make_listener(backend, client)
    with pytest.raises(WebSocketAuthError):
        await asyncio.wait_for(listener.run(), scaled(10))
    assert client.exited == 1


async def test_stop_before_run_returns_at_once():
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    listener = make_listener(backend, client)
    listener.stop()
    await asyncio.wait_for(listener.run(), scaled(10))
    assert client.exited == 1


def test_refuses_without_a_prefect_api_url():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: None}):
        with pytest.raises(ComfyConfigError) as info:
            require_prefect_api_url()
        listener = ComfyListener(MemoryBackend(capabilities=STREAM_ONLY), listener_id="x")
        with pytest.raises(ComfyConfigError):
            asyncio.run(listener.run())
    assert "prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api" in str(info.value)
    assert "prefect server start" in str(info.value)


async def test_a_bad_rate_or_cursor_is_a_configuration_error_before_anything_runs(monkeypatch):
    from prefect_comfy.listener.run import run_listener

    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    monkeypatch.setenv("COMFY_LISTENER_EVENTS_PER_SECOND", "-5")
    with pytest.raises(ComfyConfigError, match="COMFY_LISTENER_EVENTS_PER_SECOND"):
        await run_listener(backend, events_client=lambda: client, install_signal_handlers=False)
    monkeypatch.delenv("COMFY_LISTENER_EVENTS_PER_SECOND")
    with pytest.raises(ComfyConfigError, match="not a Prefect variable name"):
        await run_listener(
            backend,
            cursor="variable:bad name",
            events_client=lambda: client,
            install_signal_handlers=False,
        )
    assert backend.server.streams_opened == 0 and client.entered == 0


async def test_a_slow_tag_read_never_holds_back_the_stream():
    """Issue 21 section 2: the tags of an unknown job are read in the background; the events
    behind it are received and forwarded meanwhile, and its own event gets the tags later."""
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    backend.server.read_gate = asyncio.Event()  # a slow REST round trip
    tags = [f"{comfy_events.FLOW_RUN_TAG_PREFIX}{FLOW_RUN}"]
    backend.server.jobs["job_slow"] = Job(id="job_slow", status="running", tags=tags)
    listener = make_listener(backend, client)
    task = await started(listener)
    backend.server.emit("job.progress", id="job_slow", status="running", progress=10)
    backend.server.emit("job.completed", id="job_fast", status="completed", tags=["x"])
    await eventually(lambda: [e.resource.id for e in client.events] == ["comfy.job.job_fast"])
    assert listener.stats.received == 2
    backend.server.read_gate.set()
    await eventually(lambda: len(client.events) == 2)
    await stop(listener, task)
    assert client.events[1].related[0].id == f"prefect.flow-run.{FLOW_RUN}"
    assert backend.server.reads == [("job", "job_slow")]


async def test_coalesced_progress_is_never_built(monkeypatch):
    """Issue 21 section 2: a Prefect event is built only for what is sent, not for every frame."""
    built: list[str] = []
    real = comfy_events.from_comfy_event

    def counting(comfy_event: ComfyEvent, **kw: Any) -> Any:
        built.append(comfy_event.event)
        return real(comfy_event, **kw)

    monkeypatch.setattr(comfy_events, "from_comfy_event", counting)
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    listener = make_listener(backend, client, progress_interval=60)
    task = await started(listener)
    for p in range(50):
        backend.server.emit("job.progress", id="job_1", status="running", progress=p, tags=[])
    await eventually(lambda: listener.stats.received == 50)
    await stop(listener, task)  # sends the one pending progress
    assert len(client.events) <= 2 and client.events[-1].payload["progress"] == 49
    assert len(built) == len(client.events)  # before: one for each of the 50 frames
