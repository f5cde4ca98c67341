"""The Cloud event stream's connection loop: connect, subscribe, read, keep alive, reconnect.

The part of `ComfyWebSocket` that does I/O on one
connection after another, on the one reconnect primitive
(`Reconnect`): a close at any point of the handshake
ends only that connection, a JSON ``ping`` without its ``pong`` is a dead link, and a subscription
that is never confirmed is one too. What the frames mean is the public class's business
(``_handle``), as are the hooks and the queue of events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

from prefect_comfy.backends.cloud import protocol
from prefect_comfy.exceptions import WebSocketAuthError, WebSocketConnectionError
from prefect_comfy.transport.backoff import Backoff
from prefect_comfy.transport.deadlines import within
from prefect_comfy.transport.reconnect import Attempt, ConnectionLost, DeadLink, Reconnect

__all__ = ["END", "ConnectionLoop"]

logger = logging.getLogger("prefect_comfy.backends.cloud.ws")

END = object()
"""Put on the event queue when the loop ends."""


class ConnectionLoop:
    """Connections of a `ComfyWebSocket`, one after another."""

    # Set by ComfyWebSocket.__init__:
    url: str
    auto_reconnect: bool
    max_reconnect_attempts: int
    connections_opened: int
    ping_interval: float
    ping_timeout: float
    _backoff: Backoff
    _on_disconnect: Callable[[], Awaitable[None]] | None
    _connect_timeout: float
    _patterns: list[str]
    _acked: set[str]
    _sent: deque[list[str]]
    _conn: Any
    _live: bool
    _connected_once: bool
    _queue: asyncio.Queue[Any]
    _fatal: BaseException | None
    _pong: asyncio.Future[None] | None
    _hooks: set[asyncio.Task[Any]]
    _closing: bool
    _dead_reason: str | None = None

    # Provided by ComfyWebSocket:
    async def _open(self) -> Any: ...
    async def _await_connected(self, conn: Any) -> None: ...
    def _handle(self, raw: str | bytes) -> bool: ...
    def _start_hook(self) -> None: ...
    def _pulse(self) -> None: ...
    def _describe(self, exc: BaseException) -> str: ...
    def _cut(self, value: Any) -> str: ...

    # -- the connection loop ------------------------------------------------------------------
    async def _run(self) -> None:
        reconnect = Reconnect(
            f"Comfy event stream at {self.url}",
            max_attempts=self.max_reconnect_attempts,
            backoff=self._backoff,
            auto_reconnect=self.auto_reconnect,
            describe=self._cut,
            on_disconnect=self._on_disconnect,
        )
        try:
            async for attempt in reconnect:
                async with attempt:
                    await self._serve_one(attempt)
                if self._closing:
                    return
        except (WebSocketAuthError, WebSocketConnectionError) as exc:
            self._fatal = exc
            if isinstance(exc, WebSocketAuthError):
                logger.warning("%s", exc)
        finally:
            self._queue.put_nowait(END)
            self._pulse()

    async def _serve_one(self, attempt: Attempt) -> None:
        """One connection from handshake to drop; ``attempt.established()`` once it is subscribed.

        A close at any point (before ``connected``, between ``connected`` and ``subscribed``, later)
        ends only this connection: the loop reconnects.
        """
        try:
            self._conn = conn = await self._open()
            self.connections_opened += 1
            logger.info("Comfy event stream connected to %s", self.url)
            await self._serve_conn(conn, attempt)
        finally:
            self._live = False
            self._acked = set()
            self._sent.clear()
            await self._close_conn()
            self._pulse()

    async def _serve_conn(self, conn: Any, attempt: Attempt) -> None:
        subscribed = False
        keepalive = asyncio.create_task(self._keepalive(conn, attempt), name="comfy-ws-ping")
        loop = asyncio.get_running_loop()

        def unconfirmed() -> None:
            if not subscribed and self._conn is conn:
                self._dead_reason = f"no 'subscribed' within {self._connect_timeout:g}s"
                logger.warning("Comfy event stream: %s; reconnecting", self._dead_reason)
                self._abort(conn)

        watchdog = loop.call_later(self._connect_timeout, unconfirmed)
        try:
            await self._await_connected(conn)
            if self._patterns:
                await self._send_subscribe()
            else:
                watchdog.cancel()
                self._connected_once = True
                attempt.established()
            self._live = True
            self._pulse()
            while True:
                raw = await conn.recv()
                attempt.alive()
                if self._handle(raw) and not subscribed:
                    subscribed = self._connected_once = True
                    attempt.established()
                    self._start_hook()
                    self._pulse()
        except ConnectionClosed as exc:
            self._check_close_code(exc)
            if not self._dead_reason:
                raise ConnectionLost(self._describe_close(exc)) from None
            raise
        finally:
            watchdog.cancel()
            keepalive.cancel()
            try:
                await keepalive
            except asyncio.CancelledError:
                if not keepalive.cancelled():
                    raise  # our own cancellation, not the keepalive's
            except Exception:
                pass
            if self._dead_reason:
                dead, self._dead_reason = self._dead_reason, None
                raise DeadLink(dead) from None

    async def _send_subscribe(self) -> None:
        patterns = list(self._patterns)
        self._sent.append(patterns)
        await self._conn.send(protocol.subscribe_frame(patterns))

    async def _try_send_subscribe(self) -> None:
        """Subscribe on the current connection from outside the loop: if it closed meanwhile, the
        loop reconnects and subscribes with every pattern, so the error is not the caller's."""
        conn = self._conn
        try:
            await self._send_subscribe()
        except Exception as exc:
            logger.info(
                "Comfy event stream closed while subscribing (%s); the reconnect subscribes",
                self._describe(exc),
            )
            self._abort(conn)

    async def _keepalive(self, conn: Any, attempt: Attempt) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ping_interval)
            self._pong = loop.create_future()
            await conn.send(protocol.PING_FRAME)
            try:
                await within(asyncio.shield(self._pong), self.ping_timeout)
            except TimeoutError:
                self._dead_reason = f"no pong within {self.ping_timeout:g}s"
                logger.warning("Comfy event stream: %s; treating it as dead", self._dead_reason)
                self._abort(conn)
                return

    def _describe_close(self, exc: ConnectionClosed) -> str:
        frame = exc.rcvd or exc.sent
        if frame is None:
            return "the connection dropped without a close frame"
        side = "the server" if exc.rcvd is not None else "the client"
        text = f"{side} closed the connection with code {frame.code}"
        if frame.reason:
            text += f" ({self._cut(frame.reason)})"
        return text

    def _check_close_code(self, exc: ConnectionClosed) -> None:
        code = exc.rcvd.code if exc.rcvd is not None else None
        if code in protocol.AUTH_CLOSE_CODES:
            raise WebSocketAuthError(
                f"Comfy event stream at {self.url} closed with code {code}: the API key was "
                "refused; check the key (COMFY_API_KEY or the api_key argument)"
            ) from None

    def _abort(self, conn: Any = None) -> None:
        conn = conn or self._conn
        if conn is None:
            return
        transport = getattr(conn, "transport", None)
        if transport is not None:
            transport.abort()
        else:  # a test double
            task = asyncio.create_task(conn.close())
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
