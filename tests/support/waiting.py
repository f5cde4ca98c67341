"""Waiting on a condition with a deadline: the only way tests synchronise.

Every deadline of the suite is scaled by one factor, ``COMFY_TESTS_TIMEOUT_FACTOR`` (default 1), as
websockets' ``tests/utils.py`` does with ``WEBSOCKETS_TESTS_TIMEOUT_FACTOR``: on a slow or loaded
machine raise the factor instead of widening a deadline. :func:`eventually` scales its own timeout;
any other deadline a test sets goes through :func:`scaled`.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

TIMEOUT_FACTOR = float(os.environ.get("COMFY_TESTS_TIMEOUT_FACTOR", "1") or "1")
"""How much longer than written every deadline of the suite is (``COMFY_TESTS_TIMEOUT_FACTOR``)."""


def scaled(seconds: float) -> float:
    """A deadline of ``seconds``, scaled by :data:`TIMEOUT_FACTOR`."""
    return seconds * TIMEOUT_FACTOR


async def eventually(
    probe: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Call ``probe`` until it returns something truthy; return that, or fail after ``timeout``."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message}; last: {last!r}"
            )
        await asyncio.sleep(interval)


def eventually_sync(
    probe: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """The blocking twin of :func:`eventually`, for sync tests."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message}; last: {last!r}"
            )
        time.sleep(interval)
