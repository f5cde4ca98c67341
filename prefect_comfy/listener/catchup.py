"""Catching up after the listener was down: list what changed on the server since its cursor.

The cursor (`prefect_comfy.listener.cursor`) names what the listener saw in flight; a job that
was submitted **and** ended while no listener ran was never seen. `catch_up` lists recent
resources where the server allows it and hands the terminal event of each one that ended since
``since`` to the listener (the same deterministic id as the live event, so a repeat is stored once);
the ones still in flight are tracked, so the live stream or the next reconciliation ends them.

What is listed is each backend's `recent`
(this module names no kind of server). What each kind allows:

- **Comfy Cloud** (and the emulator): ``GET /jobs``, ``/inputs`` and ``/models`` page by
  offset/limit, newest first. Jobs created since ``since`` are read; a terminal one is forwarded
  unless it ended before ``since`` (``completed_at``); inputs and models created since ``since``
  that are ``ready`` or ``failed`` are forwarded. At most `CATCH_UP_LIMIT` of each kind.
- **ComfyUI**: ``/history`` (the newest `CATCH_UP_LIMIT` prompts, kept in the server's
  memory) and ``/queue``. A prompt that finished since ``since`` (the time of its last status
  message) is forwarded; queued and running prompts are tracked. ComfyUI keeps no history across its
  own restart: a prompt lost in a ComfyUI restart cannot be recovered by anyone.
- **Comfy API v2** where the server lists jobs (comfy-api-proxy, the emulator): ``GET /api/v2/jobs``
  pages, newest first, read as for Comfy Cloud (jobs only: v2 uploads end when the upload call
  returns). Where listing answers 501 (Comfy Cloud), nothing is listed.
- Any other backend: nothing is listed (logged); only the cursor's entries are reconciled.

Example:
    >>> import asyncio
    >>> asyncio.run(catch_up(object(), None, forward=print, track=print, already=lambda k, i: False))
    0
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect_comfy.models import JOB_TERMINAL, STATUS_EVENT, UPLOAD_TERMINAL, ComfyEvent
from prefect_comfy.transport.deadlines import within

logger = logging.getLogger(__name__)

__all__ = [
    "CATCH_UP_LIMIT",
    "CATCH_UP_SLACK",
    "RECONNECT_CATCH_UP_SLACK",
    "catch_up",
    "terminal_event",
]

CATCH_UP_LIMIT = 1_000
"""Most resources of each kind read when catching up."""
CATCH_UP_SLACK = timedelta(minutes=5)
"""Taken off the cursor's watermark before listing: covers clock skew between the listener and the
server, and jobs queued shortly before the outage but not yet seen running."""
RECONNECT_CATCH_UP_SLACK = timedelta(seconds=60)
"""After a reconnect (the process kept running), the listener lists the resources created this long
before the drop and since: a job that started and ended while the stream was down, or whose events
a paused server held until the drop, was never seen in flight."""
LIST_TIMEOUT = 120.0
"""Longest a catch-up's listing may take (every page of every kind)."""

Forward = Callable[[ComfyEvent], Awaitable[Any]]
Track = Callable[[str, str, str], Any]
Already = Callable[[str, str], bool]
Unsent = Callable[[list[ComfyEvent], datetime | None], Awaitable[list[ComfyEvent]]]
"""``(events, since) -> events``: those of the events found that are to be forwarded."""

_TERMINAL = {"job": JOB_TERMINAL, "input": UPLOAD_TERMINAL, "model": UPLOAD_TERMINAL}


def terminal_event(kind: str, resource: Any, when: datetime | None = None) -> ComfyEvent | None:
    """The terminal Comfy event a resource's state stands for, or ``None`` if it is in flight."""
    name = STATUS_EVENT.get((kind, resource.status))
    if name is None:
        return None
    payload = resource.model_dump(mode="json", exclude_none=True, exclude={"workflow"})
    return ComfyEvent(event=name, payload=payload, timestamp=when)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


async def catch_up(
    backend: Any,
    since: datetime | None,
    *,
    forward: Forward,
    track: Track,
    already: Already,
    unsent: Unsent | None = None,
) -> int:
    """Forward the terminal events of resources that ended since ``since``; track those in flight.

    Args:
        backend: the listener's backend; what it lists is its `ComfyBackend.recent`.
        since: list what changed after this time (``None``: nothing is listed).
        forward: sends one terminal event (the listener's ``forward``).
        track: remembers ``(kind, id, status)`` as in flight.
        already: whether the terminal event of ``(kind, id)`` was forwarded in this run.
        unsent: of the terminal events found, those to forward (the listener leaves out those
            Prefect already stores: `prefect_comfy.listener.stored`); default all of them.

    Returns:
        How many terminal events were forwarded.
    """
    if since is None:
        return 0
    listed = await within(backend.recent(since, limit=CATCH_UP_LIMIT), LIST_TIMEOUT)
    if listed is None:
        logger.info(
            "%s cannot list recent jobs: only the cursor was reconciled", type(backend).__name__
        )
        return 0
    found: list[ComfyEvent] = []
    taken: set[tuple[str, str]] = set()  # a page shift can list a resource twice
    for item in listed:
        kind, resource = item.kind, item.resource
        if resource.status not in _TERMINAL[kind]:
            track(kind, resource.id, resource.status)
            continue
        ended = _aware(item.ended)
        if (ended is not None and ended < since) or already(kind, resource.id):
            continue
        event = terminal_event(kind, resource, ended)
        if event is not None and (kind, resource.id) not in taken:
            taken.add((kind, resource.id))
            found.append(event)
    if unsent is not None and found:
        found = await unsent(found, since)
    for event in found:
        await forward(event)
    return len(found)
