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
as ``caught_up`` too); an outcome already forwarded is not forwarded again: not by this run (its
memory of what ended), and not by anyone, as far as Prefect can tell (`StoredEvents`: the ids it
already stores are skipped, counted as ``already_stored``), so that a trigger runs once even when
its dedupe has forgotten the first copy.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.bounded import Bounded
from prefect_comfy.listener.catchup import CATCH_UP_SLACK, RECONNECT_CATCH_UP_SLACK, catch_up
from prefect_comfy.listener.keeper import CursorKeeper
from prefect_comfy.listener.stats import ListenerStats
from prefect_comfy.listener.stored import StoredEvents
from prefect_comfy.listener.tracking import InFlightTracker
from prefect_comfy.models import ComfyEvent
from prefect_comfy.orchestration.events.names import event_id_of

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
        stats: the listener's counters (``caught_up``, ``already_stored``).
        stored: asks Prefect which recovered events it already stores (default `StoredEvents`).
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
        stored: StoredEvents | None = None,
    ) -> None:
        self.backend = backend
        self._tracker = tracker
        self._ended = ended
        self._cursor = cursor
        self._forward = forward
        self._stats = stats
        self._stored = stored if stored is not None else StoredEvents()
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
            How many terminal events were forwarded (those Prefect already stores are not).
        """
        missed: list[ComfyEvent] = []

        async def collect(comfy_event: ComfyEvent) -> None:
            missed.append(comfy_event)

        await self._tracker.reconcile(collect)
        if missed:
            missed = await self.unsent(missed, self._earliest())
        for comfy_event in missed:
            await self._forward(comfy_event)
        return len(missed)

    async def forward_unless_stored(self, comfy_event: ComfyEvent) -> None:
        """Forward one recovered terminal event unless Prefect already stores it."""
        for event in await self.unsent([comfy_event], self._earliest()):
            await self._forward(event)

    async def unsent(
        self, events: list[ComfyEvent], since: datetime | None = None
    ) -> list[ComfyEvent]:
        """Of recovered terminal events, those Prefect does not store yet (all, if it cannot say).

        Args:
            events: the terminal events about to be forwarded.
            since: the earliest time they can have occurred, if known.

        Returns:
            The events to forward, in their order.
        """
        address = self.backend.address
        ids = [event_id_of(e, address=address) for e in events]
        stored = await self._stored.stored(
            [(i, e.timestamp) for i, e in zip(ids, events, strict=True)], since=since
        )
        if not stored:
            return events
        keep = []
        for event_id, comfy_event in zip(ids, events, strict=True):
            if event_id not in stored:
                keep.append(comfy_event)
                continue
            self._stats.already_stored += 1
            if comfy_event.resource_id is not None:
                self._ended.remember((comfy_event.kind, comfy_event.resource_id), True)
            logger.debug(
                "not sending %s of %s again: Prefect already stores it (id=%s)",
                comfy_event.event,
                comfy_event.resource_id,
                event_id,
            )
        logger.log(
            logging.INFO if len(events) > 1 else logging.DEBUG,
            "%d of %d recovered terminal events are already in Prefect (sent by another listener, "
            "or by this one before a restart): not sent again",
            len(events) - len(keep),
            len(events),
        )
        return keep

    def _earliest(self) -> datetime | None:
        """The earliest time a recovered outcome can have occurred: the first drop not caught up
        on, or the restored cursor's watermark, less their slack (``None``: not known)."""
        times = []
        if self._dropped_at is not None:
            times.append(self._dropped_at - RECONNECT_CATCH_UP_SLACK)
        if self._cursor is not None and self._cursor.restored_watermark is not None:
            times.append(self._cursor.restored_watermark - CATCH_UP_SLACK)
        return min(times) if times else None

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
            "unsent": self.unsent,
        }

    async def _forward_caught_up(self, comfy_event: ComfyEvent) -> None:
        await self._forward(comfy_event)
        self._stats.caught_up += 1
