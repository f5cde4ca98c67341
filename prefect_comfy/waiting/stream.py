"""The life of a hub's one stream: opened on demand, kept a while, closed when idle.

`SharedStream` is the part of `EventHub` that owns the
backend and its ``events()`` iterator: it opens the stream when the first wait comes, counts
connection *epochs* (every connect and every disconnect starts a new one, so that an answer or a
``covered_since`` mark from before a gap is recognised as such), lingers `DEFAULT_LINGER`
seconds after the last wait, then closes the stream and the backend, and opens them anew (on a
fresh clone) for the next wait. The hub fills in what happens to waits through the ``_source``, ``_dispatch``,
``_connected``, ``_ended``, ``_idle``, ``_new_backend`` and ``_closing`` hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.exceptions import WebSocketConnectionError
from prefect_comfy.models import ComfyEvent
from prefect_comfy.waiting.loop import Mailbox

__all__ = ["DEFAULT_LINGER", "HUB_PATTERNS", "SharedStream"]

logger = logging.getLogger(__name__)

HUB_PATTERNS: tuple[str, ...] = ("job.*", "input.*", "model.*")
"""What the shared stream subscribes to."""
DEFAULT_LINGER = 5.0
"""Seconds the stream stays open after the last wait ends."""


class SharedStream:
    """One backend's event stream, run on the loop of ``home``.

    Args:
        backend: the backend (a clone the owner may close; a new clone is made to reopen).
        linger: seconds to keep the stream open once idle.
        home: the loop everything here runs on.
    """

    def __init__(self, backend: ComfyBackend, linger: float, home: Mailbox) -> None:
        self.backend = backend
        self.linger = linger
        self._home = home
        self._backend_closed = False
        self._stream: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._live = False
        self._epoch = 0
        self.streams_opened = 0
        """How many times the backend's stream was opened."""
        self.connections_opened = 0
        """How many connects and reconnects the stream reported (``on_connect`` calls)."""
        self.stopped_with: BaseException | None = None
        """Why the stream last opened stopped (``None`` while it runs, or before it first ran)."""

    @property
    def stream_open(self) -> bool:
        """Whether the shared stream is running."""
        return self._stream is not None

    # -- hooks ----------------------------------------------------------------------------------
    def _source(self) -> AsyncIterator[ComfyEvent]:
        """The stream to run: the backend's global ``events()``."""
        return self.backend.events(
            list(HUB_PATTERNS),
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            forever=True,  # the backend's loop is the only one that reconnects
        )

    def _dispatch(self, event: ComfyEvent) -> None:
        raise NotImplementedError

    def _connected(self) -> None:
        """After every connect and reconnect (the stream is subscribed)."""

    def _ended(self, error: BaseException) -> None:
        """The stream stopped for good (or was closed) with this error."""

    def _idle(self) -> bool:
        """Whether nobody needs the stream."""
        return True

    def _new_backend(self) -> None:
        """``backend`` was replaced by a fresh clone."""

    async def _closing(self) -> None:
        """The stream is closing because it was idle."""

    # -- opening --------------------------------------------------------------------------------
    def _keep_open(self) -> None:
        self._cancel_linger()
        if self._stream is None and self._closer is None:
            self._open_stream()

    def _open_stream(self) -> None:
        if self._backend_closed:
            self.backend = self.backend.clone()
            self._backend_closed = False
            self._new_backend()
        self.streams_opened += 1
        self.stopped_with = None
        self._stream = asyncio.ensure_future(self._run_stream())

    async def _run_stream(self) -> None:
        error: BaseException = WebSocketConnectionError("the Comfy event stream ended")
        stream: AsyncIterator[ComfyEvent] | None = None
        try:
            stream = self._source()  # may raise: a kind without this stream says so on the call
            async for event in stream:
                self._dispatch(event)
        except asyncio.CancelledError:
            error = WebSocketConnectionError("the Comfy event stream was closed")
            raise
        except Exception as exc:  # WebSocketAuthError, WebSocketConnectionError, or a bug below
            error = exc
            logger.debug("Comfy event stream stopped: %s", exc)  # the hub says what it does next
        finally:
            self._live = False
            self._epoch += 1
            self._stream = None
            self.stopped_with = error
            if stream is not None:
                with contextlib.suppress(Exception):  # not BaseException: a cancel goes on
                    await stream.aclose()  # type: ignore[attr-defined]
            self._ended(error)
            if self._closer is None and self._idle():
                self._schedule_linger()

    async def _on_connect(self) -> None:
        self.connections_opened += 1
        self._epoch += 1
        self._live = True
        self._connected()

    async def _on_disconnect(self) -> None:
        self._live = False
        self._epoch += 1

    # -- closing --------------------------------------------------------------------------------
    def _schedule_linger(self) -> None:
        self._cancel_linger()
        self._linger = self._home.bind().call_later(self.linger, self._linger_expired)

    def _cancel_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def _linger_expired(self) -> None:
        self._linger = None
        if self._idle() and self._closer is None:
            self._closer = asyncio.ensure_future(self._close_stream())

    async def _close_stream(self) -> None:
        try:
            if self._stream is not None:
                self._stream.cancel()
                await asyncio.gather(self._stream, return_exceptions=True)
            await self._closing()
            if not self._backend_closed:
                self._backend_closed = True
                try:
                    await self.backend.aclose()
                except Exception as exc:
                    logger.debug("closing the hub's backend failed: %s", exc)
            logger.debug("Comfy event hub closed its stream")
        finally:
            self._closer = None
            if not self._idle():  # waits came while closing
                self._open_stream()

    async def _close_now(self) -> None:
        """Close now (on the home loop), and wait until it is closed."""
        self._cancel_linger()
        if self._closer is None:
            self._closer = asyncio.ensure_future(self._close_stream())
        await asyncio.shield(self._closer)
