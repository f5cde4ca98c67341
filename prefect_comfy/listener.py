"""Forward Comfy events into Prefect, from one long-running process.

:class:`ComfyListener` holds one event stream to a Comfy backend and turns every Comfy event into the
Prefect event ``comfy.<event>`` with the same resources, labels and deterministic ids as the sensor
(:func:`prefect_comfy.events.from_comfy_event`), so that an event seen by both, or by two listeners,
is stored once and fires a trigger once.

What it does beyond copying events:

- **Flow-run relations.** A job submitted by a flow run carries the tag ``prefect.flow-run.<id>``; the
  Prefect event is related to that flow run, so flow-run actions and ``{{ flow_run.* }}`` templates
  work. Job events whose payload has no tags (progress) get the tags last seen for the job, or those
  of one REST read of the job (remembered, bounded).
- **Reconciliation.** The stream has no replay. After every reconnect the listener reads through REST
  each job and upload it last saw in flight and emits the terminal event it missed (synthesised from
  :data:`prefect_comfy.models.STATUS_EVENT`; its deterministic id makes a repeat harmless).
- **Heartbeats.** ``comfy.listener.heartbeat`` every ``heartbeat_interval`` seconds, connected or not,
  on the resource ``comfy.listener.<listener id>`` with the label ``comfy.connected``, so that a
  proactive automation can alert when a listener goes quiet. The label is ``"false"`` from the
  moment the link drops (the backend's ``on_disconnect``) until the stream is subscribed again
  (``on_connect``); with a backend whose ``events`` has no ``on_disconnect``, only once the stream
  gives up.
- **A clean stop.** :meth:`ComfyListener.stop` (SIGTERM and SIGINT under :func:`run_listener`) stops
  reading, sends everything already received, and flushes the Prefect events client.

Events go through an explicit Prefect events client (``get_events_client()``), never ``emit_event``:
an events worker started inside a flow run would relate later events to that run. Without a Prefect
API URL the listener refuses to start (instead of quietly starting a temporary server).

Example:
    >>> import asyncio
    >>> from prefect_comfy.backends.cloud import CloudBackend
    >>> async def main():  # doctest: +SKIP
    ...     async with CloudBackend() as backend:       # COMFY_API_KEY, COMFY_BASE_URL
    ...         await ComfyListener(backend, patterns=("job.*", "input.ready")).run()
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from prefect.events import Event, Resource

from prefect_comfy import events as comfy_events
from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.client.backoff import Backoff
from prefect_comfy.client.deadlines import within
from prefect_comfy.exceptions import (
    ComfyConfigError,
    NotFound,
    WebSocketAuthError,
)
from prefect_comfy.models import JOB_TERMINAL, STATUS_EVENT, UPLOAD_TERMINAL, ComfyEvent

logger = logging.getLogger(__name__)

__all__ = [
    "NO_API_URL_MESSAGE",
    "ComfyListener",
    "ListenerStats",
    "default_listener_id",
    "require_prefect_api_url",
    "run_listener",
]

DEFAULT_HEARTBEAT_INTERVAL = 30.0
"""Seconds between two ``comfy.listener.heartbeat`` events."""
DEFAULT_MAX_TRACKED = 10_000
"""Jobs and uploads whose tags and in-flight state the listener remembers (oldest forgotten first)."""
DEFAULT_QUEUE_SIZE = 10_000
"""Prefect events waiting to be sent before reading from Comfy pauses (back pressure)."""
DEFAULT_DRAIN_TIMEOUT = 30.0
"""Longest time a stop spends sending what was already received."""
RECONCILE_CONCURRENCY = 8
"""REST reads at once while reconciling after a reconnect."""
REST_TIMEOUT = 30.0
"""Longest wait for one REST read (reconciliation, tag lookups)."""

NO_API_URL_MESSAGE = (
    "No Prefect API URL is configured, so Comfy events would have nowhere to go. The listener does "
    "not start a temporary server. Point it at a running Prefect server, for example:\n"
    "  prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api\n"
    "(start a local server with `prefect server start`), or set the PREFECT_API_URL environment "
    "variable; for Prefect Cloud, run `prefect cloud login`."
)

_TERMINAL = {"job": JOB_TERMINAL, "input": UPLOAD_TERMINAL, "model": UPLOAD_TERMINAL}


def require_prefect_api_url() -> str:
    """The configured Prefect API URL.

    Raises:
        ComfyConfigError: none is configured (the message says how to set one).
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ComfyConfigError(NO_API_URL_MESSAGE)
    return str(url)


def default_listener_id() -> str:
    """``<hostname>-<pid>``, made safe for a resource id."""
    raw = f"{socket.gethostname()}-{os.getpid()}"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in raw).strip("-") or "listener"


def _accepts_on_disconnect(backend: ComfyBackend) -> bool:
    """Whether ``backend.events`` takes ``on_disconnect`` (added to the interface later)."""
    try:
        parameters = inspect.signature(backend.events).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.name == "on_disconnect" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
    )


def _default_events_client() -> Any:
    from prefect.events.clients import get_events_client

    require_prefect_api_url()
    return get_events_client()


@dataclass
class ListenerStats:
    """What a listener has done so far (also the payload of its heartbeats)."""

    received: int = 0
    """Events read from the Comfy stream."""
    reconciled: int = 0
    """Terminal events synthesised from REST after a reconnect."""
    forwarded: int = 0
    """Prefect events sent (heartbeats excluded)."""
    heartbeats: int = 0
    connects: int = 0
    """Connects and reconnects of the Comfy stream (as reported by ``on_connect``)."""
    disconnects: int = 0
    """Drops of an established connection (as reported by ``on_disconnect``, where supported)."""
    stream_restarts: int = 0
    """Times the stream gave up (reconnect budget spent) and the listener opened a new one."""
    send_errors: int = 0
    """Failed attempts to send to Prefect (each retried)."""


class _Bounded(OrderedDict):
    """An insertion-ordered dict that forgets its oldest entries past ``size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def remember(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


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
        restart_delay: first pause before opening a new stream after the old one gave up.
        send_retry_delay: first pause before sending again after Prefect refused an event.

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
        self._hears_disconnects = _accepts_on_disconnect(backend)
        self._client_factory = events_client or _default_events_client
        self._drain_timeout = drain_timeout
        self._restart_backoff = Backoff(initial=restart_delay, maximum=60.0)
        self._send_backoff = Backoff(initial=send_retry_delay, maximum=30.0)
        self._tags: _Bounded = _Bounded(max_tracked)
        self._in_flight: _Bounded = _Bounded(max_tracked)
        self._queue: asyncio.Queue[tuple[Event, bool]] = asyncio.Queue(maxsize=queue_size)
        self._stop_requested: asyncio.Event | None = None
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = time.monotonic()

    # -- life -----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Listen and forward until :meth:`stop`; then send what was received and return.

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
            sender = asyncio.create_task(self._send_loop(client), name="comfy-listener-send")
            consumer = asyncio.create_task(self._consume(), name="comfy-listener-read")
            tasks = [consumer]
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
                await self._drain(sender)
                await _flush(client)
            logger.info(
                "Comfy listener %s stopped: received %d, reconciled %d, forwarded %d events",
                self.listener_id,
                self.stats.received,
                self.stats.reconciled,
                self.stats.forwarded,
            )
            if consumer.done() and not consumer.cancelled() and consumer.exception():
                raise consumer.exception()  # type: ignore[misc]

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
        """Read the stream until a stop; open a new one when it gives up (auth failures are fatal)."""
        while not self._stopping:
            hooks: dict[str, Any] = {"on_connect": self._on_connect}
            if self._hears_disconnects:
                hooks["on_disconnect"] = self._on_disconnect
            stream = self.backend.events(self.patterns, **hooks)
            try:
                async with contextlib.aclosing(stream):  # type: ignore[type-var]
                    iterator = stream.__aiter__()
                    while True:
                        self._idle.set()
                        try:
                            comfy_event = await iterator.__anext__()
                        except StopAsyncIteration:
                            break
                        self._idle.clear()
                        if not self._hears_disconnects:
                            # No drop signal: an event is the best sign of life. (With one, an
                            # event queued before a drop must not undo the drop.)
                            self.connected = True
                        self.stats.received += 1
                        await self.forward(comfy_event)
                        if self._stopping:
                            return
                reason = "the stream ended"
            except WebSocketAuthError:
                self.connected = False
                logger.error("Comfy refused the API key; the listener stops")
                raise
            except Exception as exc:  # a spent reconnect budget, a transport failure
                reason = str(exc) or type(exc).__name__
            finally:
                self._idle.set()
            self.connected = False
            self.stats.stream_restarts += 1
            delay = self._restart_backoff.next_delay()
            logger.warning(
                "Comfy event stream lost (%s); opening a new one in %.1fs", reason, delay
            )
            await asyncio.sleep(delay)

    async def _on_connect(self) -> None:
        self.connected = True
        self._restart_backoff.reset()
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
        await self.reconcile()

    async def _on_disconnect(self) -> None:
        self.connected = False
        self.stats.disconnects += 1
        logger.info("Comfy event stream to %s dropped; reconnecting", self.backend.address)

    async def forward(self, comfy_event: ComfyEvent, *, reconciled: bool = False) -> Event:
        """Turn one Comfy event into its Prefect event and queue it for sending."""
        kind = comfy_event.kind
        rid = comfy_event.resource_id
        if kind == "job" and rid and "tags" not in comfy_event.payload:
            tags = await self._job_tags(rid)
            if tags is not None:
                comfy_event = comfy_event.model_copy(
                    update={"payload": {**comfy_event.payload, "tags": tags}}
                )
        event = comfy_events.from_comfy_event(
            comfy_event, address=self.backend.address, backend_kind=self.backend.kind
        )
        self._track(comfy_event)
        await self._queue.put((event, True))
        if reconciled:
            self.stats.reconciled += 1
        return event

    def _track(self, comfy_event: ComfyEvent) -> None:
        kind, rid = comfy_event.kind, comfy_event.resource_id
        if rid is None or kind not in _TERMINAL:
            return
        tags = comfy_event.payload.get("tags")
        if kind == "job" and isinstance(tags, list):
            self._tags.remember(rid, [t for t in tags if isinstance(t, str)])
        status = comfy_event.payload.get("status")
        if comfy_event.is_terminal or status in _TERMINAL[kind]:
            self._in_flight.pop((kind, rid), None)
        else:
            self._in_flight.remember((kind, rid), status)

    async def _job_tags(self, job_id: str) -> list[str] | None:
        if job_id in self._tags:
            self._tags.move_to_end(job_id)
            return self._tags[job_id]
        try:
            job = await within(self.backend.get_job(job_id), REST_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("could not read the tags of job %s: %s", job_id, exc)
            return None
        self._tags.remember(job_id, list(job.tags))
        return list(job.tags)

    # -- reconciliation -------------------------------------------------------------------------
    async def reconcile(self) -> int:
        """Read every resource last seen in flight; emit the terminal events that were missed.

        Returns:
            How many terminal events were synthesised.
        """
        pending = list(self._in_flight)
        if not pending:
            return 0
        limit = asyncio.Semaphore(RECONCILE_CONCURRENCY)
        results = await asyncio.gather(*(self._reconcile_one(k, r, limit) for k, r in pending))
        found = sum(results)
        if found:
            logger.info("reconciled %d missed terminal events through REST", found)
        return found

    async def _reconcile_one(self, kind: str, rid: str, limit: asyncio.Semaphore) -> int:
        read = {
            "job": self.backend.get_job,
            "input": self.backend.get_input,
            "model": self.backend.get_model,
        }[kind]
        async with limit:
            try:
                resource = await within(read(rid), REST_TIMEOUT)
            except NotFound:
                self._in_flight.pop((kind, rid), None)
                return 0
            except Exception as exc:  # keep it for the next reconnect
                logger.debug("could not reconcile %s %s: %s", kind, rid, exc)
                return 0
        name = STATUS_EVENT.get((kind, resource.status))
        if name is None or (kind, rid) not in self._in_flight:
            return 0  # still in flight, or the live event got there first
        payload = resource.model_dump(mode="json", exclude_none=True, exclude={"workflow"})
        when = getattr(resource, "completed_at", None)
        await self.forward(ComfyEvent(event=name, payload=payload, timestamp=when), reconciled=True)
        return 1

    # -- heartbeats -----------------------------------------------------------------------------
    def heartbeat_event(self) -> Event:
        """The ``comfy.listener.heartbeat`` event for now."""
        resource_id = f"{comfy_events.PREFIX}.listener.{self.listener_id}"
        return Event(
            event=comfy_events.LISTENER_HEARTBEAT,
            occurred=datetime.now(timezone.utc),
            resource=Resource(
                {
                    "prefect.resource.id": resource_id,
                    "prefect.resource.name": f"Comfy listener {self.listener_id}",
                    "comfy.backend": self.backend.kind,
                    "comfy.connected": "true" if self.connected else "false",
                }
            ),
            payload={
                "address": self.backend.address,
                "patterns": list(self.patterns),
                "connected": self.connected,
                "uptime_seconds": round(time.monotonic() - self._started, 1),
                "in_flight": len(self._in_flight),
                **asdict(self.stats),
            },
        )

    async def _heartbeat_loop(self) -> None:
        assert self.heartbeat_interval
        while True:
            await self._queue.put((self.heartbeat_event(), False))
            self.stats.heartbeats += 1
            await asyncio.sleep(self.heartbeat_interval)

    # -- sending to Prefect ---------------------------------------------------------------------
    async def _send_loop(self, client: Any) -> None:
        backoff = self._send_backoff
        while True:
            event, counted = await self._queue.get()
            try:
                while True:
                    try:
                        await client.emit(event)
                        break
                    except Exception as exc:
                        self.stats.send_errors += 1
                        delay = backoff.next_delay()
                        logger.warning(
                            "could not send %s to Prefect (%s); retrying in %.1fs",
                            event.event,
                            exc,
                            delay,
                        )
                        await asyncio.sleep(delay)
                backoff.reset()
                if counted:
                    self.stats.forwarded += 1
                    logger.debug("forwarded %s %s id=%s", event.event, event.resource.id, event.id)
            finally:
                self._queue.task_done()

    async def _drain(self, sender: asyncio.Task[None]) -> None:
        if not sender.done():
            try:
                await within(self._queue.join(), self._drain_timeout)
            except asyncio.TimeoutError:
                logger.warning(
                    "gave up sending %d events to Prefect after %.0fs",
                    self._queue.qsize(),
                    self._drain_timeout,
                )
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


async def _flush(client: Any, timeout: float = 10.0) -> None:
    """Make sure a Prefect events client's server has every event sent so far.

    ``PrefectEventsClient`` confirms sent events with a websocket ping every few hundred events;
    a ping now confirms the rest before the connection closes.
    """
    websocket = getattr(client, "_websocket", None)
    if websocket is None:
        return
    try:
        pong = await websocket.ping()
        await within(pong, timeout)
    except Exception as exc:
        logger.warning("could not confirm the last events with Prefect: %s", exc)


async def run_listener(
    backend: ComfyBackend | None = None,
    patterns: Sequence[str] = ("*",),
    *,
    block: str | None = None,
    install_signal_handlers: bool = True,
    **options: Any,
) -> ListenerStats:
    """Run a :class:`ComfyListener` until SIGTERM or SIGINT (or cancellation); return its stats.

    Args:
        backend: the Comfy backend; if omitted, from the saved ``ComfyCloudCredentials`` block
            ``block``, else from ``COMFY_API_KEY`` / ``COMFY_BASE_URL``.
        patterns: event patterns to subscribe to.
        block: the name of a saved ``ComfyCloudCredentials`` block.
        install_signal_handlers: stop cleanly on SIGTERM and SIGINT.
        **options: passed to :class:`ComfyListener` (``heartbeat_interval``, ``listener_id`` …).

    Raises:
        ComfyConfigError: no Prefect API URL, or no Comfy credentials.
    """
    if options.get("events_client") is None:
        require_prefect_api_url()
    owned = backend is None
    if backend is None:
        backend = await _backend_from(block)
    listener = ComfyListener(backend, patterns, **options)
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    if install_signal_handlers:
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, _on_signal, listener, sig)
                installed.append(sig)
    try:
        await listener.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if owned:
            await backend.aclose()
    return listener.stats


def _on_signal(listener: ComfyListener, sig: int) -> None:
    import signal

    logger.info("received %s; sending what was received, then stopping", signal.Signals(sig).name)
    listener.stop()


async def _backend_from(block: str | None) -> ComfyBackend:
    if block:
        from prefect_comfy.jobs import load_credentials

        return (await load_credentials(block)).get_backend()
    from prefect_comfy.backends.cloud import CloudBackend

    return CloudBackend()
