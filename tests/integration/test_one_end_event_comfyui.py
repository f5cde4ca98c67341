"""One job's end is one Prefect event, whichever path saw it (issue 17, defect 3.5), live.

A real ComfyUI 0.3.75, comfy-api-proxy 0.1.6 on it, a ComfyUI listener on the ComfyUI itself and a
v2 flow through the proxy, both sending to a real Prefect server (the test harness). The proxy
reuses ComfyUI's prompt id as its job id, so both paths see one job under two server addresses:
before the fix each sent its own ``comfy.job.completed`` and Prefect stored two.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.backends.v2.block import ComfyV2Credentials
from prefect_comfy.listener.forwarder import ComfyListener
from prefect_comfy.listener.sender import prefect_events_client
from prefect_comfy.orchestration.events import emitter
from prefect_comfy.orchestration.events.names import JOB_COMPLETED
from tests.support.api_proxy import RunningProxy
from tests.support.comfyui_graphs import PNG_MAGIC, long_graph
from tests.support.comfyui_server import RunningComfyUI
from tests.support.waiting import eventually, scaled

pytestmark = [pytest.mark.comfyui, pytest.mark.prefect]


class RecordingClient:
    """The listener's real Prefect events client, and a record of what went through it."""

    def __init__(self, sent: list[Any]) -> None:
        self.sent = sent
        self._real: Any = None

    async def __aenter__(self) -> RecordingClient:
        self._real = prefect_events_client()
        await self._real.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._real.__aexit__(*exc)

    async def emit(self, event: Any) -> None:
        await self._real.emit(event)
        self.sent.append(event)


async def stored(name: str, resource_id: str) -> list[Any]:
    """The events ``name`` about ``resource_id`` that the Prefect server has stored."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource_id])
    )
    async with get_client() as client:
        return (await client.read_events(filter=flt, limit=50)).events


async def test_a_comfyui_listener_and_a_v2_flow_store_one_completed_event_for_one_job(
    comfyui_server: RunningComfyUI,
    api_proxy: RunningProxy,
    prefect_api_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.events import Event
    from prefect.events.clients import get_events_client
    from prefect.events.worker import EventsWorker

    from prefect_comfy.orchestration.flows import run_comfy_workflow

    # What the flow's path queues for Prefect: the real sink, watched.
    from_flow: list[Any] = []
    real_sink = emitter.prefect_event_sink

    def watched_sink(event: Any) -> None:
        from_flow.append(event)
        real_sink(event)

    monkeypatch.setattr(emitter, "prefect_event_sink", watched_sink)

    # The listener on the ComfyUI directly, as another process has it: a client id of its own.
    from_listener: list[Any] = []
    backend = ComfyUIBackend(comfyui_server.url, client_id=f"listener-{uuid.uuid4()}")
    listener = ComfyListener(
        backend,
        patterns=("job.*",),
        heartbeat_interval=None,
        listener_id="one-end-itest",
        events_client=lambda: RecordingClient(from_listener),
    )
    running = asyncio.create_task(listener.run())
    try:
        await eventually(
            lambda: listener.stats.connects >= 1 or running.done(),
            timeout=30,
            message="the listener connected",
        )
        assert not running.done(), running

        # A model-free job through the proxy (Comfy API v2), by the flow.
        state = await asyncio.to_thread(
            run_comfy_workflow,
            ComfyV2Credentials(endpoint=api_proxy.url, api_key=api_proxy.token),
            long_graph(512, 1),
            tags=["one-end"],
            output_dir=str(tmp_path),
            return_state=True,
        )
        assert state.is_completed(), state
        result = await state.result()
        assert result.outputs[0].path.read_bytes().startswith(PNG_MAGIC)
        job = f"comfy.job.{result.job_id}"

        def ends(sent: list[Any]) -> list[Any]:
            return [e for e in sent if e.event == JOB_COMPLETED and e.resource.id == job]

        [flow_end] = ends(from_flow)
        assert flow_end.resource["comfy.backend"] == "v2"
        [listener_end] = await eventually(
            lambda: ends(from_listener),
            timeout=60,
            message=f"the listener sending comfy.job.completed for {job}",
        )
        assert listener_end.resource["comfy.backend"] == "comfyui"
    finally:
        listener.stop()
        await asyncio.wait_for(running, scaled(30))
        await backend.aclose()

    # Both were sent; a marker sent after them, once stored, says the server has read them too.
    await EventsWorker.drain_all(timeout=scaled(30))
    marker = f"test.marker.{uuid.uuid4()}"
    async with get_events_client() as client:
        await client.emit(Event(event="test.marker", resource={"prefect.resource.id": marker}))
    await eventually(
        lambda: stored("test.marker", marker), timeout=60, message="the marker event stored"
    )
    completed = await eventually(
        lambda: stored(JOB_COMPLETED, job), timeout=30, message=f"{JOB_COMPLETED} for {job} stored"
    )
    assert len(completed) == 1, [(e.id, e.resource.get("comfy.backend")) for e in completed]
    assert listener_end.id == flow_end.id == completed[0].id  # one event, whichever path saw it
