"""The waiting layer's hub: ONE event stream per server and credentials per process, fanned out.

`EventHub.shared` returns the process-wide hub of a backend's
`connection_key`. It lives on the waiting layer's
own loop (`waiting_loop`, a daemon thread), so waits from any
event loop or thread (Prefect's sync tasks each run a loop of their own) share its one stream. The
hub owns a clone of the backend, opens ``events(["job.*", "input.*", "model.*"])`` when the first
wait starts, and closes it `DEFAULT_LINGER` seconds after the last wait ends.

It alone fans events out, drops duplicates (`recall`), remembers
recent outcomes for waits that register late, and reconciles pending resources after every
(re)connect (`reconcile`). Its stream reconnects for ever, in the backend's one loop, and the
pending waits are read over REST while the link is down: only a refused key or a wait's own
timeout fails a wait. docs/architecture.md tells the whole story.

Example:
    >>> async def main(backend, job_id):  # doctest: +SKIP
    ...     event = await EventHub.shared(backend).wait("job", job_id, timeout=600)
    ...     print(event.event)  # job.completed, job.failed, job.cancelled or job.lost
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import ClassVar, Literal

from prefect_comfy.backends.base import ComfyBackend, ProgressCallback
from prefect_comfy.exceptions import (
    ComfyConfigError,
    JobTimedOut,
    NotFound,
    WaitTimedOut,
    WebSocketAuthError,
    WebSocketConnectionError,
)
from prefect_comfy.models import (
    PREVIEW_EVENT,
    STATUS_EVENT,
    TERMINAL_EVENTS,
    ComfyEvent,
    wants_previews,
)
from prefect_comfy.settings import ComfySettings
from prefect_comfy.transport.deadlines import within
from prefect_comfy.waiting.loop import Mailbox, waiting_loop
from prefect_comfy.waiting.recall import REMEMBERED_OUTCOMES, SEEN_EVENTS, Recall, lost_event
from prefect_comfy.waiting.reconcile import Reconciler, Resource
from prefect_comfy.waiting.slots import JobStreams, per_job_mode
from prefect_comfy.waiting.stream import DEFAULT_LINGER, HUB_PATTERNS, SharedStream
from prefect_comfy.waiting.waiter import Waiter

__all__ = [
    "DEFAULT_LINGER",
    "HUB_PATTERNS",
    "REMEMBERED_OUTCOMES",
    "REST_CONCURRENCY",
    "SEEN_EVENTS",
    "EventHub",
    "Mark",
]

logger = logging.getLogger(__name__)

Kind = Literal["job", "input", "model"]
Key = tuple[str, str]
Mark = tuple[int, int]
"""What `EventHub.mark` returns: the connection epoch and the outcomes forgotten so far."""

REST_CONCURRENCY = 16
"""Most single REST reads in flight at once while reconciling."""
LATE_BATCH_DELAY = 0.02
"""Seconds the hub gathers waits that register while the stream is up before reading them together."""


class EventHub(SharedStream):
    """The shared event stream of one set of credentials.

    Use `shared`; the constructor is for tests (a hub made directly runs on the loop of its
    first wait).

    Args:
        backend: the backend the hub owns (a clone; the hub closes it when idle).
        linger: seconds to keep the stream open after the last wait ends.
        rest_concurrency: most single REST reads in flight at once.
        loop: the loop the hub runs on (default: the first wait's).
        max_streams: on a server without a global stream, the most per-job streams to hold at
            once (default: ``COMFY_MAX_STREAMS``, 8); see `slots`.
    """

    _shared: ClassVar[dict[str, EventHub]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        backend: ComfyBackend,
        *,
        linger: float = DEFAULT_LINGER,
        rest_concurrency: int = REST_CONCURRENCY,
        loop: asyncio.AbstractEventLoop | None = None,
        max_streams: int | None = None,
    ) -> None:
        super().__init__(backend, linger, Mailbox(loop))
        self._per_job = per_job_mode(backend)
        self._max_streams = max_streams
        self._pid = os.getpid()
        self._rest_concurrency = rest_concurrency
        self._waiters: dict[Key, list[Waiter]] = {}
        self._last_status: dict[Key, str] = {}
        self._recall = Recall()
        self._late: list[Key] | None = None
        self._reconciler = self._make_reconciler()
        self._jobs = self._make_job_streams()
        self.events_received = 0

    @classmethod
    def shared(cls, backend: ComfyBackend) -> EventHub:
        """The process-wide hub of the backend's credentials (made on first use, on the waiting loop)."""
        key = backend.connection_key
        with cls._shared_lock:
            hub = cls._shared.get(key)
            if hub is None or hub._pid != os.getpid():
                hub = cls._shared[key] = cls(backend.clone(), loop=waiting_loop())
            return hub

    def _make_reconciler(self) -> Reconciler:
        return Reconciler(
            self.backend,
            pending=self._waiters.__contains__,
            epoch=lambda: self._epoch,
            found=self._found,
            missing=self._missing,
            concurrency=self._rest_concurrency,
        )

    def _make_job_streams(self) -> JobStreams | None:
        if not self._per_job:
            return None
        if self._max_streams is None:
            self._max_streams = ComfySettings().max_streams
        return JobStreams(
            self.backend,
            pending=self._waiters.__contains__,
            dispatch=self._dispatch,
            found=self._found,
            missing=self._missing,
            broken=self._broken,
            max_streams=self._max_streams,
            concurrency=self._rest_concurrency,
        )

    @property
    def job_streams(self) -> JobStreams | None:
        """The per-job streams and shared poll, on a server without a global stream."""
        return self._jobs

    # -- counters -------------------------------------------------------------------------------
    @property
    def rest_reads(self) -> int:
        """Single REST reads made to reconcile."""
        return self._reconciler.reads

    @property
    def waited_for(self) -> int:
        """Resources with at least one pending wait (cheap: `stats` counts every wait)."""
        return len(self._waiters)

    @property
    def reconciling(self) -> bool:
        """Whether a reconciliation is queued, gathering late waits, or running."""
        return self._reconciler.busy or self._late is not None

    @property
    def stats(self) -> dict[str, int]:
        """Counters for tests and benchmarks."""
        return {
            "streams_opened": self.streams_opened,
            "connections_opened": self.connections_opened,
            "rest_reads": self._reconciler.reads,
            "rest_lists": self._reconciler.lists,
            "rest_list_requests": self._reconciler.list_requests,
            "reconcile_ms": round(self._reconciler.seconds * 1000),
            "rest_polls_while_down": self._reconciler.polls,
            "reconciling": int(self.reconciling),
            "events_received": self.events_received,
            "pending": sum(len(w) for w in list(self._waiters.values())),
            "stream_open": int(self._stream is not None),
            **(self._jobs.stats if self._jobs is not None else {}),
        }

    def mark(self) -> Mark | None:
        """A token to pass as ``covered_since`` for resources created from now on (``None`` while
        the stream is not up: then waits read once as usual; always ``None`` on a server without a
        global stream, where no stream sees a job from before it was created)."""
        if self._per_job:
            return None
        return (self._epoch, self._recall.forgotten) if self._live else None

    async def ready(self, timeout: float | None = None) -> Mark:
        """Open the stream if needed and return `mark` once it is up (for submit-then-wait)."""
        await self._home.run(self._open_for_marks)
        if self._per_job:
            return (-1, -1)  # never equal to mark(): every wait is followed as usual
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            mark = self.mark()
            if mark is not None:
                return mark
            if self._stream is None and self.stopped_with is not None:  # stopped before it was up
                raise WebSocketConnectionError(
                    f"the Comfy event stream stopped before it was up: {self.stopped_with}"
                )
            if deadline is not None and time.monotonic() > deadline:
                raise WebSocketConnectionError(
                    f"the Comfy event stream was not up within {timeout:g}s"
                )
            await asyncio.sleep(0.01)

    # -- waiting --------------------------------------------------------------------------------
    async def wait(
        self,
        kind: Kind,
        resource_id: str,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        covered_since: Mark | None = None,
    ) -> ComfyEvent:
        """Wait for a resource's terminal event and return it (failed and cancelled included).

        Args:
            kind: ``job``, ``input`` or ``model``.
            resource_id: the resource's id.
            timeout: seconds; ``None`` waits for ever.
            on_progress: called (sync or async, in order, once each, on the caller's loop) with
                every ``job.progress`` (and ``job.preview`` if it was made with
                `with_previews`) of the job before the wait returns;
                its exceptions are logged.
            covered_since: a `mark` taken before the resource was created: no REST read
                while the stream has not broken since.

        Returns:
            The terminal `ComfyEvent`, such as ``job.completed`` or ``job.failed``.

        Raises:
            JobTimedOut: a job wait timed out (it names the last known status).
            WaitTimedOut: an input or model wait timed out.
            WebSocketAuthError, WebSocketConnectionError: the stream failed for good.
            NotFound: the resource does not exist.
        """
        waiter = self.enter(kind, resource_id, on_progress, covered_since)
        try:
            if timeout is None:  # no timer and no extra coroutine frame for the common case
                return await waiter.future
            return await within(waiter.future, timeout)
        except TimeoutError:
            raise self.timed_out(waiter, timeout or 0.0) from None
        finally:
            self.exit(waiter)

    # The three steps of `wait`, for callers that inline it to save a coroutine frame per
    # pending wait (`wait_for_job`).
    def enter(
        self,
        kind: str,
        resource_id: str,
        on_progress: ProgressCallback | None = None,
        covered_since: Mark | None = None,
    ) -> Waiter:
        """Register a wait from the running loop; await ``waiter.future``, then call `exit`."""
        if kind not in ("job", "input", "model"):
            raise ComfyConfigError(f"kind must be 'job', 'input' or 'model', got {kind!r}")
        if not resource_id:
            raise ComfyConfigError(f"a {kind} id is required")
        caller = asyncio.get_running_loop()
        self._home.bind()
        waiter = Waiter(kind, str(resource_id), caller.create_future(), caller, on_progress)
        self._home.call(self._register, waiter, covered_since)
        return waiter

    def timed_out(self, waiter: Waiter, timeout: float) -> WaitTimedOut:
        """The error of a wait whose timeout passed (it names the last known status)."""
        status = self._last_status.get(waiter.key)
        if waiter.kind == "job":
            return JobTimedOut(waiter.resource_id, timeout=timeout, status=status)
        return WaitTimedOut(waiter.kind, waiter.resource_id, timeout=timeout, status=status)

    def exit(self, waiter: Waiter) -> None:
        """The wait returned, failed or was cancelled (on the wait's loop)."""
        waiter.close()
        self._home.call(self._leave, waiter)

    # -- on the hub's loop ----------------------------------------------------------------------
    def _register(self, waiter: Waiter, covered: Mark | None) -> None:
        if waiter.ended:
            return  # it left before it got here
        key = waiter.key
        outcome = self._recall.outcome(key)
        if outcome is not None:
            waiter.deliver(outcome)
            return
        group = self._waiters.get(key)
        if group is None:
            group = self._waiters[key] = []
        group.append(waiter)
        self._keep_open()
        covered_now = covered is not None and covered == self.mark()
        if self._live and self._closer is None and len(group) == 1 and not covered_now:
            self._reconcile_soon(key)
        elif not self._live:
            self._poll_while_down()

    def _poll_while_down(self) -> None:
        """The stream is down: read pending waits' truth over REST until it is live again."""
        if self._jobs is None:  # per-job streams reconnect (and read) each on its own
            self._reconciler.poll_while_down(self._down, lambda: list(self._waiters))

    def _down(self) -> bool:
        """Whether waits are pending while no stream is live (whatever the reason)."""
        return not self._live and bool(self._waiters)

    def _reconcile_soon(self, key: Key) -> None:
        """Read a late registrant once; registrations of one loop turn are read together (a burst
        of 10,000 waits is one listing, not 10,000 reads and tasks)."""
        if self._late is None:
            self._late = []
            asyncio.get_running_loop().call_later(LATE_BATCH_DELAY, self._reconcile_late)
        self._late.append(key)

    def _reconcile_late(self) -> None:
        keys, self._late = self._late or [], None
        if self._jobs is not None:
            self._jobs.track(keys)
        else:
            self._reconciler.submit(keys)

    def _open_for_marks(self) -> None:
        self._keep_open()
        if not self._waiters:
            self._schedule_linger()

    def _leave(self, waiter: Waiter) -> None:
        key = waiter.key
        group = self._waiters.get(key)
        if group is not None and waiter in group:
            group.remove(waiter)
            if not group:
                del self._waiters[key]
                self._last_status.pop(key, None)
                if self._jobs is not None:
                    self._jobs.forget(key)
        if not self._waiters and not self._backend_closed:
            self._schedule_linger()

    def _fail_all(self, error: BaseException) -> None:
        for group in list(self._waiters.values()):
            for waiter in group:
                waiter.fail(error)
        self._waiters.clear()
        self._last_status.clear()

    def _dispatch(self, event: ComfyEvent) -> None:
        self.events_received += 1
        if event.event == PREVIEW_EVENT:  # never remembered: an image, and the next one replaces it
            for waiter in list(self._waiters.get(("job", event.resource_id or ""), ())):
                if wants_previews(waiter.on_progress):  # opt-in: see models.with_previews
                    waiter.deliver(event)
            return
        if self._recall.repeated(event):
            return
        rid = event.resource_id
        if rid is None:
            return
        key = (event.kind, rid)
        terminal = event.event in TERMINAL_EVENTS
        if terminal:
            self._recall.remember(key, event)
        group = self._waiters.get(key)
        if not group:
            return
        status = event.payload.get("status") or (
            "running" if event.event == "job.progress" else event.event.split(".", 1)[-1]
        )
        self._last_status[key] = str(status)
        if event.event == "job.progress" or terminal:
            for waiter in list(group):
                waiter.deliver(event)

    def _found(self, key: Key, resource: Resource) -> None:
        group = self._waiters.get(key)
        if not group:
            return
        self._last_status[key] = resource.status
        name = STATUS_EVENT.get((key[0], resource.status))
        if name is None:
            return
        event = ComfyEvent(event=name, payload=resource.model_dump(mode="json", exclude_none=True))
        self._recall.remember(key, event)
        for waiter in list(group):
            waiter.deliver(event)

    def _missing(self, key: Key, exc: NotFound) -> None:
        """The server has no such resource: a wrong id, or a job it lost since we saw it."""
        group = list(self._waiters.get(key, []))
        if key[0] == "job" and key in self._last_status:
            event = lost_event(key[1], "the server answered that it has no such job any more")
            self._recall.remember(key, event)
            for waiter in group:
                waiter.deliver(event)
            return
        for waiter in group:
            waiter.fail(exc)

    def _broken(self, key: Key, exc: BaseException) -> None:
        """The server answered something that is not the resource: its waits fail at once."""
        for waiter in list(self._waiters.get(key, [])):
            waiter.fail(exc)

    # -- hooks of the stream's life ----------------------------------------------------------
    def _source(self) -> AsyncIterator[ComfyEvent]:
        if self._jobs is not None:
            return self._jobs.serve(self._on_connect)
        return super()._source()

    def _connected(self) -> None:
        if self._jobs is not None:
            self._jobs.track(list(self._waiters))
        else:
            self._reconciler.submit(list(self._waiters))

    async def _on_disconnect(self) -> None:
        await super()._on_disconnect()
        self._poll_while_down()

    def _ended(self, error: BaseException) -> None:
        if (
            isinstance(error, WebSocketAuthError)
            or self._closer is not None
            or not self._waiters
            or not isinstance(error, Exception)
        ):
            self._fail_all(error)
            return
        # The stream reconnects for ever, so this is a kind that cannot stream (or a bug): REST
        # answers the waits from now on, and the next wait opens the stream again.
        logger.warning(
            "Comfy event stream ended (%s); %d waits are read over REST", error, len(self._waiters)
        )
        self._reconciler.poll_while_down(self._down, lambda: list(self._waiters))

    def _idle(self) -> bool:
        return not self._waiters

    def _new_backend(self) -> None:
        self._reconciler = self._make_reconciler()
        self._jobs = self._make_job_streams()

    async def _closing(self) -> None:
        await self._reconciler.aclose()
        self._recall.forget_outcomes()  # an idle hub keeps nothing; the next wait reads

    async def aclose(self) -> None:
        """Close the stream now (pending waits fail with `WebSocketConnectionError`)."""
        if self._home.loop is not None and not self._home.here():
            future = asyncio.run_coroutine_threadsafe(self.aclose(), self._home.loop)
            await asyncio.wrap_future(future)
            return
        self._fail_all(WebSocketConnectionError("the Comfy event stream was closed"))
        await self._close_now()
