"""The WebSocket ``/developer/api/v1/ws``: handshake authentication, subscriptions, ping, events."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from prefect_comfy.backends.cloud.protocol import validate_pattern
from prefect_comfy_emulator.bus import Close, Connection
from prefect_comfy_emulator.state import EmulatorState

EVENT_PREFIX = '{"type": "event"'


def _frame(kind: str, data: dict[str, Any] | None = None) -> str:
    return json.dumps({"type": kind} if data is None else {"type": kind, "data": data})


def _error(message: str) -> str:
    return _frame("error", {"code": "invalid_message", "message": message})


def _patterns(data: Any) -> list[str] | str:
    """The patterns of a (un)subscribe frame, or the reason they are unusable."""
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list) or not events:
        return "data.events must be a non-empty list of event patterns"
    for pattern in events:
        try:
            validate_pattern(pattern)
        except ValueError as exc:
            return str(exc)
    return events


def handle_frame(conn: Connection, text: str | None) -> None:
    """Answer one client frame (the answers go through the connection's queue, in order)."""
    if text is None:
        conn.offer(_error("binary frames are not supported; send JSON text"))
        return
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        conn.offer(_error("the frame is not JSON"))
        return
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "ping":
        conn.offer(_frame("pong"))
    elif kind in ("subscribe", "unsubscribe"):
        patterns = _patterns(message.get("data"))
        if isinstance(patterns, str):
            conn.offer(_error(patterns))
        elif kind == "subscribe":
            conn.patterns.extend(p for p in dict.fromkeys(patterns) if p not in conn.patterns)
            conn.offer(_frame("subscribed", {"events": list(conn.patterns)}))
        else:
            conn.patterns[:] = [p for p in conn.patterns if p not in patterns]
            conn.offer(_frame("unsubscribed", {"events": list(conn.patterns)}))
    elif isinstance(kind, str):
        conn.offer(_error(f"unknown message type {kind!r}"))
    else:
        conn.offer(_error("the frame must be a JSON object with a string 'type'"))


async def _sender(websocket: WebSocket, conn: Connection, state: EmulatorState) -> None:
    while True:
        item = await conn.queue.get()
        if isinstance(item, Close):
            with contextlib.suppress(Exception):
                await websocket.close(item.code, item.reason)
            return
        # Waits while the socket's write buffer is full (the client does not read): the frame
        # still counts against the connection's bound until the socket takes it.
        await websocket.send_text(item)
        conn.sent(item)
        if item.startswith(EVENT_PREFIX):
            state.bus.events_sent += 1


async def _receiver(websocket: WebSocket, conn: Connection) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        handle_frame(conn, message.get("text"))


def _key(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return websocket.query_params.get("api_key")


async def ws_endpoint(websocket: WebSocket) -> None:
    state: EmulatorState = websocket.app.state.emulator
    owner, refusal = websocket.app.state.authenticate(_key(websocket))
    if owner is None:
        state.bus.ws_handshakes_refused += 1
        await websocket.send_denial_response(
            JSONResponse(refusal.body(), status_code=refusal.status)
        )
        return
    await websocket.accept()
    if state.bus.close_after_connected > 0:  # a fault: close before the client can subscribe
        state.bus.close_after_connected -= 1
        state.bus.ws_closed_at_handshake += 1
        await websocket.send_text(_frame("connected", {"session_id": state.ids.new("ses")}))
        await websocket.close(1011, "emulator fault: closed after connected")
        return
    client = (websocket.client.host, websocket.client.port) if websocket.client else None
    conn = state.bus.open(owner, state.ids.new("ses"), client)
    sender = asyncio.create_task(_sender(websocket, conn, state))
    receiver = asyncio.create_task(_receiver(websocket, conn))

    def cut() -> None:
        """A slow client did not take its close frame in time: cut its TCP stream (when served
        by EmulatorServer), else stop sending and end the connection."""
        abort = state.bus.abort_transport
        if abort is None or not abort(conn):
            sender.cancel()

    conn.cut = cut
    conn.offer(_frame("connected", {"session_id": conn.session_id}))
    try:
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        state.bus.close(conn)
        for task in (sender, receiver):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
