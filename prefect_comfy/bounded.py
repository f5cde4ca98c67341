"""One bounded, insertion-ordered memory, used wherever the package remembers recent keys.

Every "last N things" the package keeps is a `Bounded`: the listener's tags, in-flight resources
and cancelled runs, the ComfyUI server memory, stream and progress tracker, the v2 backend's
answered submissions, the waiting layer's recall, the listener's pacing and the Prefect event sink.
So eviction and thread safety are written once.

It is also the one **dedupe**: "have I seen this already?" is `Bounded.seen` everywhere (an event
digest in the Cloud stream and in the waiting layer, an event id in the sink, a job's outcome in
the ComfyUI stream, a suspended run's end in the listener, a job in the listener's follower, a
cancel asked for in a run). A memory can also be bounded in *weight* (``max_weight`` with
``remember(..., weight=)``), as the waiting layer bounds the bytes of the outcomes it keeps.

Example:
    >>> recent = Bounded(2)
    >>> recent.seen("a"), recent.seen("a"), recent.seen("b"), recent.seen("c")
    (False, True, False, False)
    >>> list(recent)
    ['b', 'c']
    >>> sized = Bounded(10, max_weight=5)
    >>> sized.remember("x", "xxx", weight=3); sized.remember("y", "yyy", weight=3)
    >>> list(sized), sized.weight, sized.evicted
    (['y'], 3, 1)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

__all__ = ["DEFAULT_SIZE", "Bounded"]

DEFAULT_SIZE = 10_000
"""Entries kept when no size is given."""

_ABSENT = object()


class Bounded(OrderedDict):
    """A dict that forgets its least recently remembered entries past ``size`` (or ``max_weight``).

    Safe to write from two threads (a backend's caller and the waiting layer's loop): the writing
    methods hold a lock; a single read (``in``, ``get``) is atomic anyway.

    Args:
        size: the most entries kept.
        max_weight: the most total weight kept (entries weigh what `remember` is told, else 0);
            ``None``: no limit.
    """

    def __init__(self, size: int = DEFAULT_SIZE, *, max_weight: int | None = None) -> None:
        super().__init__()
        self.size = size
        self.max_weight = max_weight
        self.weight = 0
        """The total weight of the entries kept now."""
        self.evicted = 0
        """Entries forgotten so far to keep the bounds (not those taken or cleared)."""
        self._weights: dict[Any, int] = {}
        self._lock = threading.Lock()

    def remember(
        self, key: Any, value: Any = None, *, replace: bool = True, weight: int = 0
    ) -> None:
        """Store ``key`` as the newest entry (keep an existing value unless ``replace``).

        ``weight`` counts towards ``max_weight`` (it replaces the old entry's weight when the
        value is replaced).
        """
        with self._lock:
            if replace or key not in self:
                self[key] = value
                self._weigh(key, weight)
            self.move_to_end(key)
            self._evict()

    def seen(self, key: Any) -> bool:
        """Whether ``key`` is remembered; remember it (as the newest) either way: the dedupe."""
        with self._lock:
            known = key in self
            if not known:
                self[key] = None
            self.move_to_end(key)
            self._evict()
            return known

    def use(self, key: Any) -> Any:
        """``key``'s value (``None`` when absent), made the newest entry."""
        with self._lock:
            value = self.get(key, _ABSENT)
            if value is _ABSENT:
                return None
            self.move_to_end(key)
            return value

    def take(self, key: Any) -> Any:
        """Remove and return ``key``'s value (``None`` when absent)."""
        with self._lock:
            self.weight -= self._weights.pop(key, 0)
            return super().pop(key, None)

    def pop(self, key: Any, *default: Any) -> Any:
        """`dict.pop`, keeping the weight right."""
        with self._lock:
            self.weight -= self._weights.pop(key, 0)
            return super().pop(key, *default)

    def clear(self) -> None:
        """Forget everything (not counted as ``evicted``)."""
        with self._lock:
            super().clear()
            self._weights.clear()
            self.weight = 0

    def _weigh(self, key: Any, weight: int) -> None:
        self.weight += weight - self._weights.pop(key, 0)
        if weight:
            self._weights[key] = weight

    def _evict(self) -> None:
        while len(self) > self.size or (
            self.max_weight is not None and self.weight > self.max_weight and self
        ):
            key, _ = self.popitem(last=False)
            self.weight -= self._weights.pop(key, 0)
            self.evicted += 1

    def __reduce__(self) -> Any:  # a lock does not pickle or deep-copy: make a fresh one
        state = {"max_weight": self.max_weight, "weight": self.weight, "evicted": self.evicted}
        state["_weights"] = dict(self._weights)
        return (type(self), (self.size,), state, None, iter(self.items()))
