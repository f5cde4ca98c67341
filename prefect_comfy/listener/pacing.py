"""What the listener sends next, and when: outcomes first, progress coalesced, all of it paced.

A Prefect server stores only a few hundred events a second and drops what overflows its queue,
silently. `PacedQueue` holds what the listener has to send, with no I/O of its own
(`PrefectSender` sends what it hands out):

- **Outcomes first, never dropped.** Every event that is not ``comfy.job.progress`` (outcomes,
  uploads) waits in one first-in-first-out queue that is always served before progress. Once
  ``queue_size`` of them wait, `PacedQueue.put` waits too (back pressure on reading). A
  heartbeat (uncounted) goes ahead of them all and never waits.
- **Progress coalesced, by the sensor's mechanism** (`prefect_comfy.orchestration.events.budget.Coalescer`).
  One pending progress event per job, the newest replacing the older (in its place, keeping its
  age); at most one per job every ``progress_interval`` seconds, within the progress budget
  (`prefect_comfy.orchestration.events.budget.progress_budget`). A job's outcome discards its
  pending progress (the outcome says 100 %), and later progress of an ended job is dropped.
- **Pacing.** `PacedQueue.next` hands out at most ``events_per_second`` events a second, all
  kinds together (``0``: no limit).
- **Saying when it is behind.** `PacedQueue.backlog`: the queue depth and the age of the
  oldest pending event; behind once that exceeds `BEHIND_AFTER` seconds.

Example:
    >>> from prefect.events import Event
    >>> from prefect_comfy.orchestration.events.budget import ProgressBudget
    >>> from prefect_comfy.listener.stats import ListenerStats
    >>> def job(name, progress=None):
    ...     return Event(event=f"comfy.job.{name}", resource={"prefect.resource.id": "comfy.job.j1"},
    ...                  payload={"progress": progress})
    >>> stats = ListenerStats()
    >>> queue = PacedQueue(stats, events_per_second=0, progress_events=ProgressBudget(100))
    >>> for p in (10, 20, 30):
    ...     queue.put_nowait(job("progress", p))
    >>> queue.put_nowait(job("completed"))
    >>> item, _ = queue.next()
    >>> item.event.event, queue.next(), stats.coalesced
    ('comfy.job.completed', (None, None), 3)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prefect_comfy.bounded import Bounded
from prefect_comfy.exceptions import ComfyConfigError
from prefect_comfy.orchestration.events import names as comfy_events
from prefect_comfy.orchestration.events.budget import Coalescer, ProgressBudget, progress_budget

if TYPE_CHECKING:
    from prefect.events import Event

    from prefect_comfy.listener.stats import ListenerStats

__all__ = [
    "BEHIND_AFTER",
    "DEFAULT_EVENTS_PER_SECOND",
    "DEFAULT_PROGRESS_INTERVAL",
    "DEFAULT_QUEUE_SIZE",
    "Backlog",
    "PacedQueue",
    "Pending",
]

DEFAULT_QUEUE_SIZE = 10_000
"""Outcome events waiting to be sent before reading from Comfy pauses (back pressure)."""
DEFAULT_EVENTS_PER_SECOND = 300.0
"""Events the listener sends a second, all kinds together. One ``prefect server start`` stores
about 350-550 a second on a 2-core machine and drops what overflows its 10,000-message queue."""
DEFAULT_PROGRESS_INTERVAL = 1.0
"""Seconds between two ``comfy.job.progress`` events of one job (the sensor's interval)."""
BEHIND_AFTER = 5.0
"""Seconds the oldest pending event may wait before the listener says it is behind."""

_REMEMBERED = 10_000
"""Jobs whose outcome was queued (their late progress is dropped), and whose last progress time is
kept for the interval."""
_JOB_ENDINGS = frozenset(
    {
        comfy_events.JOB_COMPLETED,
        comfy_events.JOB_FAILED,
        comfy_events.JOB_CANCELLED,
        comfy_events.JOB_TIMED_OUT,
    }
)


@dataclass(frozen=True)
class Backlog:
    """What waits to be sent now."""

    queued: int
    """Events waiting (outcomes and pending progress)."""
    oldest_pending_seconds: float
    """How long the oldest of them has waited (0 when none waits)."""

    @property
    def behind(self) -> bool:
        """Whether the oldest pending event has waited more than `BEHIND_AFTER` seconds."""
        return self.oldest_pending_seconds > BEHIND_AFTER


class Pending:
    """One event waiting to be sent: ``counted`` ones count as forwarded; ``since`` is when it came.

    ``name`` (the Prefect event's name) and ``key`` (its resource id) are known at once; the event
    itself may be built only when it is sent (`lazy`), so that progress coalesced away is never
    built. ``ready``, when set, is awaited (within a bound) by the sender before it builds the
    event: the lookup of the job's tags, made off the stream's loop.
    """

    __slots__ = ("_build", "_event", "counted", "key", "name", "ready", "since")

    def __init__(self, event: Event, counted: bool, since: float) -> None:
        self._event: Event | None = event
        self._build: Callable[[], Event] | None = None
        self.name: str = event.event
        self.key: str = event.resource.id
        self.counted = counted
        self.since = since
        self.ready: asyncio.Future[object] | None = None

    @classmethod
    def lazy(
        cls,
        name: str,
        key: str,
        build: Callable[[], Event],
        counted: bool,
        since: float,
        ready: asyncio.Future[object] | None = None,
    ) -> Pending:
        """An event built by ``build()`` when it is first read."""
        item = cls.__new__(cls)
        item._event, item._build = None, build
        item.name, item.key, item.counted, item.since, item.ready = name, key, counted, since, ready
        return item

    @property
    def event(self) -> Event:
        """The Prefect event (built now if it was put lazily)."""
        if self._event is None:
            assert self._build is not None
            self._event, self._build = self._build(), None
        return self._event


class PacedQueue:
    """The events waiting for Prefect, in the order and at the pace they may go.

    Args:
        stats: the listener's counters; ``coalesced`` and ``queued`` are kept here.
        queue_size: outcome events held before `put` waits.
        events_per_second: the most events handed out a second; ``0`` for no limit.
        progress_interval: the least time between two progress events of one job.
        progress_events: the progress budget (default: the process-wide one, read when needed).
        clock: monotonic seconds (tests).

    Raises:
        ComfyConfigError: ``events_per_second`` is negative or not a number.
    """

    def __init__(
        self,
        stats: ListenerStats,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        events_per_second: float = DEFAULT_EVENTS_PER_SECOND,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
        progress_events: ProgressBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not events_per_second >= 0:
            raise ComfyConfigError(
                f"events_per_second must be a number >= 0 (0: no limit), not {events_per_second}"
            )
        self.stats = stats
        self.queue_size = queue_size
        self.events_per_second = events_per_second
        self.draining = False
        """Set by a stop: pending progress goes at once, whatever its interval and budget."""
        self._clock = clock
        self._pace = (
            # the same sliding window as the progress budget: never over the rate in any second
            ProgressBudget(events_per_second, clock=clock) if events_per_second else None
        )
        self._budget = progress_events
        self._outcomes: deque[Pending] = deque()
        self._progress: Coalescer[Pending] = Coalescer(
            progress_interval, self._progress_budget, remember=_REMEMBERED
        )
        self._ended = Bounded(_REMEMBERED)
        self._space = asyncio.Event()
        self._space.set()
        self.changed = asyncio.Event()
        """Set whenever something is put (the sender waits on it when nothing is due)."""

    def __len__(self) -> int:
        return len(self._outcomes) + len(self._progress)

    @property
    def progress_interval(self) -> float:
        """The least time between two progress events of one job."""
        return self._progress.interval

    def _progress_budget(self) -> ProgressBudget:
        return self._budget or progress_budget()

    # -- putting ------------------------------------------------------------------------------
    async def put(self, event: Event, *, counted: bool = True) -> None:
        """Queue ``event``; progress never waits, outcomes while ``queue_size`` outcomes wait.

        An uncounted event (a heartbeat) goes first and never waits: it says how far behind the
        listener is, so it must not wait behind the backlog it reports.
        """
        if counted and event.event != comfy_events.JOB_PROGRESS:
            while len(self._outcomes) >= self.queue_size:
                self._space.clear()
                await self._space.wait()
        self.put_nowait(event, counted=counted)

    def put_nowait(self, event: Event, *, counted: bool = True) -> None:
        """Queue ``event`` without waiting (the outcome queue may then exceed ``queue_size``)."""
        self.put_pending(Pending(event, counted, self._clock()))

    async def put_lazy(
        self,
        name: str,
        key: str,
        build: Callable[[], Event],
        *,
        counted: bool = True,
        ready: asyncio.Future[object] | None = None,
    ) -> None:
        """Queue the event that ``build()`` makes, built only if and when it is sent (progress
        coalesced into a newer one never is); ``name`` and ``key`` are its name and resource id."""
        if counted and name != comfy_events.JOB_PROGRESS:
            while len(self._outcomes) >= self.queue_size:
                self._space.clear()
                await self._space.wait()
        self.put_pending(Pending.lazy(name, key, build, counted, self._clock(), ready))

    def put_pending(self, pending: Pending) -> None:
        """Queue one `Pending` without waiting."""
        key, counted = pending.key, pending.counted
        if pending.name == comfy_events.JOB_PROGRESS:
            if not self._put_progress(key, pending):
                return  # replaced or dropped: nothing new for the sender to look at
        else:
            if pending.name in _JOB_ENDINGS:
                if self._progress.end(key) is not None:
                    self.stats.coalesced += 1
                self._ended.remember(key)
            if counted:
                self._outcomes.append(pending)
            else:
                self._outcomes.appendleft(pending)
        self.stats.queued = len(self)
        self.changed.set()

    def _put_progress(self, key: str, pending: Pending) -> bool:
        """Whether a new job's progress now waits (not a replacement, not dropped)."""
        if key in self._ended or self._progress_budget().rate <= 0:
            self.stats.coalesced += 1  # the outcome (queued or sent) already says 100 %
            return False
        older = self._progress.offer(key, pending)  # in the older one's place
        if older is not None:
            self.stats.coalesced += 1
            pending.since = older.since  # and with its age
            return False
        while len(self._progress) > self.queue_size:
            self._progress.drop_oldest()
            self.stats.coalesced += 1
        return True

    # -- taking -------------------------------------------------------------------------------
    def next(self) -> tuple[Pending | None, float | None]:
        """The event to send now, or ``None`` and how long to wait (``None``: until a put)."""
        if self._pace is not None:
            wait = self._pace.seconds_until_available()
            if wait > 0 and (self._outcomes or self._progress):
                return None, wait
        item, wait = self._take()
        if item is not None:
            if self._pace is not None:
                self._pace.try_acquire()
            self.stats.queued = len(self)
        return item, wait

    def _take(self) -> tuple[Pending | None, float | None]:
        if self._outcomes:
            item = self._outcomes.popleft()
            if len(self._outcomes) < self.queue_size:
                self._space.set()
            return item, None
        if not self._progress:
            return None, None
        if self.draining:
            return self._progress.drop_oldest(), None
        item, wait = self._progress.take(self._clock())
        return item, (None if item is not None else max(wait or 0.0, 0.001))

    # -- what waits ---------------------------------------------------------------------------
    def backlog(self) -> Backlog:
        """The queue depth and the age of the oldest pending event, now."""
        oldest = [self._outcomes[0].since] if self._outcomes else []
        if self._progress:
            oldest.append(next(iter(self._progress.values())).since)
        age = self._clock() - min(oldest) if oldest else 0.0
        return Backlog(len(self), round(max(0.0, age), 3))

    def pending_resources(self) -> list[tuple[str, str]]:
        """``(kind, id)`` of the jobs and uploads whose counted outcomes wait to be sent."""
        found = []
        for item in self._outcomes:
            parts = item.key.split(".", 2)
            if item.counted and len(parts) == 3 and parts[1] in ("job", "input", "model"):
                found.append((parts[1], parts[2]))
        return found
