"""One bounded, insertion-ordered memory, used wherever the package remembers recent keys.

The listener's tags and in-flight resources, the ComfyUI server memory and stream, the Cloud
WebSocket's de-duplication, the listener's pacing and the Prefect event sink each keep "the last N
things seen"; they all use `Bounded`, so that eviction and thread safety are written once.

Example:
    >>> recent = Bounded(2)
    >>> recent.seen("a"), recent.seen("a"), recent.seen("b"), recent.seen("c")
    (False, True, False, False)
    >>> list(recent)
    ['b', 'c']
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

__all__ = ["DEFAULT_SIZE", "Bounded"]

DEFAULT_SIZE = 10_000
"""Entries kept when no size is given."""


class Bounded(OrderedDict):
    """A dict that forgets its least recently remembered entries past ``size``.

    Safe to write from two threads (a backend's caller and the waiting layer's loop): the writing
    methods hold a lock; a single read (``in``, ``get``) is atomic anyway.

    Args:
        size: the most entries kept.
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        super().__init__()
        self.size = size
        self._lock = threading.Lock()

    def remember(self, key: Any, value: Any = None, *, replace: bool = True) -> None:
        """Store ``key`` as the newest entry (keep an existing value unless ``replace``)."""
        with self._lock:
            if replace or key not in self:
                self[key] = value
            self.move_to_end(key)
            self._evict()

    def seen(self, key: Any) -> bool:
        """Whether ``key`` is remembered; remember it (as the newest) either way."""
        with self._lock:
            known = key in self
            if not known:
                self[key] = None
            self.move_to_end(key)
            self._evict()
            return known

    def take(self, key: Any) -> Any:
        """Remove and return ``key``'s value (``None`` when absent)."""
        with self._lock:
            return self.pop(key, None)

    def _evict(self) -> None:
        while len(self) > self.size:
            self.popitem(last=False)

    def __reduce__(self) -> Any:  # a lock does not pickle or deep-copy: make a fresh one
        return (type(self), (self.size,), None, None, iter(self.items()))
