"""What a hub remembers between events: digests of events seen, and the last outcomes.

Both are `Bounded` (the package's one bounded memory and dedupe). Event digests are 16 bytes each (never payloads: a body can be megabytes), to drop
an event the stream delivers twice. Outcomes are whole terminal events, so that a wait that
registers after its resource ended returns at once; they are bounded in number
(`REMEMBERED_OUTCOMES`) and in bytes (`OUTCOME_BYTES` in all; an outcome larger than
`LARGEST_OUTCOME` is not kept: the stream carries other users' jobs too, and a late wait for
one reads it over REST). `Recall.forgotten` counts evictions and outcomes not kept, so that a
``covered_since`` mark taken before one is not trusted any more.

Example:
    >>> recall = Recall(outcome_bytes=1000, largest_outcome=600)
    >>> big = ComfyEvent(event="job.completed", payload={"id": "j1", "log": "x" * 700})
    >>> recall.remember(("job", "j1"), big)
    >>> recall.outcome(("job", "j1")) is None, recall.forgotten
    (True, 1)
"""

from __future__ import annotations

import json

from prefect_comfy.bounded import Bounded
from prefect_comfy.models import ComfyEvent

__all__ = [
    "LARGEST_OUTCOME",
    "OUTCOME_BYTES",
    "REMEMBERED_OUTCOMES",
    "SEEN_EVENTS",
    "Recall",
    "lost_event",
]

SEEN_EVENTS = 10_000
"""Event digests remembered to drop repeats."""
REMEMBERED_OUTCOMES = 4096
"""Terminal events remembered for waits that register late."""
OUTCOME_BYTES = 32 * 2**20
"""The most bytes (of JSON payload) the remembered outcomes take in all."""
LARGEST_OUTCOME = 256 * 2**10
"""An outcome larger than this is not remembered (a late wait for it reads it over REST)."""

Key = tuple[str, str]


class Recall:
    """The bounded memory of one hub (used on the hub's loop only)."""

    def __init__(
        self,
        seen_size: int = SEEN_EVENTS,
        outcome_size: int = REMEMBERED_OUTCOMES,
        *,
        outcome_bytes: int = OUTCOME_BYTES,
        largest_outcome: int = LARGEST_OUTCOME,
    ) -> None:
        self._seen = Bounded(seen_size)
        self._outcomes = Bounded(outcome_size, max_weight=outcome_bytes)
        self._largest = largest_outcome
        self._dropped = 0  # outcomes too large to keep, and clears

    @property
    def outcome_bytes(self) -> int:
        """Bytes the remembered outcomes take now."""
        return self._outcomes.weight

    @property
    def forgotten(self) -> int:
        """Outcomes evicted, not kept or cleared so far."""
        return self._outcomes.evicted + self._dropped

    def repeated(self, event: ComfyEvent) -> bool:
        """Whether an event with this id was seen recently (id-less events are never repeats here)."""
        return event.id is not None and self._seen.seen(event.digest())

    def remember(self, key: Key, event: ComfyEvent) -> None:
        """Keep a resource's terminal event (unless it is too large: then it is forgotten)."""
        size = len(json.dumps(event.payload, separators=(",", ":"), default=str))
        if size > self._largest:
            self._outcomes.take(key)
            self._dropped += 1
            return
        self._outcomes.remember(key, event, weight=size)

    def outcome(self, key: Key) -> ComfyEvent | None:
        """The remembered terminal event of a resource, if any."""
        return self._outcomes.get(key)

    def forget_outcomes(self) -> None:
        """Drop every remembered outcome (an idle hub keeps nothing)."""
        self._outcomes.clear()
        self._dropped += 1


def lost_event(job_id: str, message: str) -> ComfyEvent:
    """The ``job.lost`` event of a job the server no longer knows."""
    return ComfyEvent(
        event="job.lost",
        payload={"id": job_id, "status": "lost", "error": {"code": "lost", "message": message}},
    )
