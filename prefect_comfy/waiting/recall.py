"""What a hub remembers between events: digests of events seen, and the last outcomes.

Both are bounded. Event digests are 16 bytes each (never payloads: a body can be megabytes), to drop
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
from collections import OrderedDict

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
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._outcomes: OrderedDict[Key, tuple[ComfyEvent, int]] = OrderedDict()
        self._seen_size = seen_size
        self._outcome_size = outcome_size
        self._outcome_bytes = outcome_bytes
        self._largest = largest_outcome
        self.outcome_bytes = 0
        """Bytes the remembered outcomes take now."""
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
        """Keep a resource's terminal event (unless it is too large: then it is forgotten)."""
        old = self._outcomes.pop(key, None)
        if old is not None:
            self.outcome_bytes -= old[1]
        size = len(json.dumps(event.payload, separators=(",", ":"), default=str))
        if size > self._largest:
            self.forgotten += 1
            return
        self._outcomes[key] = (event, size)
        self.outcome_bytes += size
        while self._outcomes and (
            len(self._outcomes) > self._outcome_size or self.outcome_bytes > self._outcome_bytes
        ):
            _, (_, dropped) = self._outcomes.popitem(last=False)
            self.outcome_bytes -= dropped
            self.forgotten += 1

    def outcome(self, key: Key) -> ComfyEvent | None:
        """The remembered terminal event of a resource, if any."""
        kept = self._outcomes.get(key)
        return None if kept is None else kept[0]

    def forget_outcomes(self) -> None:
        """Drop every remembered outcome (an idle hub keeps nothing)."""
        self._outcomes.clear()
        self.outcome_bytes = 0
        self.forgotten += 1


def lost_event(job_id: str, message: str) -> ComfyEvent:
    """The ``job.lost`` event of a job the server no longer knows."""
    return ComfyEvent(
        event="job.lost",
        payload={"id": job_id, "status": "lost", "error": {"code": "lost", "message": message}},
    )
