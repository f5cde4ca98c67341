"""The REST retry loop: jittered exponential backoff within a bounded budget, honouring ``Retry-After``.

What is retried is decided by `prefect_comfy.exceptions.is_retryable` alone (transport errors,
429, 5xx); everything else is raised at once. After the budget the last error is raised.

Example:
    >>> import asyncio
    >>> from prefect_comfy.exceptions import ServerError
    >>> calls = []
    >>> async def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise ServerError("boom", status_code=503)
    ...     return "ok"
    >>> async def no_wait(delay):
    ...     pass
    >>> asyncio.run(RetryPolicy(max_retries=4, sleep=no_wait).call(flaky))
    'ok'
    >>> len(calls)
    3
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import TypeVar

from prefect_comfy.exceptions import ComfyAPIError, RateLimited, is_retryable
from prefect_comfy.transport.backoff import JITTER, Backoff

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_INITIAL_DELAY = 0.5
"""The first pause between two REST attempts, in seconds (doubling from there, with jitter)."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date; ``None`` if absent.

    Example:
        >>> parse_retry_after("2.5"), parse_retry_after(None), parse_retry_after("soon")
        (2.5, None, None)
        >>> parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0)
        6.0
    """
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ComfyAPIError):
        return f"HTTP {exc.status_code}"
    return type(exc).__name__


@dataclass
class RetryPolicy:
    """How many times, and after which pauses, a failed REST call is tried again.

    Attributes:
        max_retries: retries after the first attempt (0 means one attempt only).
        max_delay: the longest pause, also the cap on a server's ``Retry-After``.
        initial_delay: the first backoff pause (then doubling, jittered).
        sleep: the awaitable pause; tests inject one that does not wait.
        rng: the jitter's randomness (seedable; by default ``backoff.JITTER``, one for the process).
    """

    max_retries: int = 4
    max_delay: float = 30.0
    initial_delay: float = DEFAULT_INITIAL_DELAY
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
    rng: random.Random = field(default_factory=lambda: JITTER)

    def delay_for(self, exc: BaseException, backoff: Backoff) -> float:
        """The pause before the next attempt: the server's ``Retry-After`` if any, else the backoff."""
        retry_after = getattr(exc, "retry_after", None) if isinstance(exc, RateLimited) else None
        if retry_after is not None:
            backoff.next_delay()  # keep counting so that a later pause without a hint grows
            return min(float(retry_after), self.max_delay)
        return backoff.next_delay()

    async def call(self, attempt: Callable[[], Awaitable[T]], *, what: str = "request") -> T:
        """Run ``attempt`` until it succeeds, fails for good, or the budget is spent.

        Args:
            attempt: makes one try; it must raise errors of the package's tree.
            what: the method and path, for the INFO line logged before each retry.

        Returns:
            What ``attempt`` returned.

        Raises:
            ComfyError: the first error that is not retryable, or the last one after the budget.
        """
        backoff = Backoff(initial=self.initial_delay, maximum=self.max_delay, rng=self.rng)
        retries = 0
        while True:
            try:
                return await attempt()
            except Exception as exc:
                if not is_retryable(exc) or retries >= self.max_retries:
                    raise
                delay = self.delay_for(exc, backoff)
                retries += 1
                logger.info(
                    "Retrying %s after %s in %.2fs (retry %d of %d)",
                    what,
                    _describe(exc),
                    delay,
                    retries,
                    self.max_retries,
                )
                await self.sleep(delay)
