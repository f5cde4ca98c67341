"""Which recovered outcomes Prefect already stores: ask before sending them again.

Prefect stores an event id once, but its trigger service remembers the ids it has acted on only in
memory, for a while (30 minutes in Prefect 3.9) and not across a restart of the server. An outcome
that the listener *recovers* (reconciled through REST after a (re)connect or a restart, or caught up
by time) may have been sent already: by another listener of an HA pair while this one was down, or
by this one just before it was killed. Sent again later, it is stored once but makes every matching
deployment trigger run a second time. So before forwarding what it recovered, the listener asks
Prefect's events API (``POST /events/filter`` through the Prefect client, on Prefect Cloud as on a
self-hosted server) which of those event ids it already stores, and skips them.

Live events never come here: two listeners that both see an event live send it within moments,
which Prefect's trigger service does recognise.

`StoredEvents` asks in batches of at most `BATCH_SIZE` ids (the API's page size), within an
``occurred`` window taken from the events' own times (widened by `WINDOW_SLACK`), not the API's
default. When the events API cannot be read it answers "none stored" and logs once (a WARNING per
run of failures): a duplicate is better than a lost outcome.

Example:
    >>> import asyncio, uuid
    >>> from datetime import UTC, datetime
    >>> class Page:
    ...     def __init__(self, events):
    ...         self.events = events
    >>> class Client:
    ...     async def __aenter__(self):
    ...         return self
    ...     async def __aexit__(self, *exc):
    ...         return None
    ...     async def read_events(self, filter, limit):
    ...         return Page([type("E", (), {"id": i})() for i in filter.id.id if i.int % 2])
    >>> ids = [uuid.UUID(int=n) for n in range(4)]
    >>> now = datetime.now(UTC)
    >>> sorted(i.int for i in asyncio.run(StoredEvents(Client).stored([(i, now) for i in ids])))
    [1, 3]
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect_comfy.transport.deadlines import within

logger = logging.getLogger(__name__)

__all__ = ["BATCH_SIZE", "READ_TIMEOUT", "WINDOW_SLACK", "StoredEvents", "prefect_client"]

BATCH_SIZE = 50
"""Most event ids asked about in one request (Prefect's events API returns at most 50 a page)."""
WINDOW_SLACK = timedelta(hours=1)
"""Added on both sides of the events' own times: the stored copy of an outcome may carry another
``occurred`` (the live event's time against the completion time read through REST, clock skew)."""
DEFAULT_LOOKBACK = timedelta(days=1)
"""The window's start when neither the events nor the caller give a time."""
READ_TIMEOUT = 30.0
"""Longest wait for one answer of the events API."""

Candidate = tuple[uuid.UUID, datetime | None]
"""An event id, and when the event occurred as far as the listener knows (``None``: unknown)."""


def prefect_client() -> Any:
    """``prefect.client.orchestration.get_client()``, once a Prefect API URL is configured.

    Raises:
        ComfyConfigError: no Prefect API URL is configured (a client would start a temporary
            server, whose events say nothing about what was sent).
    """
    from prefect.client.orchestration import get_client

    from prefect_comfy.listener.sender import require_prefect_api_url

    require_prefect_api_url()
    return get_client()


class StoredEvents:
    """Asks Prefect's events API which event ids it already stores; see the module docstring.

    Args:
        client_factory: makes a Prefect client (an async context manager with ``read_events``);
            default `prefect_client`.
        batch_size: most ids a request (at most `BATCH_SIZE`).
        timeout: longest wait for one answer, seconds.
    """

    def __init__(
        self,
        client_factory: Callable[[], Any] | None = None,
        *,
        batch_size: int = BATCH_SIZE,
        timeout: float = READ_TIMEOUT,
    ) -> None:
        self._client_factory = client_factory or prefect_client
        self.batch_size = max(1, min(batch_size, BATCH_SIZE))
        self.timeout = timeout
        self.failing = False
        """Whether the last question went unanswered (the listener then sends anyway)."""
        self.requests = 0
        """Requests made so far."""

    async def stored(
        self, candidates: Sequence[Candidate], *, since: datetime | None = None
    ) -> set[uuid.UUID]:
        """The ids among ``candidates`` that Prefect already stores.

        Args:
            candidates: ``(event id, occurred or None)`` of each event about to be sent again.
            since: the earliest time such an event can have occurred, when the caller knows one
                (the listener's watermark or the drop, less its slack).

        Returns:
            The stored ids; on any failure, those confirmed before it (the rest count as not
            stored, and are sent).
        """
        found: set[uuid.UUID] = set()
        ids = list(dict.fromkeys(i for i, _ in candidates))
        if not ids:
            return found
        window = self._window(candidates, since)
        try:
            async with self._client_factory() as client:
                for start in range(0, len(ids), self.batch_size):
                    batch = ids[start : start + self.batch_size]
                    self.requests += 1
                    page = await within(
                        client.read_events(filter=self._filter(batch, window), limit=len(batch)),
                        self.timeout,
                    )
                    found.update(e.id for e in page.events if e.id in batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.failing:
                logger.warning(
                    "could not ask Prefect which recovered events it already stores (%s): "
                    "sending them anyway (a deployment trigger may run twice for those that an "
                    "other listener, or this one before a restart, had sent already)",
                    str(exc) or type(exc).__name__,
                )
            else:
                logger.debug("Prefect's events API still cannot be read: %s", exc)
            self.failing = True
            return found
        if self.failing:
            logger.info("Prefect's events API answers again: recovered events are checked")
        self.failing = False
        return found

    @staticmethod
    def _window(
        candidates: Sequence[Candidate], since: datetime | None
    ) -> tuple[datetime, datetime]:
        now = datetime.now(UTC)
        times = [_aware(t) for _, t in candidates if t is not None]
        if since is not None:
            times.append(_aware(since))
        earliest = min(times) if times else now - DEFAULT_LOOKBACK
        latest = max([now, *times])
        return earliest - WINDOW_SLACK, latest + WINDOW_SLACK

    @staticmethod
    def _filter(batch: list[uuid.UUID], window: tuple[datetime, datetime]) -> Any:
        from prefect.events.filters import EventFilter, EventIDFilter, EventOccurredFilter

        return EventFilter(
            occurred=EventOccurredFilter(since=window[0], until=window[1]),
            id=EventIDFilter(id=batch),
        )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
