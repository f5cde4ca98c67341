"""The process-wide budget of progress events: a sliding window shared by every emitter.

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
from collections import deque
from collections.abc import Callable

from prefect_comfy.settings import environment_value

__all__ = [
    "DEFAULT_PROGRESS_EVENTS_PER_SECOND",
    "PROGRESS_BUDGET_ENV",
    "ProgressBudget",
    "progress_budget",
    "set_progress_events_per_second",
]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

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
