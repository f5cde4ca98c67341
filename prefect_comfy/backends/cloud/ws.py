"""The developer API's event stream: one WebSocket that reconnects, re-subscribes and de-duplicates.

`ComfyWebSocket` matches the ``ComfyWebSocket`` of Comfy's own Python SDK (same constructor,
``subscribe`` and ``events``) and adds what long waits need: a JSON ``ping`` keepalive that treats a
missing ``pong`` as a dead link, jittered reconnects on the one reconnect primitive (a budget
that only a connection healthy for a while refills), an
``on_connect`` hook for REST reconciliation (the stream has no replay), an ``on_disconnect`` hook
for telling "reconnecting" from "connected", and de-duplication.

One background task owns the socket: it connects, subscribes, reads every frame and puts the
matching events on a queue that `ComfyWebSocket.events` drains. ``on_connect`` runs as a
task of its own after each ``subscribed``, so a slow hook never holds up reading; ``on_disconnect``
is awaited by that task after a good connection drops, before the pause and the reconnect.

Example:
    >>> async def main():  # doctest: +SKIP
    ...     async with ComfyWebSocket(api_key="comfyui-...") as ws:
    ...         await ws.subscribe(["job.completed", "job.failed"])
    ...         async for event in ws.events():
    ...             print(event.event, event.payload["id"])
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import SecretStr
from websockets.exceptions import ConnectionClosed, InvalidStatus

from prefect_comfy.backends.cloud import protocol
from prefect_comfy.backends.cloud.ws_loop import END, ConnectionLoop
from prefect_comfy.bounded import Bounded
from prefect_comfy.exceptions import (
    ComfyConfigError,
    ComfyProtocolError,
    WebSocketAuthError,
    WebSocketConnectionError,
)
from prefect_comfy.models import ComfyEvent
from prefect_comfy.redaction import redact, redacting_logger
from prefect_comfy.settings import API_PREFIX, ComfySettings
from prefect_comfy.transport.backoff import Backoff
from prefect_comfy.transport.deadlines import wait_event, within
from prefect_comfy.transport.reconnect import ConnectionLost

__all__ = ["ComfyWebSocket", "WebSocketAuthError", "WebSocketConnectionError", "ws_url"]

logger = logging.getLogger(__name__)

DEDUP_SIZE = 10_000
"""How many recent event ids (or id-less event bodies) are remembered to drop repeats."""
CONNECTED_GRACE = 2.0
"""Longest wait for the server's ``connected`` frame; its absence is tolerated (lenient)."""
MAX_FRAME_BYTES = 16 * 2**20
_LOG_CUT = 200


def ws_url(base_url: str) -> str:
    """The stream's URL for an origin: ``http(s)://host`` → ``ws(s)://host/developer/api/v1/ws``.

    Example:
        >>> ws_url("https://cloud.comfy.org/developer/api/v1")
        'wss://cloud.comfy.org/developer/api/v1/ws'
    """
    parts = urlsplit(base_url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ComfyConfigError(f"base_url must be an http(s) origin, got {redact(base_url)!r}")
    return f"{scheme}://{parts.netloc}{API_PREFIX}/ws"


class ComfyWebSocket(ConnectionLoop):
    """The developer API's event stream, as an async context manager.

    Args:
        api_key: the Comfy API key; defaults to ``COMFY_API_KEY``.
        base_url: the API origin (``https://cloud.comfy.org``); defaults to ``COMFY_BASE_URL``.
        auto_reconnect: reconnect after a drop (with jittered exponential backoff).
        max_reconnect_attempts: failed attempts in a row before `WebSocketConnectionError`.
        reconnect_delay: the first pause before reconnecting, seconds.
        max_reconnect_delay: the longest pause, seconds.
        auth: ``"header"`` (``Authorization: Bearer``) or ``"query"`` (``?api_key=``); defaults to
            ``COMFY_WS_AUTH``.
        settings: where unset values come from (default: ``ComfySettings()``, read now).
        ping_interval: seconds between JSON pings; default from settings.
        ping_timeout: seconds to wait for the pong before the link counts as dead.
        on_connect: awaited (as a task of its own) after every connect and reconnect, once
            subscribed: reconcile there what was missed while disconnected.
        on_disconnect: awaited when a good connection (subscribed, or open when there are no
            patterns) is lost, before reconnecting or giving up; not on `aclose`. Keep it
            short: the reconnect waits for it. Its exceptions are logged.
        connect: the connection factory, ``websockets.asyncio.client.connect`` by default (a seam
            for tests).

    Raises:
        ComfyConfigError: no API key, or a base URL that is not an http(s) origin.
    """

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        auto_reconnect: bool = True,
        max_reconnect_attempts: int | None = None,
        reconnect_delay: float | None = None,
        max_reconnect_delay: float | None = None,
        *,
        auth: Literal["header", "query"] | None = None,
        settings: ComfySettings | None = None,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        on_disconnect: Callable[[], Awaitable[None]] | None = None,
        connect: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        settings = settings or ComfySettings()
        if isinstance(api_key, SecretStr):
            api_key = api_key.get_secret_value()
        key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
        if not key:
            raise ComfyConfigError("no Comfy API key: pass api_key or set COMFY_API_KEY")
        self._key = key
        self._auth = auth or settings.ws_auth
        if self._auth not in ("header", "query"):
            raise ComfyConfigError(f"auth must be 'header' or 'query', got {self._auth!r}")
        self.url = ws_url(base_url or settings.base_url)
        """The stream's URL, without the key in it (the key travels separately)."""
        self.auto_reconnect = auto_reconnect
        self.max_reconnect_attempts = (
            settings.max_reconnect_attempts
            if max_reconnect_attempts is None
            else max_reconnect_attempts
        )
        self._backoff = Backoff(
            initial=settings.reconnect_delay if reconnect_delay is None else reconnect_delay,
            maximum=settings.max_reconnect_delay
            if max_reconnect_delay is None
            else max_reconnect_delay,
        )
        self.ping_interval = settings.ping_interval if ping_interval is None else ping_interval
        self.ping_timeout = settings.ping_timeout if ping_timeout is None else ping_timeout
        self._connect_timeout = settings.connect_timeout
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        if connect is None:
            from websockets.asyncio.client import connect
        self._connect = connect

        self.session_id: str | None = None
        self.connections_opened = 0
        """How many connections reached the server (for tests and stats)."""
        self._patterns: list[str] = []
        self._acked: set[str] = set()
        self._sent: deque[list[str]] = deque()
        self._conn: Any = None
        self._live = False
        self._connected_once = False
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._recent = Bounded(DEDUP_SIZE)
        self._runner: asyncio.Task[None] | None = None
        self._fatal: BaseException | None = None
        self._changed = asyncio.Event()
        self._pong: asyncio.Future[None] | None = None
        self._hooks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def __repr__(self) -> str:
        return f"ComfyWebSocket(url={self.url!r}, auth={self._auth!r})"

    # -- life ---------------------------------------------------------------------------------
    async def __aenter__(self) -> ComfyWebSocket:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Open the stream (retrying within the budget); return once the first connection is up.

        Raises:
            WebSocketAuthError: the key was refused.
            WebSocketConnectionError: no connection within the reconnect budget.
        """
        if self._runner is None:
            self._closing = False
            self._connected_once = False
            self._fatal = None
            self._runner = asyncio.create_task(self._run(), name="comfy-ws")
        while not self._connected_once:
            self._raise_if_fatal()
            await self._wait_changed()

    async def aclose(self) -> None:
        """Close the stream; `events` then ends. Safe to call twice."""
        self._closing = True
        tasks = [t for t in (self._runner, *self._hooks) if t is not None]
        for task in tasks:
            task.cancel()
        # gather, not suppress(BaseException): a cancellation of the caller itself must go on.
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runner = None
        await self._close_conn()

    # -- public API ---------------------------------------------------------------------------
    async def subscribe(self, patterns: Iterable[str]) -> None:
        """Add event patterns (``*``, ``job.*`` or a name) and wait until the server confirms them.

        Subscriptions add up and are restored after every reconnect.

        Raises:
            ComfyConfigError: a pattern is malformed.
            WebSocketAuthError, WebSocketConnectionError: the stream failed for good first.
        """
        if isinstance(patterns, str):
            patterns = [patterns]
        try:
            wanted = [protocol.validate_pattern(p) for p in patterns]
        except ValueError as exc:
            raise ComfyConfigError(str(exc)) from None
        self._patterns.extend(p for p in dict.fromkeys(wanted) if p not in self._patterns)
        if self._runner is None:
            await self.connect()
        if self._live and not set(wanted) <= self._acked:
            await self._try_send_subscribe()
        conn = self._conn
        while not set(wanted) <= self._acked:
            self._raise_if_fatal()
            if not await self._wait_changed(self._connect_timeout) and conn is self._conn:
                # A live connection that ignores our subscribe is as good as dead: reconnecting
                # subscribes again with every pattern.
                logger.warning("Comfy event stream did not confirm the subscription; reconnecting")
                self._abort()

    async def events(self) -> AsyncIterator[ComfyEvent]:
        """The matching events, in order, across reconnects, duplicates dropped.

        Raises:
            WebSocketAuthError: the key was refused.
            WebSocketConnectionError: the reconnect budget is spent.
        """
        if self._runner is None:
            await self.connect()
        while True:
            item = await self._queue.get()
            if item is END:
                self._queue.put_nowait(END)  # for any other reader
                if self._fatal is not None:
                    raise self._fatal
                return
            yield item

    async def _open(self) -> Any:
        headers = {}
        url = self.url
        if self._auth == "header":
            headers["Authorization"] = f"Bearer {self._key}"
        else:
            url = f"{url}?api_key={self._key}"
        try:
            return await self._connect(
                url,
                additional_headers=headers,
                ping_interval=None,  # the protocol's JSON ping is ours (see _keepalive)
                open_timeout=self._connect_timeout,
                close_timeout=min(2.0, self._connect_timeout),
                max_size=MAX_FRAME_BYTES,
                logger=redacting_logger("websockets.client", [self._key]),
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise WebSocketAuthError(
                    f"Comfy event stream at {self.url} refused the API key (HTTP {status}); "
                    "check the key (COMFY_API_KEY or the api_key argument)"
                ) from None
            raise ConnectionLost(f"handshake answered HTTP {status}") from None
        except ConnectionClosed as exc:
            self._check_close_code(exc)
            raise ConnectionLost(self._describe(exc)) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise ConnectionLost(self._describe(exc)) from None

    async def _await_connected(self, conn: Any) -> None:
        """Read the ``connected`` frame if it comes soon (lenient: its absence is tolerated)."""
        try:
            first = await within(conn.recv(), min(CONNECTED_GRACE, self._connect_timeout))
        except TimeoutError:
            logger.debug("no 'connected' frame from the Comfy event stream; going on")
            return
        self._handle(first)

    # -- frames -------------------------------------------------------------------------------
    def _handle(self, raw: str | bytes) -> bool:
        """Act on one frame; True if it was ``subscribed`` and every pattern is now active."""
        try:
            frame = protocol.decode(raw)
            kind = frame.type
            if kind == "event":
                self._on_event(frame.event())
            elif kind == "pong":
                if self._pong is not None and not self._pong.done():
                    self._pong.set_result(None)
            elif kind == "subscribed":
                sent = self._sent.popleft() if self._sent else list(self._patterns)
                self._acked.update(sent)
                missing = [p for p in self._patterns if p not in self._acked]
                if missing and not self._sent and self._live:
                    task = asyncio.create_task(self._try_send_subscribe())
                    self._hooks.add(task)
                    task.add_done_callback(self._hooks.discard)
                self._pulse()
                return not missing
            elif kind == "connected":
                session = frame.data.get("session_id")
                self.session_id = str(session) if session is not None else None
            elif kind == "error":
                logger.warning(
                    "Comfy event stream error frame: [%s] %s",
                    frame.data.get("code"),
                    self._cut(frame.data.get("message")),
                )
            else:
                logger.debug("ignoring Comfy frame of type %r", kind)
        except (ComfyProtocolError, ValueError) as exc:
            logger.warning("skipping a malformed Comfy frame: %s", self._cut(exc))
        return False

    def _on_event(self, event: ComfyEvent) -> None:
        if not protocol.matches_any(self._patterns, event.event):
            return
        if self._recent.seen(event.digest()):
            logger.debug("dropping a repeated %s event", event.event)
            return
        self._queue.put_nowait(event)

    # -- small pieces -------------------------------------------------------------------------
    def _start_hook(self) -> None:
        if self._on_connect is None:
            return
        task = asyncio.create_task(
            self._run_hook(self._on_connect, "on_connect"), name="comfy-ws-on-connect"
        )
        self._hooks.add(task)
        task.add_done_callback(self._hooks.discard)

    @staticmethod
    async def _run_hook(hook: Callable[[], Awaitable[None]], name: str) -> None:
        try:
            await hook()
        except Exception:
            logger.exception("the %s hook of the Comfy event stream failed", name)

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closing:
            raise WebSocketConnectionError("the Comfy event stream is closed")

    def _pulse(self) -> None:
        """Wake everyone waiting for a change of state."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_changed(self, timeout: float | None = None) -> bool:
        return await wait_event(self._changed, timeout)

    def _describe(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        return self._cut(redact(text, [self._key]))

    def _cut(self, value: Any) -> str:
        return redact(str(value), [self._key])[:_LOG_CUT]
