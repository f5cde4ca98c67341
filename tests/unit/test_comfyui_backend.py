"""ComfyUIBackend on in-memory seams: httpx.MockTransport for REST, a fake WebSocket for the stream.

The behaviour against a real ComfyUI is tested in tests/integration/test_comfyui_backend.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.error import URLError

import httpx
import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from prefect_comfy.backends.comfyui import mapping as m
from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.backends.comfyui.block import ComfyUIServer
from prefect_comfy.backends.comfyui.previews import MAX_PREVIEW_BYTES
from prefect_comfy.exceptions import (
    ComfyConfigError,
    InvalidWorkflow,
    NotFound,
    ServerError,
    WebSocketAuthError,
)
from prefect_comfy.models import Output, preview_image
from prefect_comfy.redaction import redact_url
from prefect_comfy.settings import ComfySettings
from tests.support.comfyui_frames import JPEG, PNG, legacy, with_metadata
from tests.support.waiting import eventually, eventually_sync, scaled

KEY = "comfyui-unit-comfyui-key"
GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "u"}},
}
FAST = ComfySettings(max_retries=0, max_reconnect_attempts=0, reconnect_delay=0.01)


class FakeComfyUI:
    """Just enough of ComfyUI's REST answers for the backend's unit tests; records requests."""

    def __init__(self, origin: str = "https://comfy.test:8188") -> None:
        self.origin = origin
        self.requests: list[httpx.Request] = []
        self.running: list[list] = []
        self.pending: list[list] = []
        self.history: dict[str, dict] = {}
        self.models: dict[str, list[str]] = {"checkpoints": []}
        self.inputs: set[str] = set()
        self.prompt_answer: tuple[int, dict] | None = None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def finish(self, prompt_id: str, graph: dict = GRAPH, extra: dict | None = None) -> None:
        self.history[prompt_id] = {
            "prompt": [0, prompt_id, graph, extra or {}, ["2"]],
            "outputs": {
                "2": {"images": [{"filename": "u_00001_.png", "subfolder": "", "type": "output"}]}
            },
            "status": {"status_str": "success", "completed": True, "messages": []},
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/api/prompt" and request.method == "POST":
            if self.prompt_answer:
                return httpx.Response(self.prompt_answer[0], json=self.prompt_answer[1])
            body = json.loads(request.content)
            pid = body.get("prompt_id") or str(uuid.uuid4())
            self.pending.append(
                [
                    len(self.pending),
                    pid,
                    body["prompt"],
                    {"client_id": body["client_id"], **body.get("extra_data", {})},
                    ["2"],
                ]
            )
            return httpx.Response(200, json={"prompt_id": pid, "number": 0, "node_errors": {}})
        if path == "/api/queue" and request.method == "GET":
            return httpx.Response(
                200, json={"queue_running": self.running, "queue_pending": self.pending}
            )
        if path == "/api/queue" and request.method == "POST":
            delete = json.loads(request.content).get("delete", [])
            self.pending = [item for item in self.pending if item[1] not in delete]
            return httpx.Response(200)
        if path == "/api/interrupt":
            return httpx.Response(200)
        if path == "/api/history":
            n = int(request.url.params.get("max_items", 10_000))
            return httpx.Response(200, json=dict(list(self.history.items())[-n:]))
        if path.startswith("/api/history/"):
            pid = path.rsplit("/", 1)[1]
            return httpx.Response(200, json={pid: self.history[pid]} if pid in self.history else {})
        if path.startswith("/api/models/"):
            folder = path.rsplit("/", 1)[1]
            if folder not in self.models:
                return httpx.Response(404)
            return httpx.Response(200, json=self.models[folder])
        if path == "/api/upload/image":
            return httpx.Response(
                200, json={"name": "up.png", "subfolder": "masks", "type": "input"}
            )
        if path == "/api/view":
            name = request.url.params["filename"]
            sub = request.url.params.get("subfolder")
            if request.url.params.get("type") == "input":
                full = f"{sub}/{name}" if sub else name
                return httpx.Response(
                    200 if full in self.inputs else 404,
                    content=b"x" if full in self.inputs else b"",
                )
            if request.url.params.get("redirect"):
                return httpx.Response(
                    302, headers={"Location": "https://storage.test/signed/u.png?sig=abc"}
                )
            return httpx.Response(200, content=b"\x89PNG\r\n\x1a\nfake")
        if request.url.host == "storage.test":
            return httpx.Response(200, content=b"\x89PNG\r\n\x1a\nsigned")
        if path == "/api/boom":
            return httpx.Response(500, text=f"oops {KEY}")
        return httpx.Response(404)

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]


@pytest.fixture
def fake() -> FakeComfyUI:
    return FakeComfyUI()


@pytest.fixture
async def backend(fake: FakeComfyUI):
    async with ComfyUIBackend(fake.origin, transport=fake.transport(), settings=FAST) as b:
        yield b


# -- identity and secrets ---------------------------------------------------------------------------
def test_identity_is_shared_per_process_and_never_shows_the_key() -> None:
    a = ComfyUIBackend("http://comfy.test:8188/", KEY)
    b = ComfyUIBackend("http://comfy.test:8188", KEY)
    assert a.address == "http://comfy.test:8188" and a.kind == "comfyui"
    assert a.client_id == b.client_id == a.clone().client_id
    assert a.connection_key == b.connection_key == a.clone().connection_key
    assert ComfyUIBackend("http://comfy.test:8188").connection_key != a.connection_key
    other = ComfyUIBackend("http://comfy.test:8188", KEY, client_id="listener")
    assert other.connection_key != a.connection_key
    for text in (repr(a), a.connection_key, redact_url(a.ws_url()), str(a.__dict__.get("_memory"))):
        assert KEY not in text
    assert f"token={KEY}" in a.ws_url() and a.ws_url().startswith(
        "ws://comfy.test:8188/ws?clientId="
    )
    assert (
        ComfyUIBackend("https://cloud.comfy.org").ws_url().startswith("wss://cloud.comfy.org/ws?")
    )
    with pytest.raises(ComfyConfigError):
        ComfyUIBackend("ftp://nowhere")


async def test_key_goes_as_header_to_the_server_only(fake: FakeComfyUI, tmp_path: Path) -> None:
    async with ComfyUIBackend(fake.origin, KEY, transport=fake.transport(), settings=FAST) as b:
        fake.running.append([0, "r1", GRAPH, {}, ["2"]])
        await b.get_job("r1")
        assert fake.requests[-1].headers["X-API-Key"] == KEY
        output = Output(
            id="o",
            name="u.png",
            download_url=f"{fake.origin}/api/view?filename=u.png&type=output&redirect=1",
        )
        path = await b.download(output, tmp_path)
        assert path.read_bytes().endswith(b"signed")
        signed = fake.requests[-1]
        assert signed.url.host == "storage.test" and "X-API-Key" not in signed.headers
        assert fake.requests[-2].headers["X-API-Key"] == KEY
        with pytest.raises(ServerError) as info:
            await b.http.json("GET", "/api/boom")
        assert KEY not in str(info.value)


# -- jobs ---------------------------------------------------------------------------------------------
async def test_submit_sends_client_id_and_tags(fake: FakeComfyUI, backend: ComfyUIBackend) -> None:
    job = await backend.submit(GRAPH, tags=["a", "prefect.flow-run.f1", "a"])
    assert job.status == "pending" and job.tags == ["a", "prefect.flow-run.f1"]
    [request] = fake.sent("POST", "/api/prompt")
    body = json.loads(request.content)
    assert body["client_id"] == backend.client_id
    assert body["extra_data"] == {m.EXTRA_KEY: {"tags": ["a", "prefect.flow-run.f1"]}}
    assert "prompt_id" not in body
    assert (await backend.get_job(job.id)).tags == ["a", "prefect.flow-run.f1"]


async def test_idempotency_key_returns_the_first_prompt(
    fake: FakeComfyUI, backend: ComfyUIBackend
) -> None:
    first = await backend.submit(GRAPH, idempotency_key="task-run-1")
    again = await backend.submit(GRAPH, idempotency_key="task-run-1")
    assert again.id == first.id and again.status == "pending"
    fake.pending.clear()
    fake.finish(first.id)
    assert (await backend.submit(GRAPH, idempotency_key="task-run-1")).status == "completed"
    assert len(fake.sent("POST", "/api/prompt")) == 1
    other = await backend.submit(GRAPH, idempotency_key="task-run-2")
    assert other.id != first.id


async def test_refused_graph_is_invalid_workflow(
    fake: FakeComfyUI, backend: ComfyUIBackend
) -> None:
    fake.prompt_answer = (
        400,
        {
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            },
            "node_errors": {
                "1": {
                    "errors": [
                        {
                            "type": "value_smaller_than_min",
                            "message": "Value 0 smaller than min of 1",
                            "details": "width",
                            "extra_info": {"input_name": "width"},
                        }
                    ],
                    "class_type": "EmptyImage",
                }
            },
        },
    )
    with pytest.raises(
        InvalidWorkflow, match=r"node 1 \(EmptyImage\), input 'width': Value 0 smaller"
    ):
        await backend.submit(GRAPH)
    with pytest.raises(ComfyConfigError):
        await backend.submit({})


async def test_get_job_reads_queue_then_history(fake: FakeComfyUI, backend: ComfyUIBackend) -> None:
    fake.running.append([0, "r", GRAPH, m.extra_data_for(["t"], None), ["2"]])
    fake.pending.append([1, "p", GRAPH, {}, ["2"]])
    fake.finish("done")
    assert (await backend.get_job("r")).status == "running"
    assert (await backend.get_job("r")).tags == ["t"]
    assert (await backend.get_job("p")).status == "pending"
    done = await backend.get_job("done")
    assert done.status == "completed"
    assert (
        done.outputs[0].download_url
        == f"{fake.origin}/api/view?filename=u_00001_.png&subfolder=&type=output"
    )
    assert [o.name for o in await backend.outputs("done")] == ["u_00001_.png"]
    with pytest.raises(NotFound):
        await backend.get_job("nowhere")


async def test_cancel_pending_deletes_and_answers_cancelled(
    fake: FakeComfyUI, backend: ComfyUIBackend
) -> None:
    job = await backend.submit(GRAPH, tags=["x"])
    cancelled = await backend.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.tags == ["x"]
    [delete] = fake.sent("POST", "/api/queue")
    assert json.loads(delete.content) == {"delete": [job.id]}
    assert (await backend.get_job(job.id)).status == "cancelled"  # remembered in this process
    assert (await backend.clone().get_job(job.id)).status == "cancelled"


async def test_cancel_running_interrupts_and_terminal_is_returned(
    fake: FakeComfyUI, backend: ComfyUIBackend
) -> None:
    fake.running.append([0, "r", GRAPH, {}, ["2"]])
    assert (await backend.cancel("r")).status == "running"
    [interrupt] = fake.sent("POST", "/api/interrupt")
    assert json.loads(interrupt.content) == {"prompt_id": "r"}
    fake.finish("d")
    assert (await backend.cancel("d")).status == "completed"
    assert len(fake.sent("POST", "/api/interrupt")) == 1


async def test_unfinished_jobs_by_tag_come_from_the_queue(
    fake: FakeComfyUI, backend: ComfyUIBackend
) -> None:
    assert backend.capabilities.find_jobs_by_tag and not backend.capabilities.upload_models
    assert not backend.capabilities.global_event_stream
    fake.running.append([0, "r", GRAPH, m.extra_data_for(["run-1", "x"], None), ["2"]])
    fake.pending.append([1, "p", GRAPH, m.extra_data_for(["run-1"], None), ["2"]])
    fake.pending.append([2, "other", GRAPH, m.extra_data_for(["run-2"], None), ["2"]])
    fake.finish("done", extra=m.extra_data_for(["run-1"], None))
    jobs = await backend.unfinished_jobs("run-1")
    assert sorted((j.id, j.status) for j in jobs) == [("p", "pending"), ("r", "running")]
    assert await backend.unfinished_jobs("nobody") == []


# -- uploads and models --------------------------------------------------------------------------------
async def test_upload_input_multipart(
    fake: FakeComfyUI, backend: ComfyUIBackend, tmp_path: Path
) -> None:
    source = tmp_path / "up.png"
    source.write_bytes(b"\x89PNGdata")
    item = await backend.upload_input(source, name="masks/up.png")
    assert (item.id, item.name, item.status) == ("masks/up.png", "masks/up.png", "ready")
    [request] = fake.sent("POST", "/api/upload/image")
    body = request.content
    assert b'name="image"; filename="up.png"' in body
    assert b'name="type"\r\n\r\ninput' in body
    assert b'name="overwrite"\r\n\r\nfalse' in body
    assert b'name="subfolder"\r\n\r\nmasks' in body
    with pytest.raises(NotFound):
        await backend.get_input("masks/up.png")
    fake.inputs.add("masks/up.png")
    assert (await backend.get_input("masks/up.png")).status == "ready"
    with pytest.raises(ComfyConfigError):
        await backend.upload_input(b"bytes")


async def test_models_cannot_be_uploaded_and_are_found_in_folders(
    fake: FakeComfyUI, backend: ComfyUIBackend
) -> None:
    with pytest.raises(ComfyConfigError, match=r"models/loras/"):
        await backend.upload_model(b"x", type="lora", name="detail.safetensors")
    missing = await backend.get_model("checkpoint/sd.safetensors")
    assert (missing.status, missing.type, missing.name) == (
        "pending_upload",
        "checkpoint",
        "sd.safetensors",
    )
    fake.models["checkpoints"].append("sd.safetensors")
    assert (await backend.get_model("checkpoints/sd.safetensors")).status == "ready"
    with pytest.raises(NotFound):
        await backend.get_model("nope/x")


# -- the stream, over a fake WebSocket -----------------------------------------------------------------
class FakeSocket:
    """A WebSocket the test feeds frames into (from any thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False

    def send(self, kind: str, data: dict) -> None:
        self.loop.call_soon_threadsafe(
            self.frames.put_nowait, json.dumps({"type": kind, "data": data})
        )

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        item = await self.frames.get()
        if item is None:
            raise StopAsyncIteration
        return item

    def push(self, raw: bytes) -> None:
        """A binary frame (a preview)."""
        self.loop.call_soon_threadsafe(self.frames.put_nowait, raw)

    def drop(self) -> None:
        """End the socket as if the server had closed it."""
        self.loop.call_soon_threadsafe(self.frames.put_nowait, None)

    async def close(self) -> None:
        self.closed = True


class FakeConnect:
    def __init__(self) -> None:
        self.sockets: list[FakeSocket] = []
        self.urls: list[str] = []
        self.refuse: int | None = None

    async def __call__(self, url: str, **kwargs: Any) -> FakeSocket:
        self.urls.append(url)
        if self.refuse:
            raise InvalidStatus(Response(self.refuse, "Unauthorized", Headers()))
        sock = FakeSocket()
        self.sockets.append(sock)
        return sock


async def collect(backend: ComfyUIBackend, patterns=("*",)):
    events: list = []
    connected = asyncio.Event()

    async def on_connect() -> None:
        connected.set()

    async def read() -> None:
        async for event in backend.events(patterns, on_connect=on_connect):
            events.append(event)

    task = asyncio.create_task(read())
    await asyncio.wait_for(connected.wait(), scaled(5))
    return events, task


def find(events: list, name: str, rid: str):
    return next((e for e in events if e.event == name and e.resource_id == rid), None)


async def test_stream_maps_frames(fake: FakeComfyUI) -> None:
    """One ``events()`` call, one socket; sharing it is the waiting layer's job (see
    test_waits_from_two_loops_share_one_comfyui_socket)."""
    connect = FakeConnect()
    b = ComfyUIBackend(
        fake.origin,
        KEY,
        client_id=f"unit-{uuid.uuid4()}",
        transport=fake.transport(),
        settings=FAST,
        connect=connect,
    )
    events, task = await collect(b)
    assert len(connect.sockets) == 1 and b.stream_stats["connections_opened"] == 1
    assert f"clientId={b.client_id}" in connect.urls[0] and f"token={KEY}" in connect.urls[0]
    sock = connect.sockets[0]

    job = await b.submit(GRAPH, tags=["t"])
    sock.send("execution_start", {"prompt_id": job.id})
    sock.send("executing", {"node": "2", "prompt_id": job.id})
    fake.pending.clear()
    fake.finish(job.id, extra=m.extra_data_for(["t"], None))
    sock.send("execution_success", {"prompt_id": job.id})
    sock.send("status", {"status": {"exec_info": {"queue_remaining": 0}}})
    done = await eventually(lambda: find(events, "job.completed", job.id), timeout=5)
    assert done.payload["outputs"][0]["name"] == "u_00001_.png" and done.payload["tags"] == ["t"]
    progress = [e for e in events if e.event == "job.progress"]
    assert progress[-1].payload == {
        "id": job.id,
        "status": "running",
        "progress": 0.0,
        "node_id": "2",
        "node_class": "SaveImage",
        "tags": ["t"],
    }

    # Another client's prompt, seen only through status → queue/history reconciliation.
    fake.finish("theirs", extra=m.extra_data_for(["x"], None))
    sock.send("status", {"status": {"exec_info": {"queue_remaining": 0}}})
    theirs = await eventually(lambda: find(events, "job.completed", "theirs"), timeout=5)
    assert theirs.payload["tags"] == ["x"]

    # A failure straight from the frame when no history comes (and from history when it does).
    sock.send(
        "execution_interrupted", {"prompt_id": "gone", "node_id": "11", "node_type": "ImageBlur"}
    )
    fake.history["gone"] = {
        "prompt": [0, "gone", GRAPH, {}, []],
        "outputs": {},
        "status": {
            "status_str": "error",
            "messages": [
                [
                    "execution_interrupted",
                    {"prompt_id": "gone", "node_id": "11", "node_type": "ImageBlur"},
                ]
            ],
        },
    }
    cancelled = await eventually(lambda: find(events, "job.cancelled", "gone"), timeout=5)
    assert cancelled.payload["node_id"] == "11"

    # A pending job this process deletes: job.cancelled at once, though no frame names it.
    pending = await b.submit(GRAPH)
    await b.cancel(pending.id)
    await eventually(lambda: find(events, "job.cancelled", pending.id), timeout=5)

    # An upload is ready when answered.
    await b.upload_input(b"png", name="a.png")
    await eventually(lambda: find(events, "input.ready", "masks/up.png"), timeout=5)
    assert len([e for e in events if e.event == "job.completed" and e.resource_id == job.id]) == 1

    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await eventually(lambda: sock.closed, timeout=5, message="the socket closed with its reader")
    await b.aclose()


async def test_listener_reconciliation_sees_deleted_pending_prompt(fake: FakeComfyUI) -> None:
    connect = FakeConnect()
    fake.pending.append([0, "p-other", GRAPH, m.extra_data_for(["o"], None), ["2"]])
    b = ComfyUIBackend(
        fake.origin,
        client_id=f"unit-{uuid.uuid4()}",
        transport=fake.transport(),
        settings=FAST,
        connect=connect,
    )
    events, task = await collect(b, ["job.*"])
    fake.pending.clear()  # deleted by its own client: no frame, no history
    connect.sockets[0].send("status", {"status": {"exec_info": {"queue_remaining": 0}}})
    event = await eventually(lambda: find(events, "job.cancelled", "p-other"), timeout=5)
    assert event.payload["tags"] == ["o"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await b.aclose()


async def test_the_reader_hears_a_drop_before_the_reconnect(fake: FakeComfyUI) -> None:
    connect = FakeConnect()
    settings = ComfySettings(max_retries=0, max_reconnect_attempts=3, reconnect_delay=0.01)
    b = ComfyUIBackend(
        fake.origin,
        client_id=f"unit-{uuid.uuid4()}",
        transport=fake.transport(),
        settings=settings,
        connect=connect,
    )
    calls: dict[str, list[str]] = {"a": [], "b": []}

    def reader(name: str) -> asyncio.Task[None]:
        async def on_connect() -> None:
            calls[name].append("connect")

        async def on_disconnect() -> None:
            calls[name].append("disconnect")
            if name == "b":
                raise RuntimeError("a failing hook is logged, not raised")

        async def read() -> None:
            async for _ in b.events(on_connect=on_connect, on_disconnect=on_disconnect):
                pass

        return asyncio.create_task(read())

    # One reader per socket (a second one would have a socket of its own): "b" has a failing hook.
    for name in ("a", "b"):
        connect.sockets.clear()
        tasks = [reader(name)]
        await eventually(lambda n=name: calls[n] == ["connect"], timeout=5)
        assert len(connect.sockets) == 1
        connect.sockets[0].drop()
        reconnected = ["connect", "disconnect", "connect"]
        await eventually(lambda n=name, r=reconnected: calls[n] == r, timeout=5)
        assert len(connect.sockets) == 2 and not any(t.done() for t in tasks)

        for t in tasks:  # closing the iterator is not a drop
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await eventually(lambda: connect.sockets[1].closed, timeout=5)
        assert calls[name] == reconnected
    await b.aclose()


def test_building_a_backend_opens_no_client() -> None:
    b = ComfyUIBackend("https://comfy.test", KEY)
    assert b.http._client is None  # made on the first request, with the shared SSL context


async def test_refused_handshake_is_websocket_auth_error(fake: FakeComfyUI) -> None:
    connect = FakeConnect()
    connect.refuse = 401
    b = ComfyUIBackend(
        fake.origin,
        KEY,
        client_id=f"unit-{uuid.uuid4()}",
        transport=fake.transport(),
        settings=FAST,
        connect=connect,
    )
    with pytest.raises(WebSocketAuthError) as info:
        async for _ in b.events():
            pass
    assert KEY not in str(info.value)
    await b.aclose()


# -- the block ------------------------------------------------------------------------------------
class TestStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[ComfyUIServer]:
        return ComfyUIServer

    def test_has_a_valid_image(self, block) -> None:
        try:
            super().test_has_a_valid_image(block)
        except URLError as exc:  # the suite downloads the logo: no network, no check
            pytest.skip(f"logo not reachable: {exc}")


def test_block_makes_a_backend_and_hides_the_key() -> None:
    server = ComfyUIServer(url="http://127.0.0.1:9999", api_key=KEY)
    backend = server.get_backend()
    assert isinstance(backend, ComfyUIBackend)
    assert backend.address == "http://127.0.0.1:9999"
    assert backend.api_key.get_secret_value() == KEY
    assert KEY not in repr(server) and KEY not in str(server.model_dump())
    assert ComfyUIServer().get_backend().address == "http://127.0.0.1:8188"
    assert ComfyUIServer(api_key="**********").get_backend().api_key is None
    assert ComfyUIServer.get_block_type_slug() == "comfyui-server"


async def test_a_restart_loses_queued_prompts_it_does_not_cancel_them(fake: FakeComfyUI) -> None:
    """Issue 11 item 7: prompts gone from queue and history across a reconnect are ``job.lost``."""
    connect = FakeConnect()
    settings = ComfySettings(max_retries=0, max_reconnect_attempts=3, reconnect_delay=0.01)
    fake.pending.append([0, "p-lost", GRAPH, m.extra_data_for(["r"], None), ["2"]])
    fake.pending.append([1, "p-deleted", GRAPH, {}, ["2"]])
    b = ComfyUIBackend(
        fake.origin,
        client_id=f"unit-{uuid.uuid4()}",
        transport=fake.transport(),
        settings=settings,
        connect=connect,
    )
    events, task = await collect(b, ["job.*"])
    sock = connect.sockets[0]
    fake.pending = [item for item in fake.pending if item[1] != "p-deleted"]
    sock.send("status", {"status": {"exec_info": {"queue_remaining": 1}}})
    deleted = await eventually(lambda: find(events, "job.cancelled", "p-deleted"), timeout=5)
    assert deleted.payload["status"] == "cancelled"
    fake.pending.clear()  # ComfyUI restarts: its queue is gone, and so is the socket
    sock.drop()
    lost = await eventually(lambda: find(events, "job.lost", "p-lost"), timeout=5)
    assert lost.payload["status"] == "lost" and lost.payload["tags"] == ["r"]
    assert lost.payload["error"]["code"] == "lost"
    assert find(events, "job.cancelled", "p-lost") is None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await b.aclose()


async def test_patterns_filter_what_a_reader_gets(fake: FakeComfyUI) -> None:
    connect = FakeConnect()
    b = ComfyUIBackend(
        fake.origin,
        client_id=f"unit-{uuid.uuid4()}",
        transport=fake.transport(),
        settings=FAST,
        connect=connect,
    )
    events, task = await collect(b, ["job.completed"])
    job = await b.submit(GRAPH)
    sock = connect.sockets[0]
    sock.send("execution_start", {"prompt_id": job.id})
    fake.pending.clear()
    fake.finish(job.id)
    sock.send("execution_success", {"prompt_id": job.id})
    await eventually(lambda: find(events, "job.completed", job.id), timeout=5)
    await b.upload_input(b"png", name="a.png")
    assert not [e for e in events if e.event != "job.completed"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await b.aclose()


def test_waits_from_two_loops_share_one_comfyui_socket(fake: FakeComfyUI) -> None:
    """The sharing the ComfyUI backend no longer does itself: the waiting layer's one hub per
    server and credentials per process opens ONE socket for waits from two threads."""
    import threading

    from prefect_comfy.waiting.hub import EventHub

    connect = FakeConnect()
    b = ComfyUIBackend(
        fake.origin,
        KEY,
        client_id=f"unit-{uuid.uuid4()}",
        transport=fake.transport(),
        settings=FAST,
        connect=connect,
    )
    fake.running.append([0, "p-1", GRAPH, {}, ["2"]])
    fake.pending.append([1, "p-2", GRAPH, {}, ["2"]])
    hub = EventHub.shared(b)
    results: dict[str, Any] = {}

    def wait_in_thread(prompt_id: str) -> None:
        async def main() -> Any:
            return await hub.wait("job", prompt_id, timeout=10)

        try:
            results[prompt_id] = asyncio.run(main())
        except BaseException as exc:  # reported by the assertion below
            results[prompt_id] = exc

    threads = [threading.Thread(target=wait_in_thread, args=(p,)) for p in ("p-1", "p-2")]
    for thread in threads:
        thread.start()
    eventually_sync(lambda: hub.stats["pending"] == 2 and connect.sockets, message="two waits")
    for prompt_id in ("p-1", "p-2"):
        fake.finish(prompt_id)
    fake.running.clear()
    fake.pending.clear()
    connect.sockets[0].send("status", {"status": {"exec_info": {"queue_remaining": 0}}})
    for thread in threads:
        thread.join(10)
    assert [results[p].event for p in ("p-1", "p-2")] == ["job.completed"] * 2, results
    assert len(connect.sockets) == 1


async def test_unfinished_jobs_is_one_queue_read(
    fake: FakeComfyUI, backend: ComfyUIBackend
) -> None:
    """The waiting layer reconciles ComfyUI prompts from one ``/queue`` read, not a read each."""
    fake.running.append([0, "r-1", GRAPH, m.extra_data_for(["a"], None), ["2"]])
    fake.pending.append([1, "p-1", GRAPH, {}, ["2"]])
    jobs = await backend.unfinished_jobs()
    assert [(j.id, j.status, j.tags) for j in jobs] == [
        ("r-1", "running", ["a"]),
        ("p-1", "pending", []),
    ]
    assert len(fake.sent("GET", "/api/queue")) == 1


async def test_a_websocket_frame_larger_than_the_cap_is_refused() -> None:
    """A server cannot make the client hold a frame of any size (issue 20, #5)."""
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosedError

    from prefect_comfy.backends.comfyui.http import ComfyUIHttp

    async def handler(ws: Any) -> None:
        await ws.send(b"x" * (2 * 2**20))
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        settings = ComfySettings(max_response_bytes=2**20)
        http = ComfyUIHttp(f"http://127.0.0.1:{port}", None, settings=settings)
        ws = await http.open_socket("unit")
        try:
            with pytest.raises(ConnectionClosedError) as caught:
                await asyncio.wait_for(ws.recv(), scaled(10))
            assert caught.value.rcvd is None or caught.value.sent.code == 1009
        finally:
            await ws.close()
            await http.aclose()


# -- previews ---------------------------------------------------------------------------------------
async def test_stream_turns_previews_into_events_of_the_right_job(fake: FakeComfyUI) -> None:
    """Binary frames were dropped; now each preview is a ``job.preview`` of the prompt it names or
    of this client's executing prompt, and a bad one is dropped with the stream going on."""
    connect = FakeConnect()
    b = ComfyUIBackend(
        fake.origin,
        client_id=f"unit-{uuid.uuid4()}",
        transport=fake.transport(),
        settings=FAST,
        connect=connect,
    )
    events, task = await collect(b)
    sock = connect.sockets[0]
    job = await b.submit(GRAPH, tags=["t"])

    sock.push(legacy(PNG))  # before any frame names a prompt: nobody's
    sock.send("execution_start", {"prompt_id": job.id})
    sock.send("executing", {"node": "2", "prompt_id": job.id})
    for frame in (b"\x00", legacy(JPEG, 2), legacy(PNG + b"\x00" * MAX_PREVIEW_BYTES)):
        sock.push(frame)  # dropped, and the stream goes on
    sock.push(legacy(PNG))
    sock.push(with_metadata(JPEG, {"prompt_id": "other", "image_type": "image/jpeg"}))
    first = await eventually(lambda: find(events, "job.preview", job.id), timeout=5)
    assert first.payload["mime_type"] == "image/png" and first.payload["tags"] == ["t"]
    assert preview_image(first) == (PNG, "image/png")
    named = await eventually(lambda: find(events, "job.preview", "other"), timeout=5)
    assert named.payload["size"] == len(JPEG)

    sock.send("executing", {"node": None, "prompt_id": job.id})  # the prompt is done
    sock.push(legacy(PNG))  # a late legacy frame names no prompt: dropped
    sock.send("status", {"status": {"exec_info": {"queue_remaining": 0}}})
    await asyncio.sleep(0)
    stream = next(iter(b._memory.streams))
    await eventually(lambda: stream.previews_dropped >= 5, timeout=5)
    assert len([e for e in events if e.event == "job.preview" and e.resource_id == job.id]) == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await b.aclose()
