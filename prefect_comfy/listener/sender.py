"""The Prefect side of the listener: an events client, a send queue, a drain and a final flush.

:class:`ComfyListener <prefect_comfy.listener.forwarder.ComfyListener>` puts every Prefect event it makes on
a :class:`PrefectSender` queue; one task sends them through an explicit Prefect events client
(``get_events_client()``), never ``emit_event``: an events worker started inside a flow run would
relate later events to that run. A full queue makes reading from Comfy wait (back pressure); a
refused send is retried with a backoff; on a stop the queue is drained within a deadline and
:func:`flush` has the Prefect server confirm what was sent.

Example:
    >>> import asyncio
    >>> from prefect_comfy.listener.forwarder import ListenerStats
    >>> class Client:
    ...     async def emit(self, event):
    ...         print("sent", event)
    >>> async def main():
    ...     sender = PrefectSender(ListenerStats(), queue_size=10, drain_timeout=1, retry_delay=0.1)
    ...     task = asyncio.create_task(sender.send_loop(Client()))
    ...     await sender.put("an event", counted=False)  # a real caller puts a prefect Event
    ...     await sender.drain(task)
    >>> asyncio.run(main())
    sent an event
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from prefect_comfy.exceptions import ComfyConfigError
from prefect_comfy.transport.backoff import Backoff
from prefect_comfy.transport.deadlines import within

if TYPE_CHECKING:
    from prefect.events import Event

    from prefect_comfy.listener.forwarder import ListenerStats

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_QUEUE_SIZE",
    "NO_API_URL_MESSAGE",
    "PrefectSender",
    "flush",
    "prefect_events_client",
    "require_prefect_api_url",
]

DEFAULT_QUEUE_SIZE = 10_000
"""Prefect events waiting to be sent before reading from Comfy pauses (back pressure)."""
DEFAULT_DRAIN_TIMEOUT = 30.0
"""Longest time a stop spends sending what was already received."""

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

    Raises:
        ComfyConfigError: no Prefect API URL is configured.
    """
    from prefect.events.clients import get_events_client

    require_prefect_api_url()
    return get_events_client()


class PrefectSender:
    """The queue between reading from Comfy and sending to Prefect, and the loop that empties it.

    Args:
        stats: the listener's counters; ``forwarded`` and ``send_errors`` are kept here.
        queue_size: Prefect events buffered before :meth:`put` waits.
        drain_timeout: the longest :meth:`drain` waits for the queue to empty.
        retry_delay: first pause before sending again after Prefect refused an event.
    """

    def __init__(
        self,
        stats: ListenerStats,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        retry_delay: float = 0.5,
    ) -> None:
        self.stats = stats
        self.drain_timeout = drain_timeout
        self.queue: asyncio.Queue[tuple[Event, bool]] = asyncio.Queue(maxsize=queue_size)
        self._backoff = Backoff(initial=retry_delay, maximum=30.0)

    async def put(self, event: Event, *, counted: bool = True) -> None:
        """Queue ``event`` (waits while the queue is full); ``counted`` ones count as forwarded."""
        await self.queue.put((event, counted))

    async def send_loop(self, client: Any) -> None:
        """Send queued events through ``client`` in order, retrying each until it goes (forever)."""
        backoff = self._backoff
        while True:
            event, counted = await self.queue.get()
            try:
                while True:
                    try:
                        await client.emit(event)
                        break
                    except Exception as exc:
                        self.stats.send_errors += 1
                        delay = backoff.next_delay()
                        logger.warning(
                            "could not send %s to Prefect (%s); retrying in %.1fs",
                            event.event,
                            exc,
                            delay,
                        )
                        await asyncio.sleep(delay)
                backoff.reset()
                if counted:
                    self.stats.forwarded += 1
                    logger.debug("forwarded %s %s id=%s", event.event, event.resource.id, event.id)
            finally:
                self.queue.task_done()

    async def drain(self, sender: asyncio.Task[None]) -> None:
        """Let ``sender`` (the :meth:`send_loop` task) empty the queue, then cancel it."""
        if not sender.done():
            try:
                await within(self.queue.join(), self.drain_timeout)
            except asyncio.TimeoutError:
                logger.warning(
                    "gave up sending %d events to Prefect after %.0fs",
                    self.queue.qsize(),
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
