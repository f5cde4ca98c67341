"""ComfyWebSocket against a small scripted server on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from prefect_comfy.backends.cloud import ws as ws_module
from prefect_comfy.backends.cloud.ws import ComfyWebSocket, ws_url
from prefect_comfy.exceptions import (
    ComfyConfigError,
    WebSocketAuthError,
    WebSocketConnectionError,
)
from prefect_comfy.settings import ComfySettings
from tests.support.waiting import eventually, scaled

KEY = "comfyui-unit-secret-0123456789"


class ScriptedServer:
    """Speaks the protocol; the test flips switches and pushes frames."""

    def __init__(self) -> None:
        self.open: list[ServerConnection] = []
        self.handshakes = 0
        self.paths: list[str] = []
        self.auth_headers: list[str | None] = []
        self.subscribes: list[list[str]] = []
        self.pings = 0
        self.refuse_status: int | None = None
        self.close_code: int | None = None
        self.send_connected = True
        self.answer_subscribe = True
        self.answer_pings = True
        self.close_after_connected = 0
        """Close this many connections right after sending ``connected`` (before any subscribe)."""
        self.oversize_after_subscribe: int | None = None
        """After confirming a subscribe, send a frame of this many bytes."""
        self.url = ""

    def process_request(self, connection: ServerConnection, request: Any) -> Any:
        self.handshakes += 1
        self.paths.append(request.path)
        self.auth_headers.append(request.headers.get("Authorization"))
        if self.refuse_status is not None:
            return connection.respond(HTTPStatus(self.refuse_status), "refused\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        if self.close_code is not None:
            await ws.close(self.close_code, "bad key")
            return
        self.open.append(ws)
        try:
            if self.send_connected:
                await ws.send(json.dumps({"type": "connected", "data": {"session_id": "ses_1"}}))
            if self.close_after_connected > 0:
                self.close_after_connected -= 1
                await ws.close(1011, "closing right after connected")
                return
            async for message in ws:
                frame = json.loads(message)
                if frame["type"] == "subscribe":
                    self.subscribes.append(frame["data"]["events"])
                    if self.answer_subscribe:
                        await ws.send(json.dumps({"type": "subscribed", "data": frame["data"]}))
                    if self.oversize_after_subscribe is not None:
                        await ws.send("x" * self.oversize_after_subscribe)
                elif frame["type"] == "ping":
                    self.pings += 1
                    if self.answer_pings:
                        await ws.send('{"type": "pong"}')
        finally:
            if ws in self.open:
                self.open.remove(ws)

    async def push(self, *frames: Any) -> None:
        for ws in list(self.open):
            for frame in frames:
                await ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def drop(self, code: int = 1012) -> None:
        for ws in list(self.open):
            await ws.close(code, "going away")


def event(name: str, rid: str, eid: str | None = None, **payload: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "event",
        "data": {"event": name, "payload": {"id": rid, **payload}},
    }
    if eid is not None:
        frame["id"] = eid
    return frame


@pytest.fixture
async def server():
    scripted = ScriptedServer()
    async with serve(
        scripted.handler, "127.0.0.1", 0, process_request=scripted.process_request
    ) as srv:
        port = srv.sockets[0].getsockname()[1]
        scripted.url = f"http://127.0.0.1:{port}"
        yield scripted


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="prefect_comfy")
    yield
    assert KEY not in caplog.text


def make(server: ScriptedServer, **kwargs: Any) -> ComfyWebSocket:
    kwargs.setdefault("reconnect_delay", 0.01)
    kwargs.setdefault("max_reconnect_delay", 0.05)
    return ComfyWebSocket(api_key=KEY, base_url=server.url, **kwargs)


async def next_event(stream: Any, timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(stream.__anext__(), timeout)


# -- addresses and configuration ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://127.0.0.1:8765", "ws://127.0.0.1:8765/developer/api/v1/ws"),
        ("https://cloud.comfy.org/", "wss://cloud.comfy.org/developer/api/v1/ws"),
        ("https://cloud.comfy.org/developer/api/v1", "wss://cloud.comfy.org/developer/api/v1/ws"),
    ],
)
def test_ws_url(base, expected):
    assert ws_url(base) == expected


@pytest.mark.parametrize("base", ["ftp://x", "nothing", "http://"])
def test_bad_base_url(base):
    with pytest.raises(ComfyConfigError):
        ws_url(base)


def test_missing_key_is_a_config_error():
    with pytest.raises(ComfyConfigError, match="COMFY_API_KEY"):
        ComfyWebSocket(settings=ComfySettings())


def test_settings_fill_unset_values_and_repr_hides_the_key():
    settings = ComfySettings(
        api_key=KEY, base_url="https://example.test", ws_auth="query", ping_interval=7
    )
    ws = ComfyWebSocket(settings=settings)
    assert ws.url == "wss://example.test/developer/api/v1/ws"
    assert ws.ping_interval == 7 and ws.max_reconnect_attempts == 5
    assert KEY not in repr(ws) and KEY not in ws.url


# -- the happy path -------------------------------------------------------------------------------
async def test_connect_subscribe_and_receive(server):
    async with make(server) as ws:
        await ws.subscribe(["job.completed", "job.failed"])
        assert server.auth_headers == [f"Bearer {KEY}"]
        assert server.paths == ["/developer/api/v1/ws"]
        assert ws.session_id == "ses_1" and ws.connections_opened == 1
        assert server.subscribes == [["job.completed", "job.failed"]]
        stream = ws.events()
        await server.push(
            event("input.ready", "inp_1"),  # not subscribed: filtered out client-side
            event("job.completed", "job_1", outputs=[{"id": "out_1", "download_url": "u"}]),
        )
        got = await next_event(stream)
        assert (got.event, got.payload["id"]) == ("job.completed", "job_1")
        assert got.payload["outputs"][0]["download_url"] == "u"


async def test_query_auth_puts_the_key_in_the_query_only(server):
    async with make(server, auth="query") as ws:
        await ws.subscribe(["*"])
        assert server.paths == [f"/developer/api/v1/ws?api_key={KEY}"]
        assert server.auth_headers == [None]
        assert KEY not in repr(ws)


async def test_subscriptions_add_up_and_unknown_names_pass(server):
    async with make(server) as ws:
        await ws.subscribe(["job.completed"])
        await ws.subscribe(["job.*", "job.completed"])
        assert server.subscribes[-1] == ["job.completed", "job.*"]
        stream = ws.events()
        await server.push(event("job.brand_new", "job_9"))
        assert (await next_event(stream)).event == "job.brand_new"


async def test_invalid_pattern_is_refused(server):
    async with make(server) as ws:
        with pytest.raises(ComfyConfigError):
            await ws.subscribe(["job*"])


async def test_subscribe_before_connect_and_no_connected_frame(server, monkeypatch):
    monkeypatch.setattr(ws_module, "CONNECTED_GRACE", 0.05)
    server.send_connected = False
    ws = make(server)
    await ws.subscribe(["job.*"])  # connects on demand
    try:
        assert ws.session_id is None and server.subscribes == [["job.*"]]
        stream = ws.events()
        await server.push(event("job.progress", "job_1", progress=10))
        assert (await next_event(stream)).payload["progress"] == 10
    finally:
        await ws.aclose()


# -- bad frames and duplicates ------------------------------------------------------------------
async def test_malformed_frames_are_logged_and_skipped(server, caplog):
    async with make(server) as ws:
        await ws.subscribe(["*"])
        stream = ws.events()
        await server.push(
            "not json at all",
            '{"no": "type"}',
            '{"type": "event", "data": {"payload": {}}}',
            '{"type": "event", "data": {"event": "job.progress", "payload": [1]}}',
            '{"type": "mystery"}',
            {"type": "error", "data": {"code": "invalid_message", "message": "what?"}},
            event("job.completed", "job_ok"),
        )
        assert (await next_event(stream)).payload["id"] == "job_ok"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("malformed" in r.getMessage() for r in warnings) == 4
    assert any("invalid_message" in r.getMessage() for r in warnings)
    assert any("mystery" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


async def test_duplicates_are_dropped(server):
    async with make(server) as ws:
        await ws.subscribe(["job.*"])
        stream = ws.events()
        await server.push(
            event("job.progress", "job_1", "evt_1", progress=10),
            event("job.progress", "job_1", "evt_1", progress=10),  # same id
            event("job.progress", "job_1", progress=20),
            event("job.progress", "job_1", progress=20),  # same body, no id
            event("job.progress", "job_1", progress=30),
            event("job.completed", "job_1", "evt_2"),
        )
        seen = [await next_event(stream) for _ in range(4)]
        assert [e.payload.get("progress") for e in seen] == [10, 20, 30, None]
        assert seen[-1].event == "job.completed"


# -- reconnecting ---------------------------------------------------------------------------------
async def test_reconnect_restores_subscriptions_and_runs_on_connect(server):
    calls: list[int] = []

    async def on_connect() -> None:
        calls.append(len(calls))

    async with make(server, on_connect=on_connect) as ws:
        await ws.subscribe(["job.*"])
        await ws.subscribe(["input.ready"])
        stream = ws.events()
        await eventually(lambda: calls == [0], message="first on_connect")
        await server.drop()
        await eventually(lambda: len(server.subscribes) == 3, message="resubscribe")
        assert server.subscribes[-1] == ["job.*", "input.ready"]
        await eventually(lambda: calls == [0, 1], message="second on_connect")
        await server.push(event("input.ready", "inp_1"))
        assert (await next_event(stream)).event == "input.ready"
        assert ws.connections_opened == 2


async def test_on_disconnect_fires_on_a_drop_before_the_reconnect(server):
    calls: list[str] = []

    async def on_connect() -> None:
        calls.append("connect")

    async def on_disconnect() -> None:
        # Awaited before reconnecting: no second connection exists yet.
        calls.append(f"disconnect after {ws.connections_opened} connection(s)")

    async with make(server, on_connect=on_connect, on_disconnect=on_disconnect) as ws:
        await ws.subscribe(["job.*"])
        await eventually(lambda: calls == ["connect"], message="first on_connect")
        await server.drop()
        await eventually(lambda: len(calls) == 3, message="disconnect, then reconnect")
        assert calls == ["connect", "disconnect after 1 connection(s)", "connect"]
    # Closing is not a disconnect.
    assert len(calls) == 3


async def test_on_disconnect_fires_before_giving_up_and_its_errors_are_logged(server, caplog):
    calls: list[str] = []

    async def on_disconnect() -> None:
        calls.append("disconnect")
        raise RuntimeError("hook broke")

    async with make(server, auto_reconnect=False, on_disconnect=on_disconnect) as ws:
        await ws.subscribe(["job.*"])
        stream = ws.events()
        await server.drop()
        with pytest.raises(WebSocketConnectionError):
            await next_event(stream)
    assert calls == ["disconnect"]
    assert "on_disconnect hook" in caplog.text and "hook broke" in caplog.text


async def test_no_on_disconnect_when_no_connection_was_ever_up(server):
    calls: list[str] = []

    async def on_disconnect() -> None:
        calls.append("disconnect")

    server.refuse_status = 503
    ws = make(server, max_reconnect_attempts=2, on_disconnect=on_disconnect)
    with pytest.raises(WebSocketConnectionError):
        await ws.connect()
    await ws.aclose()
    assert server.handshakes == 3 and calls == []


async def test_slow_on_connect_does_not_block_reading(server):
    release = asyncio.Event()

    async def on_connect() -> None:
        await release.wait()

    async with make(server, on_connect=on_connect) as ws:
        await ws.subscribe(["job.*"])
        stream = ws.events()
        await server.push(event("job.completed", "job_1"))
        assert (await next_event(stream)).payload["id"] == "job_1"
        release.set()


async def test_missing_pong_means_a_dead_link(server, caplog):
    server.answer_pings = False
    async with make(server, ping_interval=0.05, ping_timeout=0.1) as ws:
        await ws.subscribe(["job.*"])
        await eventually(lambda: ws.connections_opened >= 2, message="reconnect after no pong")
        server.answer_pings = True
        # A ping sent just before the switch may still kill one more link; after a few answered
        # pings the link is stable.
        await eventually(lambda p=server.pings: server.pings >= p + 4, message="pongs")
        settled, pings = ws.connections_opened, server.pings
        await eventually(lambda: server.pings >= pings + 4, message="more pongs")
        assert ws.connections_opened == settled
        stream = ws.events()
        await server.push(event("job.completed", "job_1"))
        assert (await next_event(stream)).event == "job.completed"
    assert "no pong" in caplog.text


async def test_pongs_keep_the_link(server):
    async with make(server, ping_interval=0.02, ping_timeout=0.5) as ws:
        await ws.subscribe(["job.*"])
        await eventually(lambda: server.pings >= 3, message="pings")
        assert ws.connections_opened == 1


async def test_budget_exhaustion_raises_connection_error(server):
    async with make(server, auth="query", max_reconnect_attempts=2) as ws:
        await ws.subscribe(["job.*"])
        stream = ws.events()
        server.refuse_status = 503
        before = server.handshakes
        await server.drop()
        with pytest.raises(WebSocketConnectionError) as caught:
            await next_event(stream)
        assert server.handshakes - before == 2
        assert KEY not in str(caught.value) and "2 reconnect attempt" in str(caught.value)


async def test_no_auto_reconnect_fails_on_first_drop(server):
    async with make(server, auto_reconnect=False) as ws:
        await ws.subscribe(["job.*"])
        stream = ws.events()
        await server.drop()
        with pytest.raises(WebSocketConnectionError):
            await next_event(stream)
        assert server.handshakes == 1


async def test_initial_connect_failure_retries_then_gives_up():
    ws = ComfyWebSocket(
        api_key=KEY,
        base_url="http://127.0.0.1:9",  # discard port: refused
        max_reconnect_attempts=1,
        reconnect_delay=0.01,
        auth="query",
    )
    with pytest.raises(WebSocketConnectionError) as caught:
        async with ws:
            pass
    assert KEY not in str(caught.value)


# -- authentication -------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [401, 403])
async def test_refused_handshake_is_an_auth_error_never_retried(server, status):
    server.refuse_status = status
    with pytest.raises(WebSocketAuthError) as caught:
        async with make(server, auth="query") as ws:
            await ws.subscribe(["job.*"])
    assert server.handshakes == 1
    assert KEY not in str(caught.value) and "check the key" in str(caught.value)
    assert caught.value.__cause__ is None


@pytest.mark.parametrize("code", [4001, 4003, 1008])
async def test_auth_close_code_is_an_auth_error(server, code):
    server.close_code = code
    with pytest.raises(WebSocketAuthError) as caught:
        async with make(server) as ws:
            await ws.subscribe(["job.*"])
    assert server.handshakes == 1 and KEY not in str(caught.value)


async def test_auth_close_after_subscribing_ends_events(server):
    async with make(server) as ws:
        await ws.subscribe(["job.*"])
        stream = ws.events()
        await server.drop(code=4001)
        with pytest.raises(WebSocketAuthError):
            await next_event(stream)
    assert server.handshakes == 1


async def test_events_end_after_close(server):
    ws = make(server)
    await ws.subscribe(["job.*"])
    stream = ws.events()
    await ws.aclose()
    assert [e async for e in stream] == []


async def test_unconfirmed_subscribe_means_a_dead_link(server, caplog):
    server.answer_subscribe = False
    settings = ComfySettings(api_key=KEY, base_url=server.url, connect_timeout=0.2)
    ws = ComfyWebSocket(settings=settings, reconnect_delay=0.01, max_reconnect_attempts=50)
    async with ws:
        pending = asyncio.ensure_future(ws.subscribe(["job.*"]))
        await eventually(lambda: ws.connections_opened >= 2, message="reconnect")
        assert not pending.done()
        server.answer_subscribe = True
        await asyncio.wait_for(pending, scaled(5))
        assert server.subscribes[-1] == ["job.*"]
    assert "subscribed" in caplog.text


# -- regressions of issue 11: a close at any point of the handshake, flapping links -------------------
async def test_a_close_right_after_connected_is_a_reconnect_like_any_other(server):
    server.close_after_connected = 3
    async with make(server, max_reconnect_attempts=5) as ws:
        await asyncio.wait_for(ws.subscribe(["job.*"]), scaled(10))
        stream = ws.events()
        await server.push(event("job.completed", "job_1", "evt_1"))
        assert (await next_event(stream)).payload["id"] == "job_1"
    assert server.handshakes == 4 and server.close_after_connected == 0


async def test_a_close_after_connected_never_reaches_a_subscriber_raw(server):
    """Subscribing on a connection that the server closed meanwhile is not the caller's error."""
    async with make(server, max_reconnect_attempts=5) as ws:
        await ws.subscribe(["job.*"])
        server.close_after_connected = 2
        await server.drop()
        # Subscribing now may hit the closed connection: it must reconnect, not raise.
        await asyncio.wait_for(ws.subscribe(["input.ready"]), scaled(10))
        stream = ws.events()
        await server.push(event("input.ready", "inp_1", "evt_2"))
        assert (await next_event(stream)).event == "input.ready"


async def test_a_frame_over_the_size_limit_gives_bounded_reconnects(server, monkeypatch):
    monkeypatch.setattr(ws_module, "MAX_FRAME_BYTES", 1024)
    server.oversize_after_subscribe = 4096
    async with make(server, max_reconnect_attempts=3) as ws:
        await ws.subscribe(["job.*"])
        stream = ws.events()
        with pytest.raises(WebSocketConnectionError) as caught:
            await next_event(stream, timeout=10)
    # Each connection subscribed before it died: that must not refill the budget.
    assert server.handshakes == 4
    assert "1009" in str(caught.value) and "3 reconnect attempt" in str(caught.value)


async def test_a_server_that_never_answers_pings_gives_bounded_reconnects(server):
    server.answer_pings = False
    async with make(server, max_reconnect_attempts=2, ping_interval=0.05, ping_timeout=0.05) as ws:
        await ws.subscribe(["job.*"])
        stream = ws.events()
        with pytest.raises(WebSocketConnectionError) as caught:
            await next_event(stream, timeout=10)
    assert server.handshakes == 3
    assert "no pong" in str(caught.value) and "(x3)" in str(caught.value)


async def test_dedup_remembers_digests_not_payloads(server):
    """Issue 11 item 4: id-less events with big bodies must not be kept whole to drop repeats."""
    big = "x" * 200_000
    async with make(server) as ws:
        await ws.subscribe(["job.*"])
        stream = ws.events()
        for n in range(5):
            await server.push(event("job.progress", f"job_{n}", blob=big))
            await server.push(event("job.progress", f"job_{n}", blob=big))  # a repeat
        seen = [await next_event(stream) for _ in range(5)]
        assert [e.payload["id"] for e in seen] == [f"job_{n}" for n in range(5)]
        remembered = list(ws._recent)
        assert len(remembered) == 5
        assert all(isinstance(k, bytes) and len(k) == 16 for k in remembered)
