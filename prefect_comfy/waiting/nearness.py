"""How close each followed job is to its end, as far as this process knows: who gets a stream.

`JobStreams` holds fewer streams than it follows jobs
(a server caps them). It gives them to the jobs closest to their end, ranked by what the last
listing, read or stream said of each (`Nearness.rank`): running before queued before not seen yet,
then the most progress, then the oldest (a server runs its queue first in first out), then the first
followed.

Example:
    >>> near = Nearness()
    >>> for key in ("a", "b", "c"):
    ...     near.arrived(("job", key))
    >>> near.note(("job", "b"), "pending", None, created=20.0)
    >>> near.note(("job", "c"), "running", 40.0, created=30.0)
    >>> sorted(["a", "b", "c"], key=lambda k: near.rank(("job", k)), reverse=True)
    ['c', 'b', 'a']
"""

from __future__ import annotations

import itertools
import math

__all__ = ["Nearness"]

Key = tuple[str, str]
Rank = tuple[int, float, float, int]

_RUNNING, _QUEUED = 2, 1
"""How close a job is to its end, by status; 0: not seen yet."""


class Nearness:
    """``job key -> (status, progress, age)`` for the jobs followed, and the order they came in."""

    def __init__(self) -> None:
        self._ranks: dict[Key, tuple[int, float, float]] = {}
        self._arrival: dict[Key, int] = {}
        self._arrivals = itertools.count()

    def arrived(self, key: Key) -> None:
        """A job is followed from now on (the first followed goes first among equals)."""
        self._arrival.setdefault(key, next(self._arrivals))

    def note(self, key: Key, status: str, progress: float | None, created: float | None) -> None:
        """What a listing, a read or a stream said of a job (``created``: a POSIX time, or
        ``None`` to keep what was known)."""
        rank = _RUNNING if status == "running" else _QUEUED
        _, _, age = self._ranks.get(key, (0, 0.0, -math.inf))
        self._ranks[key] = (rank, progress or 0.0, -created if created is not None else age)

    def rank(self, key: Key) -> Rank:
        """Greater: closer to its end."""
        status, progress, age = self._ranks.get(key, (0, 0.0, -math.inf))
        return status, progress, age, -self._arrival.get(key, 0)

    def swap(self, polled: list[Key], streamed: list[Key]) -> tuple[Key, Key] | None:
        """``(polled job, streamed job)`` where the polled job closest to its end runs and the
        streamed job furthest from it is known to be only queued: the first should take the
        second's stream. ``None`` otherwise (a job not seen yet keeps its stream)."""
        if not polled or not streamed:
            return None
        best, worst = max(polled, key=self.rank), min(streamed, key=self.rank)
        status = self._ranks.get(best, (0,))[0], self._ranks.get(worst, (0,))[0]
        return (best, worst) if status == (_RUNNING, _QUEUED) else None

    def forget(self, key: Key) -> None:
        self._ranks.pop(key, None)
        self._arrival.pop(key, None)
