"""The process-wide budget of progress events: a token bucket shared by every emitter.

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
import os
import threading
import time
from collections.abc import Callable

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
"""The environment variable that sets the process-wide progress budget (``0`` sends no progress)."""


class ProgressBudget:
    """A token bucket: ``rate`` progress events a second on average, bursts up to ``capacity``.

    Thread-safe, because sensors may run in several threads (one event loop each) of one process.

    Example:
        >>> budget = ProgressBudget(2, clock=lambda: 0.0)
        >>> [budget.try_acquire() for _ in range(3)]
        [True, True, False]
    """

    def __init__(
        self, rate: float, *, capacity: float | None = None, clock: Clock = time.monotonic
    ):
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = float(rate)
        self.capacity = float(capacity if capacity is not None else max(1.0, self.rate))
        self._clock = clock
        self._tokens = self.capacity if self.rate > 0 else 0.0
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_acquire(self) -> bool:
        """Take one token if there is one."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def force_acquire(self) -> None:
        """Take one token even if there is none (a final progress value): the debt slows what follows."""
        with self._lock:
            self._refill()
            self._tokens = max(self._tokens - 1.0, -self.capacity)

    def seconds_until_available(self) -> float:
        """How long until :meth:`try_acquire` can succeed (``inf`` with a rate of 0)."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                return 0.0
            if self.rate <= 0:
                return math.inf
            return (1.0 - self._tokens) / self.rate


_budget: ProgressBudget | None = None
_budget_lock = threading.Lock()


def progress_budget() -> ProgressBudget:
    """The process-wide progress budget shared by every emitter (created on first use).

    Its rate is ``COMFY_PROGRESS_EVENTS_PER_SECOND`` when set, else
    :data:`DEFAULT_PROGRESS_EVENTS_PER_SECOND`.
    """
    global _budget
    with _budget_lock:
        if _budget is None:
            raw = os.environ.get(PROGRESS_BUDGET_ENV, "").strip()
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
