"""Waiting at scale: one event stream per set of credentials, shared by every waiter in an event loop.

:meth:`EventHub.shared` returns the hub of a backend's :attr:`~ComfyBackend.connection_key` in the
running event loop. The hub owns a clone of the backend, opens ONE stream
(``events(["job.*", "input.*", "model.*"])``) when the first wait starts, hands each event to the
waits for its resource, and closes the stream a short while (:data:`DEFAULT_LINGER`) after the last
wait ends, so that a burst of sequential waits reuses it.

The stream has no replay, so after every connect and reconnect the hub reads each pending resource
once over REST (at most :data:`REST_CONCURRENCY` reads at a time) and resolves the waits whose
resource already ended; a wait that starts while the stream is up reads its resource once too. There
is no polling while the stream is healthy.

Example:
    >>> async def main(backend):  # doctest: +SKIP
    ...     event = await EventHub.shared(backend).wait("job", "job_123", timeout=600)
    ...     print(event.event)  # job.completed, job.failed or job.cancelled
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from prefect_comfy.backends.base import ComfyBackend, ProgressCallback
from prefect_comfy.exceptions import (
    ComfyConfigError,
    JobTimedOut,
    NotFound,
    WaitTimedOut,
    WebSocketConnectionError,
)
from prefect_comfy.models import STATUS_EVENT, TERMINAL_EVENTS, ComfyEvent

__all__ = ["DEFAULT_LINGER", "HUB_PATTERNS", "REST_CONCURRENCY", "EventHub"]

logger = logging.getLogger(__name__)

Kind = Literal["job", "input", "model"]
HUB_PATTERNS: tuple[str, ...] = ("job.*", "input.*", "model.*")
"""What the shared stream subscribes to."""
DEFAULT_LINGER = 5.0
"""Seconds the stream stays open after the last wait ends."""
REST_CONCURRENCY = 16
"""Most REST reads in flight at once while reconciling."""
_SEEN_IDS = 10_000


@dataclass(eq=False)
class _Waiter:
    """One call of :meth:`EventHub.wait`."""

    kind: str
    resource_id: str
    future: asyncio.Future[ComfyEvent]
    on_progress: ProgressCallback | None = None
    inbox: asyncio.Queue[ComfyEvent] | None = None
    pump: asyncio.Task[None] | None = None
    delivered: set[str] = field(default_factory=set)
    ended: bool = False

    def deliver(self, event: ComfyEvent) -> None:
        """Hand an event over in order: progress to the callback, the terminal one to the future."""
        if self.ended:
            return
        if event.id is not None:
            if event.id in self.delivered:
                return
            self.delivered.add(event.id)
        terminal = event.event in TERMINAL_EVENTS
        if terminal:
            self.ended = True
        if self.on_progress is None:
            if terminal and not self.future.done():
                self.future.set_result(event)
            return
        if self.inbox is None:
            self.inbox = asyncio.Queue()
            self.pump = asyncio.create_task(self._pump(), name=f"comfy-progress-{self.resource_id}")
        self.inbox.put_nowait(event)

    def fail(self, exc: BaseException) -> None:
        self.ended = True
        if not self.future.done():
            self.future.set_exception(exc)

    async def _pump(self) -> None:
        assert self.inbox is not None
        while True:
            event = await self.inbox.get()
            if event.event in TERMINAL_EVENTS:
                if not self.future.done():
                    self.future.set_result(event)
                return
            try:
                result = self.on_progress(event)  # type: ignore[misc]
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("on_progress callback for Comfy job %s failed", self.resource_id)


class EventHub:
    """The shared event stream of one set of credentials in one event loop.

    Use :meth:`shared`; the constructor is for tests.

    Args:
        backend: the backend the hub owns (a clone; the hub closes it when idle).
        linger: seconds to keep the stream open after the last wait ends.
        rest_concurrency: most REST reads in flight at once.
    """

    _registry: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, EventHub]]]
    _registry = weakref.WeakKeyDictionary()

    def __init__(
        self,
        backend: ComfyBackend,
        *,
        linger: float = DEFAULT_LINGER,
        rest_concurrency: int = REST_CONCURRENCY,
    ) -> None:
        self.backend = backend
        self.linger = linger
        self._backend_closed = False
        self._waiters: dict[tuple[str, str], list[_Waiter]] = {}
        self._last_status: dict[tuple[str, str], str] = {}
        self._stream: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._live = False
        self._rest = asyncio.Semaphore(rest_concurrency)
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.streams_opened = 0
        """How many times the hub opened the backend's stream."""
        self.connections_opened = 0
        """How many connects and reconnects the stream reported (``on_connect`` calls)."""
        self.rest_reads = 0
        """REST reads made to reconcile."""
        self.events_received = 0

    @classmethod
    def shared(cls, backend: ComfyBackend) -> EventHub:
        """The hub for the backend's credentials in the running event loop (made on first use)."""
        loop = asyncio.get_running_loop()
        hubs = cls._registry.setdefault(loop, {})
        key = backend.connection_key
        hub = hubs.get(key)
        if hub is None:
            hub = hubs[key] = cls(backend.clone())
        return hub

    @property
    def stats(self) -> dict[str, int]:
        """Counters for tests and benchmarks."""
        return {
            "streams_opened": self.streams_opened,
            "connections_opened": self.connections_opened,
            "rest_reads": self.rest_reads,
            "events_received": self.events_received,
            "pending": sum(len(w) for w in self._waiters.values()),
            "stream_open": int(self._stream is not None),
        }

    @property
    def stream_open(self) -> bool:
        """Whether the shared stream is running."""
        return self._stream is not None

    # -- waiting ------------------------------------------------------------------------------
    async def wait(
        self,
        kind: Kind,
        resource_id: str,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> ComfyEvent:
        """Wait for a resource's terminal event and return it (failed and cancelled included).

        Args:
            kind: ``job``, ``input`` or ``model``.
            resource_id: the resource's id.
            timeout: seconds; ``None`` waits for ever.
            on_progress: called (sync or async, in order, once each) with every ``job.progress``
                of the job before the wait returns; its exceptions are logged.

        Returns:
            The terminal :class:`ComfyEvent`, such as ``job.completed`` or ``job.failed``.

        Raises:
            JobTimedOut: a job wait timed out (it names the last known status).
            WaitTimedOut: an input or model wait timed out.
            WebSocketAuthError, WebSocketConnectionError: the stream failed for good.
            NotFound: the resource does not exist.
        """
        if kind not in ("job", "input", "model"):
            raise ComfyConfigError(f"kind must be 'job', 'input' or 'model', got {kind!r}")
        if not resource_id:
            raise ComfyConfigError(f"a {kind} id is required")
        deadline = None if timeout is None else time.monotonic() + timeout
        resource_id = str(resource_id)
        waiter = _Waiter(kind, resource_id, asyncio.get_running_loop().create_future(), on_progress)
        key = (kind, resource_id)
        if self._closer is not None:
            await asyncio.shield(self._closer)
        self._waiters.setdefault(key, []).append(waiter)
        self._cancel_linger()
        try:
            if self._stream is None:
                self._open_stream()
            elif self._live:
                self._spawn(self._reconcile([key]))  # it may have ended before we listened
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait({waiter.future}, timeout=remaining)
            if not done:
                status = self._last_status.get(key)
                if kind == "job":
                    raise JobTimedOut(resource_id, timeout=timeout or 0.0, status=status)
                raise WaitTimedOut(kind, resource_id, timeout=timeout or 0.0, status=status)
            return waiter.future.result()
        finally:
            self._leave(waiter)

    def _leave(self, waiter: _Waiter) -> None:
        key = (waiter.kind, waiter.resource_id)
        waiter.ended = True
        if waiter.pump is not None and not waiter.pump.done():
            waiter.pump.cancel()
        if not waiter.future.done():
            waiter.future.cancel()
        group = self._waiters.get(key, [])
        if waiter in group:
            group.remove(waiter)
        if not group:
            self._waiters.pop(key, None)
            self._last_status.pop(key, None)
        if not self._waiters and not self._backend_closed:
            self._schedule_linger()

    # -- the stream ---------------------------------------------------------------------------
    def _open_stream(self) -> None:
        if self._backend_closed:
            self.backend = self.backend.clone()
            self._backend_closed = False
        self.streams_opened += 1
        self._stream = asyncio.create_task(self._run_stream(), name="comfy-event-hub")

    async def _run_stream(self) -> None:
        error: BaseException = WebSocketConnectionError("the Comfy event stream ended")
        stream = self.backend.events(list(HUB_PATTERNS), on_connect=self._on_connect)
        try:
            async for event in stream:
                self._dispatch(event)
        except asyncio.CancelledError:
            error = WebSocketConnectionError("the Comfy event stream was closed")
            raise
        except Exception as exc:  # WebSocketAuthError, WebSocketConnectionError, or a bug below
            error = exc
            logger.warning("Comfy event stream stopped: %s", exc)
        finally:
            self._live = False
            self._stream = None
            with contextlib.suppress(BaseException):
                await stream.aclose()  # type: ignore[attr-defined]
            for group in list(self._waiters.values()):
                for waiter in group:
                    waiter.fail(error)

    async def _on_connect(self) -> None:
        """After every connect and reconnect: one REST read per pending resource."""
        self.connections_opened += 1
        self._live = True
        await self._reconcile(list(self._waiters))

    def _dispatch(self, event: ComfyEvent) -> None:
        self.events_received += 1
        if event.id is not None:
            if event.id in self._seen:
                return
            self._seen[event.id] = None
            if len(self._seen) > _SEEN_IDS:
                self._seen.popitem(last=False)
        rid = event.resource_id
        if rid is None:
            return
        key = (event.kind, rid)
        group = self._waiters.get(key)
        if not group:
            return
        status = event.payload.get("status") or (
            "running" if event.event == "job.progress" else event.event.split(".", 1)[-1]
        )
        self._last_status[key] = str(status)
        if event.event == "job.progress" or event.event in TERMINAL_EVENTS:
            for waiter in list(group):
                waiter.deliver(event)

    async def _reconcile(self, keys: list[tuple[str, str]]) -> None:
        if keys:
            await asyncio.gather(*(self._read(key) for key in keys))

    async def _read(self, key: tuple[str, str]) -> None:
        kind, rid = key
        if key not in self._waiters:
            return
        async with self._rest:
            if key not in self._waiters:
                return
            read = {
                "job": self.backend.get_job,
                "input": self.backend.get_input,
                "model": self.backend.get_model,
            }[kind]
            self.rest_reads += 1
            try:
                resource = await read(rid)
            except NotFound as exc:
                for waiter in list(self._waiters.get(key, [])):
                    waiter.fail(exc)
                return
            except Exception as exc:
                logger.warning("could not read Comfy %s %s to reconcile: %s", kind, rid, exc)
                return
        group = self._waiters.get(key)
        if not group:
            return
        self._last_status[key] = resource.status
        name = STATUS_EVENT.get((kind, resource.status))
        if name is None:
            return
        event = ComfyEvent(event=name, payload=resource.model_dump(mode="json", exclude_none=True))
        for waiter in list(group):
            waiter.deliver(event)

    # -- closing ------------------------------------------------------------------------------
    def _schedule_linger(self) -> None:
        self._cancel_linger()
        loop = asyncio.get_running_loop()
        self._linger = loop.call_later(self.linger, self._linger_expired)

    def _cancel_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def _linger_expired(self) -> None:
        self._linger = None
        if not self._waiters and self._closer is None:
            self._closer = asyncio.create_task(self._close_stream())

    async def _close_stream(self) -> None:
        try:
            stream = self._stream
            if stream is not None:
                stream.cancel()
                with contextlib.suppress(BaseException):
                    await stream
            for task in list(self._side_tasks):
                task.cancel()
            if not self._backend_closed:
                self._backend_closed = True
                with contextlib.suppress(Exception):
                    await self.backend.aclose()
            logger.debug("Comfy event hub closed its stream")
        finally:
            self._closer = None

    async def aclose(self) -> None:
        """Close the stream now (pending waits fail with :class:`WebSocketConnectionError`)."""
        self._cancel_linger()
        if self._closer is None:
            self._closer = asyncio.create_task(self._close_stream())
        await asyncio.shield(self._closer)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
