"""Forward Comfy events into Prefect, from one long-running process.

`ComfyListener` holds one event stream to a Comfy backend (on Comfy API v2, which has no
account-wide stream, `JobFollower` finds the jobs and follows
each on its own stream) and turns every Comfy event into the
Prefect event ``comfy.<event>`` with the same resources, labels and deterministic ids as the sensor
(`prefect_comfy.orchestration.events.names.from_comfy_event`), so that an event seen by both, or by two listeners,
is stored once and fires a trigger once.

What it does beyond copying events (each in its own module, described in ``docs/listener.md``):
flow-run relations from the job's ``prefect.flow-run.<id>`` tag, with the tags of progress events
filled in (`tracking`); after every reconnect, reconciliation through
REST of what was in flight and a catch-up by time of what was created around the drop
(`recovery`); ``comfy.listener.heartbeat`` events with the label
``comfy.connected`` (`heartbeat`); pacing, with outcomes first and
progress coalesced (`sender`); a durable cursor of what is in flight
(`cursor`); and a clean stop that sends what was received and flushes.

Events go through an explicit Prefect events client (``get_events_client()``), never ``emit_event``:
an events worker started inside a flow run would relate later events to that run. Without a Prefect
API URL the listener refuses to start (instead of quietly starting a temporary server).

`prefect_comfy.listener.run` runs it as a process (backend, cursor, signals). Everything public
is importable from `prefect_comfy.listener`.

Example:
    >>> import asyncio
    >>> from prefect_comfy.backends.cloud.backend import CloudBackend
    >>> async def main():  # doctest: +SKIP
    ...     async with CloudBackend() as backend:       # COMFY_API_KEY, COMFY_BASE_URL
    ...         await ComfyListener(backend, patterns=("job.*", "input.ready")).run()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from prefect.events import Event

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.exceptions import WebSocketAuthError
from prefect_comfy.listener.catchup import CATCH_UP_SLACK
from prefect_comfy.listener.cursor import Cursor
from prefect_comfy.listener.follow import JobFollower
from prefect_comfy.listener.heartbeat import heartbeat_event
from prefect_comfy.listener.keeper import CursorKeeper
from prefect_comfy.listener.recovery import Recovery
from prefect_comfy.listener.sender import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_PROGRESS_INTERVAL,
    DEFAULT_QUEUE_SIZE,
    PrefectSender,
    events_per_second_from_env,
    flush,
    prefect_events_client,
)
from prefect_comfy.listener.stats import ListenerStats
from prefect_comfy.listener.stored import StoredEvents
from prefect_comfy.listener.tracking import DEFAULT_MAX_TRACKED, Bounded, InFlightTracker
from prefect_comfy.models import PREVIEW_EVENT, ComfyEvent
from prefect_comfy.orchestration.events import names as comfy_events
from prefect_comfy.orchestration.events.budget import ProgressBudget
from prefect_comfy.transport.backoff import Backoff
from prefect_comfy.transport.deadlines import within
from prefect_comfy.transport.reconnect import FOREVER, Attempt, ConnectionLost, Reconnect
from prefect_comfy.waiting.slots import per_job_mode

logger = logging.getLogger(__name__)

__all__ = ["ComfyListener", "default_listener_id"]

DEFAULT_HEARTBEAT_INTERVAL = 30.0
"""Seconds between two ``comfy.listener.heartbeat`` events."""


def default_listener_id() -> str:
    """``<hostname>-<pid>``, made safe for a resource id."""
    raw = f"{socket.gethostname()}-{os.getpid()}"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in raw).strip("-") or "listener"


class ComfyListener:
    """Forwards the events of one Comfy backend into Prefect.

    Args:
        backend: the Comfy server to listen to (the listener does not close it).
        patterns: event patterns to subscribe to (``*``, ``job.*`` or a name).
        heartbeat_interval: seconds between heartbeats; ``0`` or ``None`` for none.
        listener_id: names the heartbeat resource ``comfy.listener.<id>``; default
            ``<hostname>-<pid>``.
        events_client: a factory returning a Prefect events client (an async context manager with
            ``emit``); by default ``prefect.events.clients.get_events_client`` once a Prefect API URL
            is known to be configured.
        max_tracked: jobs and uploads remembered for tags and reconciliation.
        queue_size: Prefect events buffered before reading from Comfy waits.
        drain_timeout: the longest a stop spends sending what was already received.
        restart_delay: first pause before opening a new stream after the old one ended (the
            stream's own reconnects pause as the settings say).
        send_retry_delay: first pause before sending again after Prefect refused an event.
        events_per_second: most events sent to Prefect a second, all kinds; ``None``:
            ``COMFY_LISTENER_EVENTS_PER_SECOND`` or 300; ``0``: no limit.
        progress_interval: least seconds between two progress events of one job.
        progress_events: the progress budget (default: the process-wide one).
        cursor: a durable cursor (`FileCursor`,
            `VariableCursor`); ``None``: in memory only.
        stored_events: asks Prefect which recovered outcomes it already stores, so that they are
            not sent again (default `StoredEvents` on ``get_client()``).
        **follow: for a backend without a global stream (Comfy API v2), passed to
            `JobFollower` (``submitted``, ``max_streams``).

    Example:
        >>> listener = ComfyListener(backend, patterns=("*",))  # doctest: +SKIP
        >>> task = asyncio.create_task(listener.run())  # doctest: +SKIP
        >>> listener.stop(); await task  # doctest: +SKIP
    """

    def __init__(
        self,
        backend: ComfyBackend,
        patterns: Sequence[str] = ("*",),
        *,
        heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL,
        listener_id: str | None = None,
        events_client: Callable[[], Any] | None = None,
        max_tracked: int = DEFAULT_MAX_TRACKED,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        restart_delay: float = 1.0,
        send_retry_delay: float = 0.5,
        events_per_second: float | None = None,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
        progress_events: ProgressBudget | None = None,
        cursor: Cursor | None = None,
        stored_events: StoredEvents | None = None,
        **follow: Any,
    ) -> None:
        if isinstance(patterns, str):
            patterns = [patterns]
        self.backend = backend
        self.patterns = tuple(patterns) or ("*",)
        self.heartbeat_interval = heartbeat_interval or None
        self.listener_id = listener_id or default_listener_id()
        self.stats = ListenerStats()
        self.connected = False
        """Whether the Comfy stream is up, as far as the listener can tell."""
        self._client_factory = events_client or prefect_events_client
        self._drain_timeout = drain_timeout
        self._restart_backoff = Backoff(initial=restart_delay, maximum=60.0)
        self._attempt: Attempt | None = None
        self._sender = PrefectSender(
            self.stats,
            queue_size=queue_size,
            drain_timeout=drain_timeout,
            retry_delay=send_retry_delay,
            events_per_second=(
                events_per_second_from_env() if events_per_second is None else events_per_second
            ),
            progress_interval=progress_interval,
            progress_events=progress_events,
        )
        self._tracker = InFlightTracker(backend, max_tracked)
        self._tags = self._tracker.tags
        self._in_flight = self._tracker.in_flight
        self.follower = (  # no account-wide stream (Comfy API v2): find and follow the jobs
            JobFollower(backend, in_flight=self._in_flight, max_tracked=max_tracked, **follow)
            if per_job_mode(backend)
            else None
        )
        self._ended = Bounded(max_tracked)
        self._cursor = (
            CursorKeeper(
                cursor,
                address=backend.address,
                in_flight=self._in_flight,
                ended=self._ended,
                pending=self._sender.pending_resources,
                connected=lambda: self.connected,
            )
            if cursor is not None
            else None
        )
        self._recovery = Recovery(
            backend,
            self._tracker,
            ended=self._ended,
            cursor=self._cursor,
            forward=self._forward_reconciled,
            stats=self.stats,
            stored=stored_events,
        )
        self._stop_requested: asyncio.Event | None = None
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = time.monotonic()

    # -- life -----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Listen and forward until `stop`; then send what was received and return.

        Raises:
            ComfyConfigError: no Prefect API URL is configured (default events client).
            WebSocketAuthError: the Comfy API key was refused (after sending what was received).
        """
        self._loop = asyncio.get_running_loop()
        self._stop_requested = self._stop_requested or asyncio.Event()
        client_cm = self._client_factory()
        async with client_cm as client:
            logger.info(
                "Comfy listener %s forwarding %s events from %s into Prefect",
                self.listener_id,
                ",".join(self.patterns),
                self.backend.address,
            )
            if self._cursor is not None:
                await self._cursor.restore()
                await self._cursor.check_writable()
                if self.follower is not None and self._cursor.restored_watermark is not None:
                    self.follower.look_back_to(self._cursor.restored_watermark - CATCH_UP_SLACK)
            sender = asyncio.create_task(self._sender.send_loop(client), name="comfy-listener-send")
            consumer = asyncio.create_task(self._consume(), name="comfy-listener-read")
            tasks = [consumer]
            if self._cursor is not None:
                tasks.append(asyncio.create_task(self._cursor.run(), name="comfy-listener-cursor"))
            if self.heartbeat_interval:
                tasks.append(
                    asyncio.create_task(self._heartbeat_loop(), name="comfy-listener-heartbeat")
                )
            stopper = asyncio.create_task(self._stop_requested.wait())
            try:
                await asyncio.wait({consumer, stopper, sender}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._stopping = True
                stopper.cancel()
                # An event being forwarded was received: let it reach the queue before stopping.
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(self._idle.wait(), self._drain_timeout)
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                await self._sender.drain(sender)
                await flush(client)
                if self._cursor is not None:
                    await self._cursor.save_quietly()
                self._refresh_backlog()
            logger.info(
                "Comfy listener %s stopped: received %d, reconciled %d, forwarded %d events",
                self.listener_id,
                self.stats.received,
                self.stats.reconciled,
                self.stats.forwarded,
            )
            if consumer.done() and not consumer.cancelled() and consumer.exception():
                raise consumer.exception()  # type: ignore[misc]

    def _refresh_backlog(self) -> None:
        backlog = self._sender.backlog()
        self.stats.queued = backlog.queued
        self.stats.oldest_pending_seconds = backlog.oldest_pending_seconds
        self.stats.behind = backlog.behind
        if self._cursor is not None:
            self.stats.cursor_saves = self._cursor.saves
            self.stats.cursor_durable = self._cursor.error is None
            self.stats.cursor_error = self._cursor.error

    def stop(self) -> None:
        """Ask the listener to stop (safe from a signal handler or another thread)."""
        if self._stop_requested is None:
            self._stop_requested = asyncio.Event()
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                loop.call_soon_threadsafe(self._stop_requested.set)
                return
        self._stop_requested.set()

    # -- reading from Comfy ---------------------------------------------------------------------
    async def _consume(self) -> None:
        """Read the stream until a stop; open a new one when it ends (auth failures are fatal).

        One loop reconnects on each path. A backend's ``events()`` reconnects by itself, and the
        listener asks it to do so for ever (``forever=True``: a listener does not give up), so
        it is not wrapped in a second reconnect loop with a budget of its own. This loop, on the
        same primitive, opens a new stream only when one *ended*: on Comfy API v2, where the
        `JobFollower` has no connection to keep and its first round failed (the server is
        down), or a stream that stopped for another reason (it raised, or a backend ended it).
        """
        reconnect = Reconnect(
            f"Comfy event stream at {self.backend.address} (listener)",
            max_attempts=FOREVER,
            backoff=self._restart_backoff,
        )
        try:
            async for attempt in reconnect:
                self._attempt = attempt
                async with attempt:
                    await self._read_stream()
                self._idle.set()
                self.connected = False
                if self._stopping:
                    return
                self.stats.stream_restarts += 1
                logger.warning(
                    "Comfy event stream lost (%s); opening a new one",
                    reconnect.describe(attempt.reason),
                )
        except WebSocketAuthError:
            self.connected = False
            logger.error("Comfy refused the API key; the listener stops")
            raise
        finally:
            self._idle.set()

    async def _read_stream(self) -> None:
        """One ``events()`` stream, forwarded until it ends or the listener stops."""
        hooks = {"on_connect": self._on_connect, "on_disconnect": self._on_disconnect}
        if self.follower is not None:
            stream = self.follower.events(self.patterns, **hooks)
        else:  # the backend's stream is the one loop that reconnects, with no budget
            stream = self.backend.events(self.patterns, **hooks, forever=True)
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            iterator = stream.__aiter__()
            while True:
                self._idle.set()
                try:
                    comfy_event = await iterator.__anext__()
                except StopAsyncIteration:
                    raise ConnectionLost("the stream ended") from None
                self._idle.clear()
                if self.follower is not None and self.follower.first_seen_ended(comfy_event):
                    # an outcome that may have been sent before: recovered, checked with Prefect
                    await self._recovery.forward_unless_stored(comfy_event)
                else:
                    self.stats.received += 1
                    await self.forward(comfy_event)
                if self._stopping:
                    return

    async def _on_connect(self) -> None:
        self.connected = True
        if self._attempt is not None:
            self._attempt.established()
        self.stats.connects += 1
        if self.stats.connects > 1:
            logger.info(
                "Comfy event stream reconnected to %s (connect #%d); reconciling %d resources",
                self.backend.address,
                self.stats.connects,
                len(self._in_flight),
            )
        else:
            logger.info("Comfy event stream connected to %s", self.backend.address)
        await self._recovery.after_connect()

    async def _on_disconnect(self) -> None:
        self._recovery.dropped()
        self.connected = False
        self.stats.disconnects += 1
        logger.info("Comfy event stream to %s dropped; reconnecting", self.backend.address)

    async def forward(self, comfy_event: ComfyEvent, *, reconciled: bool = False) -> None:
        """Queue one Comfy event for Prefect; it never waits on REST.

        The Prefect event is built when it is sent (`PacedQueue.put_lazy`), so progress that
        is coalesced into a newer update is never built, and a job event without tags gets the tags
        known by then: those of an earlier event of the job, or of a REST read started here in the
        background (`InFlightTracker.tags_soon`), which the sender awaits for a moment.
        """
        if (
            comfy_event.event == PREVIEW_EVENT
        ):  # an image: for a wait's callback, not a Prefect event
            return
        kind = comfy_event.kind
        rid = comfy_event.resource_id
        self._tracker.track(comfy_event)
        ready = None
        if kind == "job" and rid and "tags" not in comfy_event.payload:
            ready = self._tracker.tags_soon(rid)
        if rid and comfy_event.is_terminal:
            self._ended.remember((kind, rid), True)
        received = None if comfy_event.timestamp is not None else datetime.now(UTC)
        await self._sender.put_lazy(
            comfy_events.prefect_event_name(comfy_event.event),
            comfy_events.resource_id(kind, str(comfy_event.payload.get("id"))),
            partial(self._build, comfy_event, received),
            ready=ready,
        )
        if reconciled:
            self.stats.reconciled += 1

    def _build(self, comfy_event: ComfyEvent, received: datetime | None) -> Event:
        """The Prefect event of a Comfy event, with the job's tags if it came without them."""
        rid = comfy_event.resource_id
        if comfy_event.kind == "job" and rid and "tags" not in comfy_event.payload:
            tags = self._tags.get(rid)
            if tags is not None:
                comfy_event = comfy_event.model_copy(
                    update={"payload": {**comfy_event.payload, "tags": tags}}
                )
        return comfy_events.from_comfy_event(
            comfy_event,
            address=self.backend.address,
            backend_kind=self.backend.kind,
            occurred=received,
        )

    async def reconcile(self) -> int:
        """Read every resource last seen in flight; forward the terminal events that were missed.

        Returns:
            How many terminal events were forwarded (those Prefect already stores are not).
        """
        return await self._recovery.reconcile()

    async def _forward_reconciled(self, comfy_event: ComfyEvent) -> None:
        await self.forward(comfy_event, reconciled=True)

    # -- heartbeats -----------------------------------------------------------------------------
    def heartbeat_event(self) -> Event:
        """The ``comfy.listener.heartbeat`` event for now."""
        self._refresh_backlog()
        return heartbeat_event(
            self.listener_id,
            self.backend,
            patterns=self.patterns,
            connected=self.connected,
            uptime=time.monotonic() - self._started,
            in_flight=len(self._in_flight),
            stats=self.stats,
        )

    async def _heartbeat_loop(self) -> None:
        assert self.heartbeat_interval
        while True:
            await self._sender.put(self.heartbeat_event(), counted=False)
            self.stats.heartbeats += 1
            await asyncio.sleep(self.heartbeat_interval)
