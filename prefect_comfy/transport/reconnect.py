"""The one reconnect loop: open, classify, back off with jitter within a budget, report.

Shaped like ``websockets``' ``async for connection in connect(...)``: the loop yields one
`Attempt` per connection; the body opens and serves the connection inside
``async with attempt:``. When the body ends (the server closed, a read failed, the link went dead),
the attempt records why, the loop reports the loss, pauses and yields the next attempt. A fatal
error (an auth refusal, or whatever ``is_fatal`` says) and a cancellation leave the loop at once.

The budget is spent by a flapping link too: a connection only refills it when it stayed *healthy*
for `HEALTHY_AFTER` seconds (established, and, when it ended as a dead link, proven alive that
long). A server that accepts, confirms the subscription and drops at once (a frame over the size
limit, no answer to pings) therefore ends after ``max_attempts`` reconnects with a
`WebSocketConnectionError` that says what kept failing.

Example:
    >>> async def serve(url):  # doctest: +SKIP
    ...     async for attempt in Reconnect(f"Comfy event stream at {url}", max_attempts=5):
    ...         async with attempt:
    ...             conn = await websockets.connect(url)
    ...             attempt.established()
    ...             async for frame in conn:
    ...                 attempt.alive()
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType

from prefect_comfy.exceptions import WebSocketAuthError, WebSocketConnectionError
from prefect_comfy.transport.backoff import Backoff

__all__ = ["FOREVER", "HEALTHY_AFTER", "Attempt", "ConnectionLost", "DeadLink", "Reconnect"]

logger = logging.getLogger(__name__)

FOREVER = sys.maxsize
"""A reconnect budget that never runs out: the outermost caller that never gives up (the listener)
passes it down to the one loop that reconnects (``events(..., forever=True)``)."""
HEALTHY_AFTER = 10.0
"""Seconds a connection must stay healthy before the reconnect budget is refilled."""
_REASON_CUT = 160


class ConnectionLost(Exception):
    """The server or the network closed the connection (the message says how, never with a key)."""


class DeadLink(Exception):
    """The connection is open but unusable (no pong, no confirmation): drop it and reconnect.

    The link's healthy time is counted up to its last proof of life (`Attempt.alive`), not
    up to now.
    """


def _fatal_by_default(exc: BaseException) -> bool:
    return isinstance(exc, WebSocketAuthError)


class Attempt:
    """One connection of a `Reconnect` loop, used as ``async with attempt:``.

    Inside the block, an `Exception` ends the connection and is recorded (it is not
    raised), unless it is fatal; a fatal error and a cancellation propagate.
    """

    __slots__ = ("_dead", "_fatal", "alive_at", "ended_at", "established_at", "number", "reason")

    def __init__(self, number: int, is_fatal: Callable[[BaseException], bool]) -> None:
        self.number = number
        """1 for the first connection, then counting every reconnect."""
        self.established_at: float | None = None
        self.alive_at: float | None = None
        self.ended_at: float | None = None
        self.reason = "the server closed the connection"
        """Why the connection ended (redacted by the loop's ``describe``)."""
        self._fatal = is_fatal
        self._dead = False

    def established(self) -> None:
        """The connection is usable (subscribed): from now on it may refill the budget."""
        self.established_at = self.alive_at = time.monotonic()

    def alive(self) -> None:
        """The peer proved it is there (a pong, a frame)."""
        self.alive_at = time.monotonic()

    @property
    def was_established(self) -> bool:
        """Whether `established` was called."""
        return self.established_at is not None

    def healthy_for(self, dead: bool) -> float:
        """Seconds the connection was healthy (to the last proof of life when it died as a dead link)."""
        if self.established_at is None:
            return 0.0
        end = self.alive_at if dead else self.ended_at
        return max(0.0, (end or self.established_at) - self.established_at)

    async def __aenter__(self) -> Attempt:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.ended_at = time.monotonic()
        if exc is None:
            return False
        if not isinstance(exc, Exception) or self._fatal(exc):
            return False  # a cancellation, or fatal: the loop ends with it
        self._dead = isinstance(exc, DeadLink)
        self.reason = str(exc) or type(exc).__name__
        return True


class Reconnect:
    """Connections to one endpoint, one after the other, within a reconnect budget.

    Args:
        what: names the endpoint in logs and errors, such as ``"Comfy event stream at wss://…"``;
            it must not hold a key.
        max_attempts: reconnects allowed since the last healthy connection (`FOREVER`: no limit).
        backoff: the pauses (jittered, reset after a healthy connection).
        healthy_after: seconds a connection must stay healthy to refill the budget.
        auto_reconnect: ``False``: the first loss ends the loop.
        is_fatal: errors that end the loop at once (default: `WebSocketAuthError`).
        describe: turns an error into a short text for logs (redact keys there).
        on_disconnect: awaited after an established connection ended, before the pause (and
            before giving up); its exceptions are logged.
    """

    def __init__(
        self,
        what: str,
        *,
        max_attempts: int,
        backoff: Backoff | None = None,
        healthy_after: float = HEALTHY_AFTER,
        auto_reconnect: bool = True,
        is_fatal: Callable[[BaseException], bool] = _fatal_by_default,
        describe: Callable[[str], str] = str,
        on_disconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.what = what
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff()
        self.healthy_after = healthy_after
        self.auto_reconnect = auto_reconnect
        self.is_fatal = is_fatal
        self.describe = describe
        self.on_disconnect = on_disconnect
        self.connections = 0
        """Connections that reached `Attempt.established`."""

    async def __aiter__(self) -> AsyncIterator[Attempt]:
        attempts = 0  # reconnects since the last healthy connection
        failures: Counter[str] = Counter()
        number = 0
        while True:
            number += 1
            attempt = Attempt(number, self.is_fatal)
            yield attempt
            if attempt.ended_at is None:  # the body left without entering or leaving the block
                attempt.ended_at = time.monotonic()
            reason = self.describe(attempt.reason)[:_REASON_CUT]
            if attempt.was_established:
                self.connections += 1
                if self.on_disconnect is not None:
                    try:
                        await self.on_disconnect()
                    except Exception:
                        logger.exception("the on_disconnect hook of the %s failed", self.what)
                if attempt.healthy_for(attempt._dead) >= self.healthy_after:
                    attempts = 0
                    failures.clear()
                    self.backoff.reset()
            failures[reason] += 1
            if not self.auto_reconnect or attempts >= self.max_attempts:
                raise WebSocketConnectionError(self._gone(attempts, failures)) from None
            attempts += 1
            delay = self.backoff.next_delay()
            logger.info(
                "%s lost (%s); reconnecting in %.2fs (attempt %d%s)",
                self.what,
                reason,
                delay,
                attempts,
                "" if self.max_attempts == FOREVER else f" of {self.max_attempts}",
            )
            await asyncio.sleep(delay)

    def _gone(self, attempts: int, failures: Counter[str]) -> str:
        kept = "; ".join(
            f"{text} (x{count})" if count > 1 else text for text, count in failures.most_common(3)
        )
        message = (
            f"{self.what} is gone: {attempts} reconnect attempt(s) failed in a row "
            f"without a connection that stayed healthy for {self.healthy_after:g}s; "
            f"what kept failing: {kept}"
        )
        logger.warning("%s", message)
        return message
