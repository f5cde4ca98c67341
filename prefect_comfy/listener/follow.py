"""The listener on a server without an account-wide event stream (Comfy API v2): follow its jobs.

v2 has one Server-Sent-Events stream per job and nothing account-wide, so the listener cannot just
subscribe. `JobFollower` stands in for the backend's ``events()``: it finds jobs, follows each
unfinished one, and yields the same ``job.progress`` / ``job.completed`` / ``job.failed`` /
``job.cancelled`` events as the other backends' streams. Following is the waiting layer's
`JobStreams` (a stream per job within the server's cap, learned
from 429 ``too_many_streams``; one shared backed-off REST read for the rest), not a copy of it.

How jobs are found depends on the server (the start-up line says which):

- **Where the server lists jobs** (comfy-api-proxy, the emulator): ``GET /api/v2/jobs`` newest first,
  every `DISCOVER_INITIAL` s, backed off x1.5 to `DISCOVER_MAX` s while nothing is new,
  paged until a page holds nothing new (at most `LIST_LIMIT` jobs a round; after the
  baseline a round's first page is the newest `QUIET_PAGE` jobs). The first round
  is the baseline: its unfinished jobs are followed, its finished ones are left to the cursor's
  catch-up. A job first seen finished in a later round (it started and ended between two rounds)
  has its terminal event sent at once. Every job of the key is followed, whoever submitted it.
- **Where listing answers 501** (Comfy Cloud): only the jobs submitted through prefect-comfy. Their
  ``comfy.job.submitted`` events are read back from Prefect (`submitted_in_prefect`; the
  listener is in the Prefect layer), from `SUBMITTED_LOOKBACK` before the start on (or from
  the restored cursor's watermark, less 5 minutes, when that is earlier: `JobFollower.look_back_to`),
  and each job named is followed, also one that ended while no listener ran. Jobs submitted by
  other clients are never seen.

Either way the jobs the cursor had in flight are followed too. Where listing works, a round that
fails counts as the link dropping (the listener's heartbeats say ``comfy.connected: false``), and
the first round that succeeds after it as a reconnect (what was in flight is reconciled). Uploads are not followed: on v2 an
upload is ready when the upload call returns, and the uploading task emits its own event.

What the streams report waits in a queue until the listener takes it (it takes no faster than
Prefect accepts). The queue holds at most `MAX_QUEUED_PROGRESS` progress events: past that a
progress event is dropped (counted in `JobFollower.progress_dropped`; the listener would have
coalesced it anyway), while an outcome is never dropped (there is at most one per followed job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect_comfy.backends.base import ComfyBackend, matches_any, walk_pages
from prefect_comfy.bounded import Bounded
from prefect_comfy.exceptions import ComfyAPIError, NotFound, WebSocketAuthError
from prefect_comfy.listener.catchup import terminal_event
from prefect_comfy.models import TERMINAL_EVENTS, ComfyEvent, Job
from prefect_comfy.settings import ComfySettings
from prefect_comfy.transport.backoff import Backoff
from prefect_comfy.waiting.slots import JobStreams

__all__ = [
    "DISCOVER_INITIAL",
    "DISCOVER_MAX",
    "LIST_LIMIT",
    "MAX_QUEUED_PROGRESS",
    "SUBMITTED_LOOKBACK",
    "JobFollower",
    "submitted_in_prefect",
]

logger = logging.getLogger(__name__)

DISCOVER_INITIAL = 1.0
"""Seconds between two rounds of finding jobs after a round that found something."""
DISCOVER_MAX = 5.0
"""The longest pause between two rounds, seconds."""
LIST_LIMIT = 1_000
"""Most jobs listed in one round."""
SUBMITTED_LOOKBACK = timedelta(minutes=10)
"""How far before its start the listener reads ``comfy.job.submitted`` events (no listing)."""
SUBMITTED_SLACK = timedelta(seconds=60)
"""Read again from this long before the newest submitted event seen: Prefect stores events in
batches, so an event can appear after a later one."""
MAX_SUBMITTED_PAGES = 20
QUIET_PAGE = 10
"""Jobs asked for in the first page of a round after the baseline (more pages while all are new)."""
MAX_QUEUED_PROGRESS = 1_000
"""Most progress events waiting for the listener; more are dropped, outcomes never are."""
JOB_EVENTS = ("job.progress", "job.completed", "job.failed", "job.cancelled")

SubmittedJobs = Callable[[datetime], Awaitable[list[tuple[str, datetime]]]]
"""``since -> [(job id, occurred)]``: the v2 jobs submitted through prefect-comfy since then."""


async def submitted_in_prefect(since: datetime) -> list[tuple[str, datetime]]:
    """The ``comfy.job.submitted`` events of v2 jobs in Prefect since ``since``, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventOrder,
        EventResourceFilter,
    )
    from prefect.events.schemas.events import ResourceSpecification

    query = EventFilter(
        occurred=EventOccurredFilter(since=since),
        event=EventNameFilter(name=["comfy.job.submitted"]),
        resource=EventResourceFilter(labels=ResourceSpecification({"comfy.backend": "v2"})),
        order=EventOrder.ASC,
    )
    found: list[tuple[str, datetime]] = []
    async with get_client() as client:
        page = await client.read_events(filter=query, limit=50)
        for _ in range(MAX_SUBMITTED_PAGES):
            for event in page.events:
                job_id = event.resource.id.removeprefix("comfy.job.")
                found.append((job_id, event.occurred))
            if not page.next_page:
                break
            page = await client.read_events_page(str(page.next_page))
    return found


class JobFollower:
    """Finds and follows the jobs of a backend without a global stream; see the module docstring.

    Args:
        backend: a backend with ``per_job_streams`` (and ``list_jobs_page`` where it lists).
        in_flight: the listener's ``(kind, id) -> status`` of what it saw in flight; its jobs are
            followed after every (re)start.
        submitted: how jobs submitted through prefect-comfy are found where listing answers 501
            (default: `submitted_in_prefect`).
        max_streams: the most job streams at once (default ``COMFY_MAX_STREAMS``, 8).
        max_tracked: job ids remembered as found.
    """

    def __init__(
        self,
        backend: ComfyBackend,
        *,
        in_flight: Bounded | None = None,
        submitted: SubmittedJobs | None = None,
        max_streams: int | None = None,
        max_tracked: int = 10_000,
    ) -> None:
        self.backend = backend
        self.mode: str | None = None
        """``"listing"`` or ``"submitted"`` once `events` has started."""
        self._in_flight = in_flight if in_flight is not None else Bounded(max_tracked)
        self._submitted = submitted or submitted_in_prefect
        self._max_streams = max_streams
        self._seen: Bounded = Bounded(max(max_tracked, 2 * LIST_LIMIT))
        self._observed: Bounded = Bounded(max(max_tracked, 2 * LIST_LIMIT))
        """Jobs this process saw unfinished, or listed as new: their outcomes are live."""
        self._following: dict[str, None] = {}
        self._streams: JobStreams | None = None
        self._queue: asyncio.Queue[ComfyEvent] | None = None
        self._since = datetime.now(UTC) - SUBMITTED_LOOKBACK
        self.rounds = 0
        """Rounds of finding jobs so far."""
        self.progress_dropped = 0
        """Progress events dropped because `MAX_QUEUED_PROGRESS` were waiting."""
        self._queued_progress = 0
        self._down = False
        self._live = False
        self._on_connect: Callable[[], Awaitable[None]] | None = None
        self._on_disconnect: Callable[[], Awaitable[None]] | None = None

    @property
    def following(self) -> int:
        """Jobs followed now."""
        return len(self._following)

    @property
    def stats(self) -> dict[str, int]:
        """The job streams' and the shared poll's counters."""
        return self._streams.stats if self._streams is not None else {}

    def describe(self) -> str:
        """What this listener can and cannot see on this server (its start-up line)."""
        where = f"Comfy API v2 at {self.backend.address}"
        uploads = "inputs and models uploaded by other processes are not seen"
        if self.mode == "listing":
            return (
                f"{where}: follows the jobs found by listing (every job of this key, whoever "
                f"submitted it), each on its own event stream within the server's cap or read in "
                f"a shared poll; {uploads}"
            )
        return (
            f"{where}: job listing not available (501): follows only the jobs submitted through "
            f"prefect-comfy (their comfy.job.submitted events in Prefect) and those in the "
            f"cursor; jobs submitted by other clients and {uploads}"
        )

    def look_back_to(self, when: datetime) -> None:
        """Read the submitted events from ``when`` on, where that is earlier than the default
        lookback (the listener passes its restored cursor's watermark, less a slack)."""
        self._since = min(self._since, when)

    def first_seen_ended(self, event: ComfyEvent) -> bool:
        """Whether ``event`` ends a job that this process never saw unfinished nor listed as new.

        Such an outcome may have been sent already (by another listener, or by this one before a
        restart: a job found through its ``comfy.job.submitted`` event, or in the cursor), so the
        listener asks Prefect before sending it (`prefect_comfy.listener.stored`).
        """
        rid = event.resource_id
        return event.event in TERMINAL_EVENTS and rid is not None and rid not in self._observed

    def follow(self, job_ids: Iterable[str]) -> None:
        """Follow these jobs until they end (a job already followed is left as it is)."""
        fresh = []
        for job_id in job_ids:
            self._seen.remember(job_id)
            if job_id not in self._following:
                self._following[job_id] = None
                fresh.append(("job", job_id))
        if fresh and self._streams is not None:
            self._streams.track(fresh)

    async def events(
        self,
        patterns: Iterable[str] = ("*",),
        *,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        on_disconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[ComfyEvent]:
        """The events of the jobs followed, as a backend's ``events()`` would yield them.

        Raises:
            WebSocketAuthError: the server refused the key.
        """
        patterns = tuple(patterns)
        self._queue, self._queued_progress = asyncio.Queue(), 0
        self._streams = JobStreams(
            self.backend,
            pending=lambda key: key[1] in self._following,
            dispatch=self._put,
            found=self._found,
            missing=self._missing,
            max_streams=self._max_streams or ComfySettings().max_streams,
        )
        finder: asyncio.Task[None] | None = None
        self._on_connect, self._on_disconnect = on_connect, on_disconnect
        try:
            if not any(matches_any(patterns, name) for name in JOB_EVENTS):
                logger.info("no job event pattern: Comfy API v2 jobs are not followed")
                self._live = True
                if on_connect is not None:
                    await on_connect()
                await asyncio.Event().wait()
            await self._first_round()
            logger.info("%s", self.describe())
            await self._connected()
            finder = asyncio.ensure_future(self._find_loop())
            while True:
                event = await self._queue.get()
                if event.event == "job.progress":
                    self._queued_progress -= 1
                if matches_any(patterns, event.event):
                    yield event
        finally:
            if finder is not None:
                finder.cancel()
                await asyncio.gather(finder, return_exceptions=True)
            streams, self._streams = self._streams, None
            if streams is not None:
                await streams.aclose()
            if on_disconnect is not None and self._live:
                with contextlib.suppress(Exception):
                    await on_disconnect()
            self._live = False

    async def _connected(self) -> None:
        """Tell the listener (it reconciles and catches up), then follow what it has in flight."""
        self._live = True
        if self._on_connect is not None:
            await self._on_connect()
        self.follow(rid for kind, rid in list(self._in_flight) if kind == "job")
        if self._streams is not None:
            self._streams.track(("job", job_id) for job_id in self._following)

    # -- what JobStreams reports ----------------------------------------------------------------
    def _put(self, event: ComfyEvent) -> None:
        if event.event in TERMINAL_EVENTS and event.resource_id:
            self._following.pop(event.resource_id, None)
        elif event.resource_id:
            self._observed.remember(event.resource_id)
        assert self._queue is not None
        if event.event == "job.progress":
            if self._queued_progress >= MAX_QUEUED_PROGRESS:
                self.progress_dropped += 1
                if self.progress_dropped == 1 or self.progress_dropped % 1000 == 0:
                    logger.warning(
                        "Prefect is slower than Comfy's progress: %d progress events dropped so "
                        "far (outcomes are kept)",
                        self.progress_dropped,
                    )
                return
            self._queued_progress += 1
        self._queue.put_nowait(event)

    def _found(self, key: tuple[str, str], resource: Any) -> None:
        if not resource.is_terminal:
            self._observed.remember(key[1])
        if resource.is_terminal and key[1] in self._following:
            event = terminal_event("job", resource, getattr(resource, "completed_at", None))
            if event is not None:
                self._put(event)

    def _missing(self, key: tuple[str, str], exc: NotFound) -> None:
        self._following.pop(key[1], None)
        logger.info("Comfy job %s is not on %s; no longer followed", key[1], self.backend.address)

    # -- finding jobs ---------------------------------------------------------------------------
    async def _first_round(self) -> None:
        """Decide how jobs are found (listing, or 501) and find the first ones."""
        if self.mode == "submitted":
            return
        try:
            await self._list_round(baseline=self.mode is None)
        except ComfyAPIError as exc:
            if exc.status_code in (401, 403):
                raise WebSocketAuthError(str(exc)) from exc
            if exc.status_code != 501 or not self.backend.capabilities.list_jobs:
                raise
            self.mode = "submitted"
            return
        self.mode = "listing"

    async def _find_loop(self) -> None:
        # The schedule between rounds: DISCOVER_INITIAL after a round that found something, x1.5
        # up to DISCOVER_MAX while nothing is new (attempt=1: the baseline counts as a round).
        pauses = Backoff(DISCOVER_INITIAL, DISCOVER_MAX, factor=1.5, jitter=False, attempt=1)
        while True:
            try:
                new = await self._find_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("could not find new Comfy jobs on %s: %s", self.backend.address, exc)
                new = 0
                if self.mode == "listing" and not self._down:
                    self._down, self._live = True, False  # unreachable: heartbeats say so
                    if self._on_disconnect is not None:
                        await self._on_disconnect()
            else:
                if self._down:
                    self._down = False
                    await self._connected()  # back: reconcile what was in flight
            if new:
                pauses.reset()
            await pauses.pause()  # the schedule between rounds, not a synchronisation

    async def _find_round(self) -> int:
        self.rounds += 1
        if self.mode == "listing":
            return await self._list_round(baseline=False)
        return await self._submitted_round()

    async def _list_round(self, *, baseline: bool) -> int:
        """List newest first until a page holds nothing new; follow what is new and unfinished."""
        lister = self.backend.list_jobs_page  # type: ignore[attr-defined]
        new = looked = 0

        async def read(cursor: str | None, _: int) -> tuple[list[Job], str | None]:
            # A quiet round asks for a short first page: only the newest jobs can be new.
            return await lister(cursor, limit=100 if baseline or new else QUIET_PAGE)

        async for jobs in walk_pages(read, what=f"jobs on {self.backend.address}"):
            fresh = [job for job in jobs if not self._seen.seen(job.id)]
            for job in fresh:
                self._observed.remember(job.id)  # new on the server: whatever it says is live
            looked += len(jobs)
            new += len(fresh)
            self.follow(job.id for job in fresh if not job.is_terminal)
            if not baseline:
                for job in fresh:
                    self._ended_between_rounds(job)
            if looked >= LIST_LIMIT or (not fresh and not baseline):
                break
        return new

    def _ended_between_rounds(self, job: Job) -> None:
        event = terminal_event("job", job, job.completed_at) if job.is_terminal else None
        if event is not None:
            self._put(event)

    async def _submitted_round(self) -> int:
        found = await self._submitted(self._since - SUBMITTED_SLACK)
        fresh = [job_id for job_id, _ in found if job_id not in self._seen]
        if found:
            self._since = max(self._since, max(when for _, when in found))
        self.follow(fresh)
        return len(fresh)
