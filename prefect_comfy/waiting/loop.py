"""The one event loop of the waiting layer: a daemon thread that owns every shared stream.

Prefect runs sync tasks in worker threads, each with an event loop of its own, and async code may
run several loops too. A stream opened in one of those loops could not serve waits in another, so
the process-wide hubs (`EventHub.shared`) live on
this loop instead; a wait in any loop registers here and gets its outcome handed back to its own
loop. A forked child starts a loop of its own on first use.

Example:
    >>> loop = waiting_loop()
    >>> loop.is_running() and loop is waiting_loop()
    True
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from prefect_comfy.transport.threads import start_thread

__all__ = ["Mailbox", "mailbox_of", "waiting_loop"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None


def waiting_loop() -> asyncio.AbstractEventLoop:
    """The running loop of the waiting layer's daemon thread (started on first use)."""
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            started = threading.Event()
            loop.call_soon(started.set)
            start_thread(loop.run_forever, name="prefect-comfy-waiting")
            started.wait()
            _loop, _pid = loop, os.getpid()
        return _loop


class Mailbox:
    """Calls handed to one event loop from any thread, in order, batched.

    From the loop itself a call runs at once. From another thread it is queued, and the loop is
    woken once per batch rather than once per call: 10,000 registrations are then a handful of
    self-pipe writes, not 10,000 (and not 10,000 switches between two threads holding the GIL).

    Args:
        loop: the loop; ``None`` binds it to the loop of the first `call`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def bind(self) -> asyncio.AbstractEventLoop:
        """The loop, bound to the running one if it had none yet."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        return self.loop

    def here(self) -> bool:
        """Whether the running loop (if any) is this mailbox's loop."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def call(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop: now if it is the running one, else soon."""
        loop = self.loop
        assert loop is not None
        if self.here():
            callback(*args)
            return
        self._queue.append((callback, args))
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody is left to run what is queued
            with self._lock:
                self._scheduled = False
                self._queue.clear()

    async def run(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop and wait until it ran."""
        self.bind()
        if self.here():
            callback(*args)
            return
        done = asyncio.get_running_loop().create_future()

        def call_then_signal() -> None:
            try:
                callback(*args)
            finally:
                done.get_loop().call_soon_threadsafe(_set_done, done)

        self.call(call_then_signal)
        await done

    def _drain(self) -> None:
        with self._lock:
            self._scheduled = False
        while self._queue:
            callback, args = self._queue.popleft()
            try:
                callback(*args)
            except Exception:  # one failed call must not strand the rest of the batch
                logger.exception("a call handed to the event loop failed")


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailbox] = (
    weakref.WeakKeyDictionary()
)


def mailbox_of(loop: asyncio.AbstractEventLoop) -> Mailbox:
    """The one `Mailbox` of a loop (made on first use, forgotten with the loop).

    The waiting layer hands every wait's events and outcome to the wait's loop through it, so a
    burst of outcomes for one loop wakes that loop once, not once per wait (issue 21, section 5).
    """
    box = _mailboxes.get(loop)
    if box is None:
        with _lock:
            box = _mailboxes.get(loop)
            if box is None:
                box = _mailboxes[loop] = Mailbox(loop)
    return box


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
