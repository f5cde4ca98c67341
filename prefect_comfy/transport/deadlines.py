"""Time limits that never lose a cancellation.

Before Python 3.12, ``asyncio.wait_for`` drops a cancellation that arrives in the same loop turn as
the awaited work finishes: it returns the result as if nothing happened (CPython gh-86296). A loop
that relies on one ``cancel()`` to end (a reporter pump, a keepalive) then runs on, and whoever
awaits it after cancelling it waits for ever. `within` and `wait_event` are the
replacements.

Example:
    >>> async def main(conn):  # doctest: +SKIP
    ...     frame = await within(conn.recv(), 5.0)  # TimeoutError after 5 s
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["bounded", "wait_event", "within"]

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout: float | None) -> T:
    """``await awaitable``, or raise `TimeoutError` after ``timeout`` seconds (``None``: no limit).

    Like ``asyncio.wait_for``, but a cancellation of the caller is always raised.
    """
    if timeout is None:
        return await awaitable
    async with asyncio.timeout(timeout):
        return await awaitable


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set, at most ``timeout`` seconds; whether it was set."""
    try:
        await within(event.wait(), timeout)
    except TimeoutError:
        return event.is_set()
    return True


async def bounded(work: Awaitable[T], timeout: float) -> T:
    """``await work`` for at most ``timeout`` seconds, even if it never gives in to cancellation.

    Unlike `within`, which waits for the cancelled work to end, the work runs as a task of its
    own that is cancelled and *left behind* at the deadline: a Prefect client stuck in its own
    retries or a shielded call cannot hold the caller. A cancellation of the caller cancels the work
    too. For best-effort writes whose caller must go on (the sensor's artifacts).

    Raises:
        TimeoutError: the work did not end in time.
    """
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_forget)
        raise TimeoutError(f"no answer within {timeout:g}s")
    return task.result()


def _forget(task: asyncio.Future[Any]) -> None:
    """Collect what abandoned work ended with, so that asyncio does not report it."""
    if not task.cancelled():
        task.exception()
