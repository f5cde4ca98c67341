"""What the listener does after every (re)connect, so that a drop loses no outcome.

Three steps, in order (``docs/listener.md``, "What it guarantees"):

1. **reconcile**: every job and upload last seen in flight is read through REST, and the terminal
   events that were missed are forwarded (`InFlightTracker`);
2. **catch up around the drop**: what was created from `RECONNECT_CATCH_UP_SLACK` before the
   first unrecovered drop on is listed, for a job that started and ended while the stream was down
   (or whose events a paused server held) and so was never seen in flight
   (`catch_up`); a failed catch-up is tried again after the
   next connect;
3. **the cursor's catch-up**, once, on the first connect after a restart
   (`CursorKeeper`).

Everything found is forwarded through the listener (counted as ``reconciled``, and the catch-ups
as ``caught_up`` too); an outcome already forwarded is not forwarded again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.bounded import Bounded
from prefect_comfy.listener.catchup import RECONNECT_CATCH_UP_SLACK, catch_up
from prefect_comfy.listener.keeper import CursorKeeper
from prefect_comfy.listener.stats import ListenerStats
from prefect_comfy.listener.tracking import InFlightTracker
from prefect_comfy.models import ComfyEvent

__all__ = ["Recovery"]

logger = logging.getLogger(__name__)

Forward = Callable[[ComfyEvent], Awaitable[Any]]
"""Forwards one recovered event (the listener's ``forward(..., reconciled=True)``)."""


class Recovery:
    """Recovers what a drop hid from one listener; see the module docstring.

    Args:
        backend: the Comfy server listened to.
        tracker: what the listener saw in flight.
        ended: ``(kind, id)`` of the outcomes already forwarded.
        cursor: the durable cursor's keeper, if any.
        forward: forwards one recovered event.
        stats: the listener's counters (``caught_up``).
    """

    def __init__(
        self,
        backend: ComfyBackend,
        tracker: InFlightTracker,
        *,
        ended: Bounded,
        cursor: CursorKeeper | None,
        forward: Forward,
        stats: ListenerStats,
    ) -> None:
        self.backend = backend
        self._tracker = tracker
        self._ended = ended
        self._cursor = cursor
        self._forward = forward
        self._stats = stats
        self._dropped_at: datetime | None = None  # the first drop not caught up on yet

    def dropped(self) -> None:
        """The stream dropped: remember when (the first drop not yet caught up on)."""
        self._dropped_at = self._dropped_at or datetime.now(UTC)

    async def after_connect(self) -> None:
        """Reconcile, catch up around the drop, then the cursor's catch-up (once)."""
        await self.reconcile()
        if self._dropped_at is not None:
            await self._catch_up_after_drop(self._dropped_at)
        if self._cursor is not None and not self._cursor.caught_up:
            await self._cursor.catch_up(self.backend, **self._hooks())

    async def reconcile(self) -> int:
        """Read every resource last seen in flight; forward the terminal events that were missed.

        Returns:
            How many terminal events were synthesised.
        """
        return await self._tracker.reconcile(self._forward)

    async def _catch_up_after_drop(self, dropped_at: datetime) -> None:
        try:
            await catch_up(self.backend, dropped_at - RECONNECT_CATCH_UP_SLACK, **self._hooks())
        except Exception as exc:  # tried again after the next reconnect
            logger.warning("Could not catch up after the Comfy event stream dropped: %s", exc)
        else:
            self._dropped_at = None

    def _hooks(self) -> dict[str, Any]:
        in_flight = self._tracker.in_flight
        return {
            "forward": self._forward_caught_up,
            "track": lambda kind, rid, status: in_flight.remember((kind, rid), status),
            "already": lambda kind, rid: (kind, rid) in self._ended,
        }

    async def _forward_caught_up(self, comfy_event: ComfyEvent) -> None:
        await self._forward(comfy_event)
        self._stats.caught_up += 1
