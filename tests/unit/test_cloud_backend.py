"""CloudBackend: identity, delegation to ComfyClient, and the event stream over ComfyWebSocket."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import prefect_comfy.backends.cloud.ws as ws_module
from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.exceptions import ComfyConfigError
from prefect_comfy.models import ComfyEvent, Output
from prefect_comfy.settings import ComfySettings

KEY = "comfyui-backend-secret-abcdef"
ORIGIN = "http://127.0.0.1:8765"
WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {}}}


def recorder() -> tuple[list[httpx.Request], httpx.MockTransport]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path.removeprefix("/developer/api/v1")
        if path.startswith("/jobs"):
            if path.endswith("/outputs"):
                body = {
                    "outputs": [{"id": "out_1", "download_url": "/_storage/o.png"}],
                    "total": 1,
                    "has_more": False,
                }
                return httpx.Response(200, json=body)
            return httpx.Response(200, json={"id": "job_1", "status": "running"})
        if path.startswith("/inputs"):
            return httpx.Response(200, json={"id": "inp_1", "name": "a.png", "status": "ready"})
        if path.startswith("/models"):
            body = {"id": "mdl_1", "name": "m", "status": "ready", "type": "lora"}
            return httpx.Response(200, json=body)
        if path.startswith("/_storage"):
            return httpx.Response(200, content=b"\x89PNG")
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "?"}})

    return seen, httpx.MockTransport(handler)


async def test_identity_never_shows_the_key() -> None:
    async with CloudBackend(KEY, ORIGIN + "/developer/api/v1/") as backend:
        assert isinstance(backend, ComfyBackend)
        assert backend.kind == "cloud"
        assert backend.address == ORIGIN
        digest = hashlib.sha256(KEY.encode()).hexdigest()[:16]
        assert backend.connection_key == f"{ORIGIN}#{digest}"
        assert repr(backend) == f"CloudBackend(address={ORIGIN!r})"
        for text in (backend.connection_key, repr(backend), backend.address):
            assert KEY not in text


async def test_connection_key_differs_per_key_and_address() -> None:
    a, b, c = (
        CloudBackend(KEY, ORIGIN),
        CloudBackend("other", ORIGIN),
        CloudBackend(KEY, "http://h"),
    )
    assert len({a.connection_key, b.connection_key, c.connection_key}) == 3
    for backend in (a, b, c):
        await backend.aclose()


async def test_missing_key_is_a_config_error() -> None:
    with pytest.raises(ComfyConfigError, match="COMFY_API_KEY"):
        CloudBackend(settings=ComfySettings(api_key=None))


async def test_settings_and_ws_auth_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COMFY_API_KEY", KEY)
    monkeypatch.setenv("COMFY_BASE_URL", "http://env.test:9")
    monkeypatch.setenv("COMFY_WS_AUTH", "query")
    async with CloudBackend() as backend:
        assert backend.address == "http://env.test:9" and backend.ws_auth == "query"
    async with CloudBackend(ws_auth="header") as backend:
        assert backend.ws_auth == "header"


async def test_clone_is_independent_and_equal() -> None:
    seen, transport = recorder()
    backend = CloudBackend(KEY, ORIGIN, ws_auth="query", transport=transport)
    twin = backend.clone()
    assert twin is not backend and twin.client is not backend.client
    assert twin.connection_key == backend.connection_key and twin.ws_auth == "query"
    await backend.aclose()
    assert (await twin.get_job("job_1")).id == "job_1"  # the twin still works
    assert seen[0].headers["Authorization"] == f"Bearer {KEY}"
    await twin.aclose()
    await twin.aclose()


async def test_rest_methods_delegate(tmp_path: Path) -> None:
    seen, transport = recorder()
    async with CloudBackend(KEY, ORIGIN, transport=transport) as backend:
        job = await backend.submit(WORKFLOW, tags=["t"], idempotency_key="idem")
        assert job.id == "job_1"
        await backend.get_job("job_1")
        await backend.cancel("job_1")
        (output,) = await backend.outputs("job_1")
        path = await backend.download(output, tmp_path)
        assert path.read_bytes() == b"\x89PNG"
        assert (await backend.upload_input(b"x", name="a.png", tags=["t"])).id == "inp_1"
        model = await backend.upload_model(b"w", type="lora", name="m", idempotency_key="k")
        assert model.type == "lora"
        assert (await backend.get_input("inp_1")).id == "inp_1"
        assert (await backend.get_model("mdl_1")).id == "mdl_1"
    lines = [(r.method, r.url.path.removeprefix("/developer/api/v1")) for r in seen]
    assert lines == [
        ("POST", "/jobs"),
        ("GET", "/jobs/job_1"),
        ("POST", "/jobs/job_1/cancel"),
        ("GET", "/jobs/job_1/outputs"),
        ("GET", "/_storage/o.png"),
        ("POST", "/inputs"),
        ("POST", "/models"),
        ("GET", "/inputs/inp_1"),
        ("GET", "/models/mdl_1"),
    ]
    assert seen[0].headers["Idempotency-Key"] == "idem"
    assert json.loads(seen[0].content) == {"workflow": WORKFLOW, "tags": ["t"]}
    assert "Authorization" not in seen[4].headers
    assert seen[6].headers["Idempotency-Key"] == "k"


class FakeWebSocket:
    """Stands in for ComfyWebSocket with the agreed signature."""

    instances: list[FakeWebSocket] = []

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        auto_reconnect: bool = True,
        max_reconnect_attempts: int | None = 5,
        reconnect_delay: float | None = 1.0,
        max_reconnect_delay: float | None = 30.0,
        *,
        auth: str = "header",
        settings: ComfySettings | None = None,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        on_connect: Any = None,
        on_disconnect: Any = None,
    ) -> None:
        self.kwargs = {
            "api_key": api_key,
            "base_url": base_url,
            "auto_reconnect": auto_reconnect,
            "auth": auth,
            "on_connect": on_connect,
            "on_disconnect": on_disconnect,
            "max_reconnect_attempts": max_reconnect_attempts,
        }
        self.subscribed: list[str] = []
        self.entered = self.exited = False
        FakeWebSocket.instances.append(self)

    async def __aenter__(self) -> FakeWebSocket:
        self.entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited = True

    async def subscribe(self, patterns: Any) -> None:
        self.subscribed.extend(patterns)
        if self.kwargs["on_connect"]:
            await self.kwargs["on_connect"]()

    async def events(self):
        for i in range(3):
            yield ComfyEvent(event="job.progress", payload={"id": "job_1", "progress": i})


async def test_events_delegate_to_comfy_websocket(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeWebSocket.instances.clear()
    monkeypatch.setattr(ws_module, "ComfyWebSocket", FakeWebSocket)
    connects = []

    async def on_connect() -> None:
        connects.append(1)

    async def on_disconnect() -> None:
        pass

    settings = ComfySettings(max_reconnect_attempts=2)
    async with CloudBackend(KEY, ORIGIN, settings=settings, ws_auth="query") as backend:
        stream = backend.events(["job.*"], on_connect=on_connect, on_disconnect=on_disconnect)
        events = [e async for e in stream]
    assert [e.payload["progress"] for e in events] == [0, 1, 2]
    (ws,) = FakeWebSocket.instances
    assert ws.entered and ws.exited
    assert ws.subscribed == ["job.*"]
    assert ws.kwargs["api_key"] == KEY and ws.kwargs["base_url"] == ORIGIN
    assert ws.kwargs["auth"] == "query" and ws.kwargs["auto_reconnect"] is True
    assert ws.kwargs["on_connect"] is on_connect and ws.kwargs["max_reconnect_attempts"] == 2
    assert ws.kwargs["on_disconnect"] is on_disconnect
    assert connects == [1]


async def test_backend_download_takes_an_output(tmp_path: Path) -> None:
    _, transport = recorder()
    async with CloudBackend(KEY, ORIGIN, transport=transport) as backend:
        output = Output(id="o", download_url=ORIGIN + "/_storage/o.png", name="pic.png")
        assert await backend.download(output, tmp_path) == tmp_path / "pic.png"


async def test_unfinished_jobs_by_tag_list_every_page() -> None:
    pages = {
        0: [{"id": "j1", "status": "running"}, {"id": "j2", "status": "completed"}],
        2: [{"id": "j3", "status": "pending"}],
    }
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        offset = int(request.url.params.get("offset", 0))
        items = pages.get(offset, [])
        body = {"jobs": items, "total": 3, "has_more": offset == 0}
        return httpx.Response(200, json=body)

    async with CloudBackend(KEY, ORIGIN, transport=httpx.MockTransport(handler)) as backend:
        assert backend.capabilities.find_jobs_by_tag and backend.capabilities.upload_models
        assert backend.capabilities.global_event_stream
        jobs = await backend.unfinished_jobs("prefect.flow-run.abc")
    assert [(j.id, j.status) for j in jobs] == [("j1", "running"), ("j3", "pending")]
    assert {r.url.params["tags"] for r in seen} == {"prefect.flow-run.abc"}
