"""The event bus: WebSocket connections, their subscriptions, and delivery of event frames.

Each connection has a bounded queue drained by its own sender task, so a slow client never holds up the
others. The bound counts frames (``ws_queue_size``) and bytes (``ws_send_buffer_bytes``); a frame counts
from the moment it is queued until the socket has taken it, so a client that never reads cannot make
the emulator hold more than the bound (plus the socket's own small write buffer). A connection past
either bound is closed with code 1013 (try again later) and its waiting frames are dropped; if its close
frame cannot be written within ``ws_close_timeout`` (the client still does not read), its TCP stream is
cut. Events go only to connections of the same API key whose patterns match, and only
from the moment they subscribed (no replay).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prefect_comfy.backends.cloud.protocol import matches_any

CLOSE_OVERFLOW = 1013
CLOSE_DROPPED = 1012


@dataclass(frozen=True)
class Close:
    """A queue item that tells the sender to close the connection with ``code``."""

    code: int
    reason: str = ""


@dataclass(eq=False)
class Connection:
    """One open WebSocket of one API key."""

    owner: str
    session_id: str
    client: tuple[str, int] | None
    queue: asyncio.Queue[str | Close]
    max_bytes: int = 8 * 1024 * 1024
    patterns: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    closing: bool = False
    pending_bytes: int = 0
    """Bytes of frames queued or being written: the sender subtracts a frame once it is sent."""
    peak_bytes: int = 0
    cut: Callable[[], None] | None = None
    """Set by the endpoint: end the connection now, without a close handshake."""
    close_timeout: float = 2.0
    on_overflow: Callable[[], None] | None = None
    _watchdog: asyncio.TimerHandle | None = None

    def offer(self, frame: str) -> bool:
        """Queue a frame; on overflow (frames or bytes) drop what waits and close with 1013."""
        if self.closing:
            return False
        size = len(frame)
        if self.pending_bytes + size > self.max_bytes or self.queue.full():
            self.close_now(CLOSE_OVERFLOW, "event queue overflow: the client reads too slowly")
            if self.on_overflow is not None:
                self.on_overflow()
            return False
        self.queue.put_nowait(frame)
        self.pending_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.pending_bytes)
        return True

    def sent(self, frame: str) -> None:
        """The socket took ``frame``: it no longer counts against the bound."""
        self.pending_bytes -= len(frame)

    def close_now(self, code: int, reason: str = "") -> None:
        """Drop the waiting frames and have the sender close the socket next; cut the connection
        if that has not happened within ``close_timeout``."""
        self.closing = True
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if isinstance(item, str):
                self.pending_bytes -= len(item)
        self.queue.put_nowait(Close(code, reason))
        if self.cut is not None and self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(self.close_timeout, self.cut)

    def finished(self) -> None:
        """The connection is over: stop the watchdog."""
        if self._watchdog is not None:
            self._watchdog.cancel()


class Listener(Protocol):
    """An in-process consumer of events (the v2 face's SSE streams): it gets every event of every
    account, subject to pause, duplicates and drops like a WebSocket connection."""

    def deliver(self, owner: str, name: str, payload: dict[str, Any]) -> None: ...

    def drop(self) -> None: ...


class EventBus:
    """Routes events to connections; counts what it does; holds events while paused."""

    def __init__(
        self,
        new_id: Callable[[str], str],
        now: Callable[[], str],
        queue_size: int,
        max_bytes: int = 8 * 1024 * 1024,
        close_timeout: float = 2.0,
    ) -> None:
        self._new_id = new_id
        self._now = now
        self.queue_size = queue_size
        self.max_bytes = max_bytes
        self.close_timeout = close_timeout
        self.connections: set[Connection] = set()
        self.paused = False
        self.duplicate = False
        self.close_after_connected = 0
        """The next this many WebSocket connections are closed right after ``connected``, before
        the client can subscribe (a close during the handshake, issue 11 item 1)."""
        self.listeners: set[Listener] = set()
        self._held_for_listeners: list[tuple[Listener, str, str, dict[str, Any]]] = []
        self.abort_transport: Callable[[Connection], bool] | None = None
        """Set by `EmulatorServer`: cut a connection's TCP stream without a close frame."""
        self.reset_counters()

    def reset_counters(self) -> None:
        self.ws_connections_total = len(getattr(self, "connections", ()))
        self.ws_handshakes_refused = 0
        self.ws_closed_slow = 0
        self.ws_closed_at_handshake = 0
        self.events_sent = 0

    def open(self, owner: str, session_id: str, client: tuple[str, int] | None) -> Connection:
        conn = Connection(
            owner, session_id, client, asyncio.Queue(maxsize=self.queue_size),
            max_bytes=self.max_bytes, close_timeout=self.close_timeout,
            on_overflow=self._count_slow,
        )  # fmt: skip
        self.connections.add(conn)
        self.ws_connections_total += 1
        return conn

    def _count_slow(self) -> None:
        self.ws_closed_slow += 1

    def close(self, conn: Connection) -> None:
        self.connections.discard(conn)
        conn.finished()

    def publish(self, owner: str, name: str, payload: dict[str, Any]) -> None:
        """Send an event to every matching connection of ``owner`` and to every listener (twice
        while duplicating)."""
        self.tell_listeners(owner, name, payload)
        targets = [
            c for c in self.connections if c.owner == owner and matches_any(c.patterns, name)
        ]
        if not targets:
            return
        frame = json.dumps(
            {
                "type": "event",
                "id": self._new_id("evt"),
                "timestamp": self._now(),
                "data": {"event": name, "payload": payload},
            }
        )
        copies = 2 if self.duplicate else 1
        for conn in targets:
            for _ in range(copies):
                if self.paused:
                    conn.held.append(frame)
                else:
                    conn.offer(frame)

    def tell_listeners(self, owner: str, name: str, payload: dict[str, Any]) -> None:
        """Hand an event to the listeners only (events that the WebSocket protocol does not have)."""
        for listener in list(self.listeners):
            for _ in range(2 if self.duplicate else 1):
                if self.paused:
                    self._held_for_listeners.append((listener, owner, name, payload))
                else:
                    listener.deliver(owner, name, payload)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> int:
        """Deliver every held frame, in order; return how many."""
        self.paused = False
        count = len(self._held_for_listeners)
        held_events, self._held_for_listeners = self._held_for_listeners, []
        for listener, owner, name, payload in held_events:
            if listener in self.listeners:
                listener.deliver(owner, name, payload)
        for conn in list(self.connections):
            held, conn.held = conn.held, []
            for frame in held:
                conn.offer(frame)
            count += len(held)
        return count

    def broadcast_raw(self, frame: str) -> int:
        """Put one raw text frame on every connection (even while paused); return how many."""
        for conn in self.connections:
            conn.offer(frame)
        return len(self.connections)

    def drop_all(self) -> int:
        """Cut every connection: abruptly when the server can, else with close code 1012."""
        for listener in list(self.listeners):
            listener.drop()
        conns = list(self.connections)
        for conn in conns:
            if self.abort_transport is None or not self.abort_transport(conn):
                conn.close_now(CLOSE_DROPPED, "dropped by the emulator")
            self.connections.discard(conn)
        return len(conns)
