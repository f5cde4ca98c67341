"""What a hub remembers between events: digests of events seen, and the last outcomes.

Both are bounded. Event digests are 16 bytes each (never payloads: a body can be megabytes), to drop
an event the stream delivers twice. Outcomes are whole terminal events, so that a wait that
registers after its resource ended returns at once; :attr:`Recall.forgotten` counts evictions, so
that a ``covered_since`` mark taken before an eviction is not trusted any more.
"""

from __future__ import annotations

from collections import OrderedDict

from prefect_comfy.models import ComfyEvent

__all__ = ["REMEMBERED_OUTCOMES", "SEEN_EVENTS", "Recall", "lost_event"]

SEEN_EVENTS = 10_000
"""Event digests remembered to drop repeats."""
REMEMBERED_OUTCOMES = 4096
"""Terminal events remembered for waits that register late."""

Key = tuple[str, str]


class Recall:
    """The bounded memory of one hub (used on the hub's loop only)."""

    def __init__(
        self, seen_size: int = SEEN_EVENTS, outcome_size: int = REMEMBERED_OUTCOMES
    ) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._outcomes: OrderedDict[Key, ComfyEvent] = OrderedDict()
        self._seen_size = seen_size
        self._outcome_size = outcome_size
        self.forgotten = 0
        """Outcomes evicted or cleared so far."""

    def repeated(self, event: ComfyEvent) -> bool:
        """Whether an event with this id was seen recently (id-less events are never repeats here)."""
        if event.id is None:
            return False
        digest = event.digest()
        if digest in self._seen:
            return True
        self._seen[digest] = None
        if len(self._seen) > self._seen_size:
            self._seen.popitem(last=False)
        return False

    def remember(self, key: Key, event: ComfyEvent) -> None:
        """Keep a resource's terminal event."""
        self._outcomes[key] = event
        self._outcomes.move_to_end(key)
        if len(self._outcomes) > self._outcome_size:
            self._outcomes.popitem(last=False)
            self.forgotten += 1

    def outcome(self, key: Key) -> ComfyEvent | None:
        """The remembered terminal event of a resource, if any."""
        return self._outcomes.get(key)

    def forget_outcomes(self) -> None:
        """Drop every remembered outcome (an idle hub keeps nothing)."""
        self._outcomes.clear()
        self.forgotten += 1


def lost_event(job_id: str, message: str) -> ComfyEvent:
    """The ``job.lost`` event of a job the server no longer knows."""
    return ComfyEvent(
        event="job.lost",
        payload={"id": job_id, "status": "lost", "error": {"code": "lost", "message": message}},
    )
