"""The one backoff: growing pauses, capped, jittered or not, with what was waited counted.

Every loop that waits longer after each failure (or each quiet round) uses `Backoff`: REST
retries (`prefect_comfy.transport.retry`), WebSocket reconnects (`prefect_comfy.transport.reconnect`),
the waiting layer's reconciliation and shared poll, a v2 job's confirmation read, ComfyUI's
``/history`` read after an outcome frame, the listener's job finding and its sends to Prefect.
A caller keeps its own numbers (first pause, cap, growth, a budget of attempts or of seconds
through `Backoff.waited`) and its own log line (`Backoff.pause` hands it the delay first).

Example:
    >>> b = Backoff(initial=1.0, maximum=30.0, rng=random.Random(0))
    >>> [round(b.next_delay(), 2) for _ in range(3)]
    [0.92, 1.76, 2.84]
    >>> quiet = Backoff(initial=1.0, maximum=5.0, factor=1.5, jitter=False)
    >>> [quiet.next_delay() for _ in range(6)], quiet.waited
    ([1.0, 1.5, 2.25, 3.375, 5.0, 5.0], 18.125)
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["JITTER", "Backoff"]

JITTER = random.Random()
"""The jitter's randomness of every `Backoff` not given its own (one ``Random`` is ~2.5 KB)."""


@dataclass
class Backoff:
    """Delays of ``initial * factor**n``, capped at ``maximum``; with ``jitter``, "equal jitter"
    (half fixed, half random).

    The fixed half keeps reconnect storms spread without ever retrying at once; `reset` after a
    good connection (or a round that found something) starts again from ``initial``. Without
    jitter the delays are exact: a schedule, such as a poll that slows down while nothing changes.
    """

    initial: float = 1.0
    maximum: float = 30.0
    rng: random.Random = field(default_factory=lambda: JITTER)
    attempt: int = 0
    """Delays handed out since the last `reset`."""
    factor: float = 2.0
    """How much each delay grows over the one before (before the cap)."""
    jitter: bool = True
    waited: float = 0.0
    """Seconds of delay handed out since the last `reset` (a budget in seconds reads it)."""

    def next_delay(self) -> float:
        """The pause before the next attempt (and count the attempt)."""
        try:
            grown = self.initial * self.factor**self.attempt
        except OverflowError:  # a loop that never gives up (the listener) passes 2**1024
            grown = math.inf
        base = min(self.maximum, grown)
        self.attempt += 1
        delay = base / 2 + self.rng.uniform(0, base / 2) if self.jitter else base
        self.waited += delay
        return delay

    async def pause(self, announce: Callable[[float], object] | None = None) -> float:
        """Sleep the next delay; ``announce(delay)`` first (the caller's log line). The delay."""
        delay = self.next_delay()
        if announce is not None:
            announce(delay)
        await asyncio.sleep(delay)
        return delay

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self.attempt = 0
        self.waited = 0.0
