"""The Prefect side of the listener: an events client, a paced send loop, a drain and a final flush.

`ComfyListener` puts every Prefect event it makes on
a `PrefectSender`; one task sends them through an explicit Prefect events client
(``get_events_client()``), never ``emit_event``: an events worker started inside a flow run would
relate later events to that run. What goes next, and when, is the
`PacedQueue`'s choice: outcomes first, progress coalesced, at
most ``events_per_second`` (`DEFAULT_EVENTS_PER_SECOND`, or
``COMFY_LISTENER_EVENTS_PER_SECOND``). A refused send is retried with a backoff; a warning is logged
when the oldest pending event has waited more than ``BEHIND_AFTER`` seconds; on a stop the queue is
drained within a deadline and `flush` has the Prefect server confirm what was sent.

Example:
    >>> import asyncio
    >>> from prefect.events import Event
    >>> from prefect_comfy.listener.stats import ListenerStats
    >>> class Client:
    ...     async def emit(self, event):
    ...         print("sent", event.event)
    >>> async def main():
    ...     sender = PrefectSender(ListenerStats(), queue_size=10, drain_timeout=1, retry_delay=0.1)
    ...     task = asyncio.create_task(sender.send_loop(Client()))
    ...     await sender.put(Event(event="comfy.input.ready",
    ...                            resource={"prefect.resource.id": "comfy.input.i1"}))
    ...     await sender.drain(task)
    >>> asyncio.run(main())
    sent comfy.input.ready
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prefect_comfy.exceptions import ComfyConfigError
from prefect_comfy.listener.pacing import DEFAULT_EVENTS_PER_SECOND as DEFAULT_EVENTS_PER_SECOND
from prefect_comfy.listener.pacing import DEFAULT_PROGRESS_INTERVAL as DEFAULT_PROGRESS_INTERVAL
from prefect_comfy.listener.pacing import DEFAULT_QUEUE_SIZE as DEFAULT_QUEUE_SIZE
from prefect_comfy.listener.pacing import Backlog, PacedQueue, Pending
from prefect_comfy.settings import environment_value
from prefect_comfy.transport.backoff import Backoff
from prefect_comfy.transport.deadlines import within

if TYPE_CHECKING:
    from prefect.events import Event

    from prefect_comfy.listener.stats import ListenerStats
    from prefect_comfy.orchestration.events.budget import ProgressBudget

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_EVENTS_PER_SECOND",
    "DEFAULT_PROGRESS_INTERVAL",
    "DEFAULT_QUEUE_SIZE",
    "EVENTS_PER_SECOND_ENV",
    "NO_API_URL_MESSAGE",
    "PrefectSender",
    "events_per_second_from_env",
    "flush",
    "prefect_events_client",
    "require_prefect_api_url",
]

TAGS_WAIT = 5.0
"""The longest the sender waits for a job's tags (read off the stream's loop) before it sends the
job's event without them."""
DEFAULT_DRAIN_TIMEOUT = 30.0
"""Longest time a stop spends sending what was already received."""
CHECKPOINT_INTERVAL = 1.0
"""Seconds between two confirmations (a websocket ping) of the events sent, while some are
unconfirmed: an event sent this long before a restart of the Prefect server may be sent again
(Prefect's events client resends what is unconfirmed when it reconnects)."""
EVENTS_PER_SECOND_ENV = "COMFY_LISTENER_EVENTS_PER_SECOND"
"""The environment variable that sets the listener's send rate (``0``: no limit; documented in
`prefect_comfy.settings.SEPARATE_VARIABLES`)."""

NO_API_URL_MESSAGE = (
    "No Prefect API URL is configured, so Comfy events would have nowhere to go. The listener does "
    "not start a temporary server. Point it at a running Prefect server, for example:\n"
    "  prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api\n"
    "(start a local server with `prefect server start`), or set the PREFECT_API_URL environment "
    "variable; for Prefect Cloud, run `prefect cloud login`."
)


def require_prefect_api_url() -> str:
    """The configured Prefect API URL.

    Raises:
        ComfyConfigError: none is configured (the message says how to set one).
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ComfyConfigError(NO_API_URL_MESSAGE)
    return str(url)


def prefect_events_client() -> Any:
    """``prefect.events.clients.get_events_client()``, once a Prefect API URL is known to be set.

    It confirms what it sent every `CHECKPOINT_INTERVAL` seconds (Prefect's default is 30): the
    client sends every unconfirmed event again when it reconnects, and after a restart of the
    Prefect server those repeats would run deployment triggers a second time.

    Raises:
        ComfyConfigError: no Prefect API URL is configured.
    """
    from prefect.events.clients import get_events_client

    require_prefect_api_url()
    return get_events_client(checkpoint_interval=CHECKPOINT_INTERVAL)


def events_per_second_from_env() -> float:
    """``COMFY_LISTENER_EVENTS_PER_SECOND`` if set, else `DEFAULT_EVENTS_PER_SECOND`.

    Raises:
        ComfyConfigError: the variable is set to something other than a number >= 0.
    """
    raw = (environment_value(EVENTS_PER_SECOND_ENV) or "").strip()
    if not raw:
        return DEFAULT_EVENTS_PER_SECOND
    try:
        rate = float(raw)
    except ValueError:
        rate = math.nan
    if not rate >= 0:
        raise ComfyConfigError(
            f"{EVENTS_PER_SECOND_ENV}={raw!r} is not a number >= 0: set it to the events a second "
            f"the listener may send to Prefect (default {DEFAULT_EVENTS_PER_SECOND:g}; 0: no limit)."
        )
    return rate


class PrefectSender:
    """Sends what the `PacedQueue` hands out, until stopped.

    Args:
        stats: the listener's counters; ``forwarded``, ``send_errors``, ``coalesced`` and
            ``queued`` are kept here.
        queue_size: outcome events buffered before `put` waits.
        drain_timeout: the longest `drain` waits for the queue to empty.
        retry_delay: first pause before sending again after Prefect refused an event.
        events_per_second: the most events sent a second, all kinds together; ``0`` for no limit.
        progress_interval: the least time between two progress events of one job.
        progress_events: the progress budget (default: the process-wide one).
    """

    def __init__(
        self,
        stats: ListenerStats,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        retry_delay: float = 0.5,
        events_per_second: float = DEFAULT_EVENTS_PER_SECOND,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
        progress_events: ProgressBudget | None = None,
    ) -> None:
        self.stats = stats
        self.drain_timeout = drain_timeout
        self.queue = PacedQueue(
            stats,
            queue_size=queue_size,
            events_per_second=events_per_second,
            progress_interval=progress_interval,
            progress_events=progress_events,
        )
        self._in_hand: Pending | None = None
        self._empty = asyncio.Event()
        self._behind = False
        self._backoff = Backoff(initial=retry_delay, maximum=30.0)

    async def put(self, event: Event, *, counted: bool = True) -> None:
        """Queue ``event`` (an outcome waits while the queue is full); ``counted`` ones count as
        forwarded once sent."""
        self._empty.clear()
        await self.queue.put(event, counted=counted)

    async def put_lazy(
        self,
        name: str,
        key: str,
        build: Callable[[], Event],
        *,
        ready: asyncio.Future[object] | None = None,
    ) -> None:
        """Queue the event ``build()`` makes, built when sent (see `PacedQueue.put_lazy`)."""
        self._empty.clear()
        await self.queue.put_lazy(name, key, build, ready=ready)

    def backlog(self) -> Backlog:
        """The queue depth (the event being sent included) and the oldest pending event's age."""
        backlog = self.queue.backlog()
        if self._in_hand is None:
            return backlog
        return Backlog(backlog.queued + 1, backlog.oldest_pending_seconds)

    def pending_resources(self) -> list[tuple[str, str]]:
        """``(kind, id)`` of the resources whose outcomes are received but not yet sent."""
        found = self.queue.pending_resources()
        item = self._in_hand
        if item is not None and item.counted:
            parts = item.key.split(".", 2)
            if len(parts) == 3 and parts[1] in ("job", "input", "model"):
                found.append((parts[1], parts[2]))
        return found

    async def send_loop(self, client: Any) -> None:
        """Send queued events through ``client``, paced, retrying each until it goes (forever)."""
        while True:
            self._say_if_behind()
            item, wait = self.queue.next()
            if item is None:
                if not len(self.queue):
                    self._empty.set()
                self.queue.changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(self.queue.changed.wait(), wait)
                continue
            self._in_hand = item
            try:
                await self._send(client, item)
            finally:
                self._in_hand = None

    async def _send(self, client: Any, item: Pending) -> None:
        if item.ready is not None and not item.ready.done():
            # the job's tags are being read (off the stream's loop): give them a moment
            await asyncio.wait({item.ready}, timeout=TAGS_WAIT)
        event = item.event
        while True:
            try:
                await client.emit(event)
                break
            except Exception as exc:
                self.stats.send_errors += 1
                delay = self._backoff.next_delay()
                logger.warning(
                    "could not send %s to Prefect (%s); retrying in %.1fs", event.event, exc, delay
                )
                await asyncio.sleep(delay)
        self._backoff.reset()
        if item.counted:
            self.stats.forwarded += 1
            logger.debug("forwarded %s %s id=%s", event.event, event.resource.id, event.id)

    def _say_if_behind(self) -> None:
        backlog = self.backlog()
        if backlog.behind and not self._behind:
            logger.warning(
                "the listener is behind: %d events wait to be sent to Prefect, the oldest for "
                "%.1fs (sending at most %g a second)",
                backlog.queued,
                backlog.oldest_pending_seconds,
                self.queue.events_per_second,
            )
        elif self._behind and not backlog.behind:
            logger.info("the listener caught up: %d events wait to be sent", backlog.queued)
        self._behind = backlog.behind

    async def drain(self, sender: asyncio.Task[None]) -> None:
        """Let ``sender`` (the `send_loop` task) send everything queued, then cancel it.

        Pending progress goes too, without waiting for its interval or budget (still paced).
        """
        self.queue.draining = True
        self.queue.changed.set()
        if not sender.done() and (len(self.queue) or self._in_hand is not None):
            self._empty.clear()
            finished = asyncio.ensure_future(self._empty.wait())
            await asyncio.wait(
                {finished, sender}, timeout=self.drain_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            finished.cancel()
            if not self._empty.is_set() and not sender.done():
                logger.warning(
                    "gave up sending %d events to Prefect after %.0fs",
                    self.backlog().queued,
                    self.drain_timeout,
                )
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


async def flush(client: Any, timeout: float = 10.0) -> None:
    """Make sure a Prefect events client's server has every event sent so far.

    ``PrefectEventsClient`` confirms sent events with a websocket ping every few hundred events;
    a ping now confirms the rest before the connection closes.
    """
    websocket = getattr(client, "_websocket", None)
    if websocket is None:
        return
    try:
        pong = await websocket.ping()
        await within(pong, timeout)
    except Exception as exc:
        logger.warning("could not confirm the last events with Prefect: %s", exc)
