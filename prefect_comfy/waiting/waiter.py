"""One pending wait: what the hub knows of it, and how its events reach the waiting loop.

The hub runs on its own loop; a wait may run on any other. `Waiter.deliver` is called on the
hub's loop and hands the event over through the wait loop's one `Mailbox` (in order: one FIFO per
loop, woken once per batch, not once per event), so the future is resolved, and progress callbacks
run, on the wait's own loop. A waiter is small on
purpose (``__slots__``, the progress queue made only for waits that asked for progress): the hub
holds one per pending wait.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from prefect_comfy.backends.base import ProgressCallback
from prefect_comfy.models import TERMINAL_EVENTS, ComfyEvent
from prefect_comfy.waiting.loop import Mailbox, mailbox_of

__all__ = ["Waiter"]

logger = logging.getLogger(__name__)


class Waiter:
    """One call of `EventHub.wait`."""

    __slots__ = ("ended", "future", "inbox", "kind", "on_progress", "outbox", "pump", "resource_id")

    def __init__(
        self,
        kind: str,
        resource_id: str,
        future: asyncio.Future[ComfyEvent],
        loop: asyncio.AbstractEventLoop,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.kind = kind
        self.resource_id = resource_id
        self.future = future
        self.outbox: Mailbox = mailbox_of(loop)
        """The mailbox of the loop the wait runs on (where the future and the callbacks live)."""
        self.on_progress = on_progress
        self.inbox: asyncio.Queue[ComfyEvent] | None = None
        self.pump: asyncio.Task[None] | None = None
        self.ended = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the wait runs on."""
        loop = self.outbox.loop
        assert loop is not None
        return loop

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.resource_id)

    # -- called on the hub's loop ---------------------------------------------------------------
    def deliver(self, event: ComfyEvent) -> None:
        """Hand an event over (progress only to a wait with a callback); the first terminal one ends it."""
        if self.ended:
            return
        terminal = event.event in TERMINAL_EVENTS
        if not terminal and self.on_progress is None:
            return
        if terminal:
            self.ended = True
        self._send(self._accept, event)

    def fail(self, exc: BaseException) -> None:
        """End the wait with an error."""
        if self.ended:
            return
        self.ended = True
        self._send(_set_exception, self.future, exc)

    def _send(self, callback: Callable[..., None], *args: Any) -> None:
        # At once on the wait's own loop; from the hub's thread, queued and drained in batches
        # (a closed loop drops it: nobody waits there any more).
        self.outbox.call(callback, *args)

    # -- called on the wait's loop --------------------------------------------------------------
    def _accept(self, event: ComfyEvent) -> None:
        if self.on_progress is None:
            if not self.future.done():
                self.future.set_result(event)
            return
        if self.inbox is None:
            self.inbox = asyncio.Queue()
            self.pump = asyncio.ensure_future(self._pump())
        self.inbox.put_nowait(event)

    async def _pump(self) -> None:
        assert self.inbox is not None
        while True:
            event = await self.inbox.get()
            if event.event in TERMINAL_EVENTS:
                if not self.future.done():
                    self.future.set_result(event)
                return
            try:
                result = self.on_progress(event)  # type: ignore[misc]
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("on_progress callback for Comfy job %s failed", self.resource_id)

    def close(self) -> None:
        """The wait returned or was cancelled (on the wait's loop)."""
        self.ended = True
        if self.pump is not None and not self.pump.done():
            self.pump.cancel()
        if not self.future.done():
            self.future.cancel()


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
