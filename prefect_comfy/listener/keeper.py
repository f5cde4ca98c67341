"""Keeping a listener's cursor: restore its memory on start, save it while running, catch up once.

`CursorKeeper` ties a `Cursor` to the listener's memory
(what is in flight, what ended, what waits to be sent) and to its connection state.

Example:
    >>> import asyncio
    >>> from prefect_comfy.listener.cursor import CursorState
    >>> from prefect_comfy.bounded import Bounded
    >>> class Memory:
    ...     description = "memory"
    ...     state = CursorState("http://comfy.test", [("job", "job_1", "running")])
    ...     async def load(self):
    ...         return self.state
    ...     async def save(self, state):
    ...         self.state = state
    >>> in_flight = Bounded(10)
    >>> keeper = CursorKeeper(Memory(), address="http://comfy.test", in_flight=in_flight,
    ...                       ended=Bounded(10), pending=list, connected=lambda: False)
    >>> _ = asyncio.run(keeper.restore())
    >>> dict(in_flight)
    {('job', 'job_1'): 'running'}
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect_comfy.listener.cursor import ENDED_SAVED, SAVE_INTERVAL, Cursor, CursorState

logger = logging.getLogger(__name__)

__all__ = ["CursorKeeper"]


class CursorKeeper:
    """Restores a listener's in-flight memory from a cursor on start, and keeps the cursor saved.

    Args:
        cursor: where the state lives.
        address: the backend's address (a cursor saved for another server is ignored).
        in_flight: the listener's ``(kind, id) -> status`` memory (seeded on restore).
        ended: the listener's memory of resources whose terminal event was queued (seeded on
            restore; saved without those still pending).
        pending: ``(kind, id)`` of the terminal events received but not yet sent to Prefect.
        connected: whether the stream is up now (the watermark only moves while it is).
        interval: seconds between two saves.
    """

    def __init__(
        self,
        cursor: Cursor,
        *,
        address: str,
        in_flight: MutableMapping[tuple[str, str], Any],
        ended: MutableMapping[tuple[str, str], Any],
        pending: Callable[[], Iterable[tuple[str, str]]],
        connected: Callable[[], bool],
        interval: float = SAVE_INTERVAL,
    ) -> None:
        self.cursor = cursor
        self.address = address
        self.in_flight = in_flight
        self.ended = ended
        self.pending = pending
        self.connected = connected
        self.interval = interval
        self.watermark: datetime | None = None
        self.restored_watermark: datetime | None = None
        self.caught_up = False
        """Set once the restored state is reconciled: until then the watermark stays put."""
        self.saves = 0
        self.error: str | None = None
        """Why the last save failed (``None`` while the cursor is saved): the listener then runs
        without durability, and says so in its stats and heartbeats."""
        self._last: dict[str, Any] | None = None

    async def restore(self) -> CursorState | None:
        """Load the cursor and seed ``in_flight`` with it; the state, or ``None`` (none, unusable)."""
        try:
            state = await self.cursor.load()
        except Exception as exc:
            logger.warning(
                "could not read the listener cursor (%s): %s", self.cursor.description, exc
            )
            return None
        if state is None:
            logger.info("no listener cursor yet (%s); starting afresh", self.cursor.description)
            return None
        if state.address != self.address:
            logger.warning(
                "the listener cursor (%s) belongs to %s, not %s: ignored",
                self.cursor.description,
                state.address,
                self.address,
            )
            return None
        for kind, rid, status in state.in_flight:
            self.in_flight.setdefault((kind, rid), status)
        for key in state.ended:
            self.ended.setdefault(key, True)
        self.watermark = self.restored_watermark = state.watermark
        logger.info(
            "listener cursor (%s): %d resources in flight, listening until %s",
            self.cursor.description,
            len(state.in_flight),
            state.watermark.isoformat() if state.watermark else "never",
        )
        return state

    def snapshot(self) -> CursorState:
        """The state to save now."""
        if self.caught_up and self.connected():
            self.watermark = datetime.now(UTC)
        entries = {key: str(status) for key, status in self.in_flight.items()}
        for key in self.pending():
            entries.setdefault(key, "ended")
        ended = [key for key in self.ended if key not in entries]
        return CursorState(
            self.address,
            [(k, r, s) for (k, r), s in entries.items()],
            self.watermark,
            ended[-ENDED_SAVED:],
        )

    async def save(self, *, force: bool = False) -> None:
        """Save the state if it changed (the watermark alone moves it every 30 s), or if ``force``."""
        state = self.snapshot()
        data = state.to_json()
        last = self._last
        same = last is not None and (last["in_flight"], last["ended"]) == (
            data["in_flight"],
            data["ended"],
        )
        missing = getattr(self.cursor, "missing", None)  # optional for a cursor of one's own
        if same and missing is not None and missing():
            logger.warning(
                "the listener cursor (%s) was deleted; re-created it", self.cursor.description
            )
        elif not force and same:
            previous = last["watermark"]
            if previous == data["watermark"] or (
                previous
                and data["watermark"]
                and state.watermark
                and state.watermark - datetime.fromisoformat(previous) < timedelta(seconds=30)
            ):
                return
        await self.cursor.save(state)
        self._last = data
        self.saves += 1

    async def check_writable(self) -> None:
        """Save once at start, so that a state file that cannot be written stops the listener.

        Raises:
            ComfyConfigError: the cursor cannot be saved (the message says where and why).
        """
        from prefect_comfy.exceptions import ComfyConfigError

        try:
            await self.save(force=True)
        except Exception as exc:
            raise ComfyConfigError(
                f"The listener cannot write its cursor ({self.cursor.description}): {exc}. "
                "Fix the folder's permissions, or choose another place with --cursor PATH "
                "(or COMFY_LISTENER_CURSOR); --cursor none runs without one"
            ) from None

    async def save_quietly(self) -> None:
        """Save now, whatever changed; a failure is logged (a stop must go on)."""
        try:
            await self.save(force=True)
        except Exception as exc:
            logger.warning(
                "could not save the listener cursor (%s): %s", self.cursor.description, exc
            )

    async def catch_up(self, backend: Any, **hooks: Any) -> None:
        """After a restart, list what changed since the restored watermark (once per run).

        ``hooks`` go to `prefect_comfy.listener.catchup.catch_up`. A failure is logged and
        the catch-up is tried again after the next (re)connect; until it succeeds, the watermark
        stays where the previous run left it.
        """
        from prefect_comfy.listener.catchup import CATCH_UP_SLACK, catch_up

        if self.restored_watermark is not None:
            since = self.restored_watermark - CATCH_UP_SLACK
            try:
                found = await catch_up(backend, since, **hooks)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("could not list what changed while the listener was down: %s", exc)
                return
            logger.info(
                "caught up since %s: %d terminal events of resources never seen in flight",
                since.isoformat(),
                found,
            )
        self.caught_up = True

    async def run(self) -> None:
        """Save every ``interval`` seconds, forever (a failed save is logged and tried again)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.save(force=self.error is not None)
                if self.error is not None:
                    logger.warning(
                        "the listener cursor is saved again (%s)", self.cursor.description
                    )
                self.error = None
            except Exception as exc:
                if self.error is None:
                    logger.error(
                        "could not save the listener cursor (%s): %s; the listener runs without "
                        "durability until a save succeeds (a restart now would lose what is in "
                        "flight)",
                        self.cursor.description,
                        exc,
                    )
                self.error = f"{self.cursor.description}: {exc}"
