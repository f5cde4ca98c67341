"""The process-wide budget of progress events (a sliding window shared by every emitter), and
the one coalescing of progress within it (`Coalescer`).

A Prefect server stores about 1,000 events a second on a machine like ours, so a process may send
only so many ``comfy.job.progress`` events, all jobs together; outcomes never touch this budget.

Example:
    >>> budget = ProgressBudget(2, clock=lambda: 0.0)
    >>> [budget.try_acquire() for _ in range(3)]
    [True, True, False]
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from prefect_comfy.bounded import DEFAULT_SIZE, Bounded
from prefect_comfy.settings import environment_value

__all__ = [
    "DEFAULT_PROGRESS_EVENTS_PER_SECOND",
    "Coalescer",
    "PROGRESS_BUDGET_ENV",
    "ProgressBudget",
    "progress_budget",
    "set_progress_events_per_second",
]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
T = TypeVar("T")

DEFAULT_PROGRESS_EVENTS_PER_SECOND = 50.0
"""Progress events a process may send per second, all jobs together (5 % of a server's capacity)."""
PROGRESS_BUDGET_ENV = "COMFY_PROGRESS_EVENTS_PER_SECOND"
"""The environment variable that sets the process-wide progress budget (``0`` sends no progress;
documented in `prefect_comfy.settings.SEPARATE_VARIABLES`)."""


class ProgressBudget:
    """At most ``rate`` progress events in any one-second window, all jobs together.

    A sliding window, not a token bucket: a bucket that holds a second's worth lets twice the rate
    through in the second after a quiet one (its burst plus its refill), which is how a batch's end
    overran the budget. Here the count over *every* window of `window` seconds stays at most
    `capacity`: ``floor(rate)`` events a second for a rate of 1 or more, one event every
    ``1/rate`` seconds below 1, none at 0.

    Thread-safe, because sensors may run in several threads (one event loop each) of one process.

    Example:
        >>> budget = ProgressBudget(2, clock=lambda: 0.0)
        >>> [budget.try_acquire() for _ in range(3)]
        [True, True, False]
    """

    def __init__(self, rate: float, *, clock: Clock = time.monotonic):
        if rate < 0 or math.isnan(rate):
            raise ValueError("rate must be >= 0")
        self.rate = float(rate)
        self.capacity = int(self.rate) if self.rate >= 1 else (1 if self.rate > 0 else 0)
        self.window = 1.0 if self.rate >= 1 else (1.0 / self.rate if self.rate > 0 else math.inf)
        self._clock = clock
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()

    def try_acquire(self) -> bool:
        """Count one event if the window has room for it."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if len(self._sent) < self.capacity:
                self._sent.append(now)
                return True
            return False

    def seconds_until_available(self) -> float:
        """How long until `try_acquire` can succeed (``inf`` with a rate of 0)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if len(self._sent) < self.capacity:
                return 0.0
            if self.capacity == 0:
                return math.inf
            return max(self._sent[0] + self.window - now, 0.0)


_budget: ProgressBudget | None = None
_budget_lock = threading.Lock()


def progress_budget() -> ProgressBudget:
    """The process-wide progress budget shared by every emitter (created on first use).

    Its rate is ``COMFY_PROGRESS_EVENTS_PER_SECOND`` when set, else
    `DEFAULT_PROGRESS_EVENTS_PER_SECOND`.
    """
    global _budget
    with _budget_lock:
        if _budget is None:
            raw = (environment_value(PROGRESS_BUDGET_ENV) or "").strip()
            try:
                rate = float(raw) if raw else DEFAULT_PROGRESS_EVENTS_PER_SECOND
                if rate < 0 or math.isnan(rate):
                    raise ValueError(raw)
            except ValueError:
                logger.warning(
                    "Ignoring %s=%r (not a number >= 0); using %g progress events per second",
                    PROGRESS_BUDGET_ENV,
                    raw,
                    DEFAULT_PROGRESS_EVENTS_PER_SECOND,
                )
                rate = DEFAULT_PROGRESS_EVENTS_PER_SECOND
            _budget = ProgressBudget(rate)
        return _budget


def set_progress_events_per_second(rate: float | None) -> ProgressBudget:
    """Replace the process-wide budget; ``None`` goes back to the environment / default on next use.

    Returns the budget now in force.
    """
    global _budget
    with _budget_lock:
        _budget = None if rate is None else ProgressBudget(rate)
    return progress_budget()


class Coalescer(Generic[T]):
    """Progress held per job: the newest update waits in the place of the one before it, and goes
    at most once per ``interval`` per job, within the progress budget.

    The one coalescing of the package: the sensor's emitter
    (`prefect_comfy.orchestration.events.emitter.ComfyEventEmitter`) and the listener's queue
    (`prefect_comfy.listener.pacing.PacedQueue`) hold their progress here; what they hold (a
    Comfy event, a Prefect event to build) is theirs. No clock of its own: every call says ``now``.

    Args:
        interval: the least seconds between two updates sent for one key.
        budget: the progress budget, looked up when needed.
        remember: keys whose last send time is kept (the oldest forgotten first).

    Example:
        >>> held = Coalescer(1.0, lambda: ProgressBudget(100, clock=lambda: 0.0))
        >>> held.offer("j1", "10 %"), held.take(0.0), held.offer("j1", "20 %"), held.offer("j1", "30 %")
        (None, ('10 %', None), None, '20 %')
        >>> held.take(0.5), held.take(1.0)
        ((None, 0.5), ('30 %', None))
    """

    def __init__(
        self,
        interval: float,
        budget: Callable[[], ProgressBudget],
        *,
        remember: int = DEFAULT_SIZE,
    ) -> None:
        self.interval = interval
        self._budget = budget
        self._pending: OrderedDict[str, T] = OrderedDict()
        self._sent = Bounded(remember)
        self._hold: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: object) -> bool:
        return key in self._pending

    def keys(self) -> list[str]:
        """The keys with an update held, the longest held first."""
        return list(self._pending)

    def values(self) -> Iterable[T]:
        """What is held, the longest held first."""
        return self._pending.values()

    def offer(self, key: str, item: T) -> T | None:
        """Hold ``item`` for ``key``, in the place of the update held before it (returned)."""
        older = self._pending.get(key)
        self._pending[key] = item  # an existing key keeps its place
        return older

    def hold(self, key: str, until: float) -> None:
        """Send nothing for ``key`` before ``until`` (a 100 % waits for the outcome to say it);
        the first hold of a key stands until `end`."""
        self._hold.setdefault(key, until)

    def drop(self, key: str) -> T | None:
        """Let go of what is held for ``key`` (what was held, if anything)."""
        return self._pending.pop(key, None)

    def drop_oldest(self) -> T:
        """Let go of the update held longest."""
        return self._pending.popitem(last=False)[1]

    def end(self, key: str) -> T | None:
        """Forget ``key`` (its job ended): what was held, its interval, its hold."""
        self._sent.pop(key, None)
        self._hold.pop(key, None)
        return self._pending.pop(key, None)

    def sent(self, key: str, now: float) -> None:
        """Count an update of ``key`` sent at ``now`` (its interval starts again)."""
        self._sent.remember(key, now)

    def due_in(self, key: str, now: float) -> float:
        """Seconds until ``key`` may send again (0 or less: now), whatever the budget."""
        due = self._sent.get(key, -math.inf) + self.interval
        return max(due, self._hold.get(key, -math.inf)) - now

    def next_due(self, now: float, *, budget_cap: float = math.inf) -> float | None:
        """Seconds until a held update may go (``None``: nothing held); when one is due already,
        how long the budget makes it wait (at most ``budget_cap``)."""
        if not self._pending:
            return None
        soonest = min(max(self.due_in(key, now), 0.0) for key in self._pending)
        return soonest if soonest > 0 else min(self._budget().seconds_until_available(), budget_cap)

    def take(self, now: float, key: str | None = None) -> tuple[T | None, float | None]:
        """The held update to send now (of ``key``, or the longest held that is due), counted
        as sent and against the budget; else ``None`` and how long to wait (``None``: nothing
        held; a due update with no room in the budget waits for the budget)."""
        soonest = math.inf
        for candidate in [key] if key is not None else list(self._pending):
            if candidate not in self._pending:
                continue
            wait = self.due_in(candidate, now)
            if wait > 0:
                soonest = min(soonest, wait)
                continue
            budget = self._budget()
            if not budget.try_acquire():
                return None, budget.seconds_until_available()
            self.sent(candidate, now)
            return self._pending.pop(candidate), None
        return None, (soonest if soonest < math.inf else None)
