"""Jittered exponential backoff, shared by REST retries and WebSocket reconnects.

Example:
    >>> b = Backoff(initial=1.0, maximum=30.0, rng=random.Random(0))
    >>> [round(b.next_delay(), 2) for _ in range(3)]
    [0.92, 1.76, 2.84]
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays of ``initial * 2**n``, capped at ``maximum``, with "equal jitter" (half fixed, half random).

    The fixed half keeps reconnect storms spread without ever retrying at once; `reset` after a
    good connection starts again from ``initial``.
    """

    initial: float = 1.0
    maximum: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """The pause before the next attempt (and count the attempt)."""
        base = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return base / 2 + self.rng.uniform(0, base / 2)

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self.attempt = 0
