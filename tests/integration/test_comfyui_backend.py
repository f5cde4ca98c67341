"""ComfyUIBackend against a real ComfyUI 0.3.75 (never a fake): jobs, uploads, outcomes, one socket."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.exceptions import InvalidWorkflow, NotFound
from prefect_comfy.models import ComfyEvent
from prefect_comfy.waiting.hub import EventHub
from prefect_comfy.waiting.waits import wait_for, wait_for_input, wait_for_model
from tests.support.comfyui_graphs import PNG_MAGIC, _when, empty_to_save, long_graph, stored_events
from tests.support.comfyui_server import RunningComfyUI
from tests.support.waiting import eventually, scaled

pytestmark = pytest.mark.comfyui


@pytest.fixture
async def backend(comfyui_server: RunningComfyUI) -> AsyncIterator[ComfyUIBackend]:
    async with ComfyUIBackend(comfyui_server.url) as b:
        yield b


class Collector:
    """Reads ``events()`` of a backend in a task; ``connected`` is set by ``on_connect``."""

    def __init__(self, backend: ComfyUIBackend, patterns=("*",)) -> None:
        self.backend = backend
        self.events: list[ComfyEvent] = []
        self.connected = asyncio.Event()
        self.task = asyncio.create_task(self._read(patterns))

    async def _read(self, patterns) -> None:
        async def on_connect() -> None:
            self.connected.set()

        async for event in self.backend.events(patterns, on_connect=on_connect):
            self.events.append(event)

    def find(self, name: str, job_id: str) -> ComfyEvent | None:
        return next((e for e in self.events if e.event == name and e.resource_id == job_id), None)

    async def close(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def test_empty_image_completes_and_downloads(backend: ComfyUIBackend, tmp_path: Path) -> None:
    job = await backend.submit(
        empty_to_save(72, prefix="backend"), tags=["smoke", "prefect.flow-run.x"]
    )
    assert job.status == "pending"
    event = await wait_for(backend, "job", job.id, timeout=60)
    assert event.event == "job.completed", event
    assert "smoke" in event.payload["tags"]
    done = await backend.get_job(job.id)
    assert done.status == "completed"
    assert done.tags == ["smoke", "prefect.flow-run.x"]
    [output] = done.outputs
    assert output.type == "image" and output.mime_type == "image/png"
    assert output.download_url.startswith(f"{backend.address}/api/view?filename=backend")
    path = await backend.download(output, tmp_path)
    assert path.read_bytes().startswith(PNG_MAGIC)


async def test_preview_outputs_are_temporary_and_not_downloaded(
    backend: ComfyUIBackend, tmp_path: Path
) -> None:
    from prefect_comfy.orchestration.job_steps import download_outputs

    graph = empty_to_save(64, prefix="kept")
    graph["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    job = await backend.submit(graph)
    event = await wait_for(backend, "job", job.id, timeout=60)
    assert event.event == "job.completed", event
    done = await backend.get_job(job.id)
    kinds = sorted((o.temporary, o.name.split("_")[0]) for o in done.outputs)
    assert [k[0] for k in kinds] == [False, True], done.outputs
    files = await download_outputs(backend, done, tmp_path / "out")
    assert [
        (f.temporary, f.path is not None) for f in sorted(files, key=lambda f: f.temporary)
    ] == [
        (False, True),
        (True, False),
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["kept_00001_.png"]
    both = await download_outputs(backend, done, tmp_path / "all", include_temporary=True)
    assert all(f.path is not None and f.path.is_file() for f in both)


async def test_uploaded_input_feeds_load_image(backend: ComfyUIBackend) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, format="PNG")
    name = f"in-{uuid.uuid4().hex[:8]}.png"
    item = await backend.upload_input(buffer.getvalue(), name=name)
    assert item.status == "ready" and item.name == name
    ready = await wait_for_input(backend, item.id, timeout=30)
    assert ready.event == "input.ready"
    assert (await backend.get_input(item.id)).status == "ready"
    with pytest.raises(NotFound):
        await backend.get_input("no-such-input.png")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": item.name}},
        "2": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": "loaded"},
        },
    }
    job = await backend.submit(graph)
    event = await wait_for(backend, "job", job.id, timeout=60)
    assert event.event == "job.completed", event
    assert event.payload["outputs"][0]["name"].startswith("loaded")


async def test_runtime_error_is_job_failed_naming_the_node(backend: ComfyUIBackend) -> None:
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "3": {
            "class_type": "ImageBlur",
            "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 1.0},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "fail"}},
    }
    job = await backend.submit(graph, tags=["will-fail"])
    event = await wait_for(backend, "job", job.id, timeout=60)
    assert event.event == "job.failed", event
    error = event.payload["error"]
    assert error["node_id"] == "3"
    assert error["node_type"] == "ImageBlur"
    assert error["code"] == "RuntimeError"
    assert "Padding size" in error["message"]
    failed = await backend.get_job(job.id)
    assert failed.status == "failed"
    assert failed.error.node_id == "3" and failed.error.code == "RuntimeError"
    assert failed.tags == ["will-fail"]


async def test_bad_graph_raises_invalid_workflow(backend: ComfyUIBackend) -> None:
    graph = empty_to_save()
    del graph["1"]["inputs"]["width"]
    with pytest.raises(InvalidWorkflow) as info:
        await backend.submit(graph)
    [problem] = info.value.node_errors
    assert problem["node_id"] == "1"
    assert problem["class_type"] == "EmptyImage"
    assert problem["field"] == "width"
    assert "node 1 (EmptyImage), input 'width': Required input is missing" in str(info.value)

    with pytest.raises(InvalidWorkflow) as info:
        await backend.submit({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert info.value.node_errors[0]["node_id"] == "1"
    assert "NoSuchNode" in str(info.value)


async def test_cancel_running_and_pending(
    backend: ComfyUIBackend, comfyui_server: RunningComfyUI
) -> None:
    listener = Collector(
        ComfyUIBackend(comfyui_server.url, client_id=f"other-{uuid.uuid4()}"), ["job.*"]
    )
    await asyncio.wait_for(listener.connected.wait(), scaled(30))
    progress: list[ComfyEvent] = []
    long_job = await backend.submit(long_graph(), tags=["long"])
    waiting = asyncio.create_task(
        wait_for(backend, "job", long_job.id, timeout=120, on_progress=progress.append)
    )
    await eventually(
        lambda: any(e.payload.get("node_class") == "ImageBlur" for e in progress),
        timeout=60,
        message="the long job running a blur",
    )
    pending = await backend.submit(empty_to_save(66, prefix="pending"))
    assert (await backend.get_job(pending.id)).status == "pending"

    started = time.monotonic()
    cancelled = await backend.cancel(pending.id)
    assert cancelled.status == "cancelled"
    event = await wait_for(backend, "job", pending.id, timeout=10)
    assert event.event == "job.cancelled"
    assert time.monotonic() - started < 2.0, "a pending job ends at once"
    assert (await backend.get_job(pending.id)).status == "cancelled"

    running = await backend.cancel(long_job.id)
    assert running.status == "running"  # it stops at the next node boundary
    event = await waiting
    assert event.event == "job.cancelled", event
    assert event.payload["node_id"] in ("11", "2")
    assert (await backend.get_job(long_job.id)).status == "cancelled"
    percents = [e.payload["progress"] for e in progress]
    assert percents == sorted(percents) and 0 < percents[-1] < 100

    # Another client sees both end through the status → queue/history reconciliation.
    await eventually(lambda: listener.find("job.cancelled", long_job.id), timeout=15)
    await eventually(lambda: listener.find("job.cancelled", pending.id), timeout=15)
    await listener.close()


async def test_fifty_jobs_through_one_websocket(backend: ComfyUIBackend) -> None:
    before = backend.stream_stats["connections_opened"]
    jobs = await asyncio.gather(
        *(
            backend.submit(empty_to_save(16 + i % 5, color=i * 997, prefix=f"many{i}"))
            for i in range(50)
        )
    )
    started = time.monotonic()
    outcomes = await asyncio.gather(*(wait_for(backend, "job", j.id, timeout=120) for j in jobs))
    elapsed = time.monotonic() - started
    assert [e.event for e in outcomes] == ["job.completed"] * 50
    assert all(e.payload["outputs"] for e in outcomes)
    assert backend.stream_stats["connections_opened"] - before <= 1
    hub = EventHub.shared(backend)
    assert hub.connections_opened <= hub.streams_opened  # no reconnects
    print(f"50 jobs completed in {elapsed:.2f}s over one WebSocket")


async def test_other_client_sees_completion_via_status_and_history(
    backend: ComfyUIBackend, comfyui_server: RunningComfyUI
) -> None:
    other = ComfyUIBackend(comfyui_server.url, client_id=f"listener-{uuid.uuid4()}")
    assert other.connection_key != backend.connection_key
    collector = Collector(other, ["job.*"])
    await asyncio.wait_for(collector.connected.wait(), scaled(30))
    job = await backend.submit(empty_to_save(70, color=1234, prefix="seen"), tags=["elsewhere"])
    mine = await wait_for(backend, "job", job.id, timeout=60)
    assert mine.event == "job.completed"
    seen = await eventually(lambda: collector.find("job.completed", job.id), timeout=15)
    assert seen.payload["tags"] == ["elsewhere"]
    assert seen.payload["outputs"][0]["name"].startswith("seen")
    assert not [e for e in collector.events if e.event == "job.progress"]  # not its prompt
    await collector.close()
    await other.aclose()


async def test_model_wait_notices_a_copied_file(
    backend: ComfyUIBackend, comfyui_server: RunningComfyUI
) -> None:
    missing = await backend.get_model("upscaler/nothing-here.pth")
    assert missing.status == "pending_upload"
    folder = comfyui_server.models_dir / "upscale_models"  # the server's own, under tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    name = f"test-{uuid.uuid4().hex[:8]}.pth"
    waiting = asyncio.create_task(wait_for_model(backend, f"upscale_models/{name}", timeout=30))
    await eventually(lambda: EventHub.shared(backend).stream_open, timeout=10)
    (folder / name).write_bytes(b"not really a model")
    try:
        event = await waiting
        assert event.event == "model.ready"
        assert (await backend.get_model(f"upscale_models/{name}")).status == "ready"
    finally:
        (folder / name).unlink()


# -- under Prefect: the flow and the listener, unchanged, on the ComfyUI backend ----------------------


@pytest.mark.prefect
async def test_flow_and_listener_on_comfyui(
    comfyui_server: RunningComfyUI, prefect_api_url: str, tmp_path: Path
) -> None:
    from prefect_comfy.backends.comfyui.block import ComfyUIServer
    from prefect_comfy.listener.forwarder import ComfyListener
    from prefect_comfy.orchestration.flows import run_comfy_workflow

    # The listener, as another process would have it: another client id, so no execution messages.
    listener_backend = ComfyUIBackend(comfyui_server.url, client_id=f"listener-{uuid.uuid4()}")
    listener = ComfyListener(
        listener_backend, patterns=("job.*",), heartbeat_interval=None, listener_id="comfyui-itest"
    )
    forwarded: list[ComfyEvent] = []
    original = listener.forward

    async def forward(comfy_event: ComfyEvent, **kwargs):
        forwarded.append(comfy_event)
        return await original(comfy_event, **kwargs)

    listener.forward = forward  # type: ignore[method-assign]
    running = asyncio.create_task(listener.run())
    await eventually(lambda: listener.stats.connects >= 1, timeout=30, message="listener connected")

    flow = run_comfy_workflow
    state = await asyncio.to_thread(
        flow,
        ComfyUIServer(url=comfyui_server.url),
        long_graph(1024, 3),  # long enough to still run when the wait subscribes
        tags=["on-comfyui"],
        output_dir=str(tmp_path),
        return_state=True,
    )
    assert state.is_completed(), state
    result = await state.result()
    assert result.status == "completed" and result.tags == ["on-comfyui"]
    assert result.outputs[0].path.read_bytes().startswith(PNG_MAGIC)
    job_id = result.job_id

    def names(stored: list) -> set[str]:
        return {e.event for e in stored}

    wanted = {"comfy.job.submitted", "comfy.job.progress", "comfy.job.completed"}
    stored = await eventually(
        lambda: _when(stored_events(job_id), lambda s: wanted <= names(s)),
        timeout=30,
        message="the flow's Prefect events",
    )
    for event in stored:
        assert event.resource.id == f"comfy.job.{job_id}"
        assert event.resource["comfy.backend"] == "comfyui"
        assert event.resource["comfy.tag.on-comfyui"] == "true"
    completed = [e for e in stored if e.event == "comfy.job.completed"]
    assert len(completed) == 1  # the sensor's and the listener's are one event (same id)
    assert any(
        r.id == f"prefect.flow-run.{state.state_details.flow_run_id}" for r in completed[0].related
    )

    await eventually(
        lambda: any(e.event == "job.completed" and e.resource_id == job_id for e in forwarded),
        timeout=15,
        message="the listener forwarding job.completed",
    )
    listener.stop()
    await asyncio.wait_for(running, scaled(30))
    await listener_backend.aclose()


def test_waits_from_two_threads_share_one_comfyui_socket(comfyui_server: RunningComfyUI) -> None:
    """Two threads, each with its own event loop, wait on one ComfyUI: ONE WebSocket."""
    import threading

    async def submit() -> tuple[list[str], int]:
        async with ComfyUIBackend(comfyui_server.url) as b:
            await EventHub.shared(b).aclose()  # start from no shared stream
            before = b.stream_stats["connections_opened"]
            jobs = [
                await b.submit(empty_to_save(24, color=i, prefix=f"threads{i}")) for i in (1, 2)
            ]
            return [j.id for j in jobs], before

    ids, before = asyncio.run(submit())
    results: dict[int, object] = {}

    def wait_in_thread(n: int) -> None:
        async def main() -> ComfyEvent:
            async with ComfyUIBackend(comfyui_server.url) as b:
                return await wait_for(b, "job", ids[n], timeout=60)

        try:
            results[n] = asyncio.run(main())
        except BaseException as exc:  # reported by the assertion below
            results[n] = exc

    threads = [threading.Thread(target=wait_in_thread, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert [getattr(results[n], "event", results[n]) for n in range(2)] == ["job.completed"] * 2
    probe = ComfyUIBackend(comfyui_server.url)
    assert probe.stream_stats["connections_opened"] - before == 1
