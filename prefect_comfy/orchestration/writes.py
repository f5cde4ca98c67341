"""The final artifact writes of each event loop, off the waiting path: bounded, latest wins.

A wait that ends hands its last writes (the final progress value, the outputs artifact) to its
loop's `ArtifactWrites` and returns at once: 200 waits in one flow once took 3x as long with the
artifacts as without, because each awaited its own writes to a busy Prefect API (issue 21,
section 4). The writes go out `FINAL_WRITES_IN_FLIGHT` at a time, only the latest of each artifact
key, each in the context (flow and task run) of the code that handed it over; the Prefect tasks
wait for their job's writes at their end (`flush_artifact_writes`, bounded by
`ARTIFACT_FLUSH_TIMEOUT`), so none is lost when the run ends.

Example:
    >>> async def main():
    ...     written = []
    ...
    ...     async def write(value):
    ...         written.append(value)
    ...
    ...     writes = artifact_writes()
    ...     writes.submit("comfy-job-1", lambda: write(50))
    ...     writes.submit("comfy-job-1", lambda: write(100))  # replaces 50: not started yet
    ...     await flush_artifact_writes(["comfy-job-1"])
    ...     return written
    >>> asyncio.run(main())
    [100]
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

__all__ = [
    "ARTIFACT_FLUSH_TIMEOUT",
    "FINAL_WRITES_IN_FLIGHT",
    "ArtifactWrites",
    "artifact_writes",
    "flush_artifact_writes",
]

logger = logging.getLogger(__name__)

FINAL_WRITES_IN_FLIGHT = 4
"""Most final writes (last progress value, outputs artifact) in flight at once per event loop."""
ARTIFACT_FLUSH_TIMEOUT = 60.0
"""Longest a task waits at its end for its job's final artifact writes (`flush_artifact_writes`)."""


class ArtifactWrites:
    """The final artifact writes of one event loop, off the waiting path: bounded, latest wins.

    `submit` hands over a write (a coroutine function) under its artifact key and returns at
    once. At most ``in_flight`` writes run at a time; a write submitted under a key whose earlier
    write has not started yet replaces it (only the latest value of a key is sent). Each write
    runs in the context of its submitter (its flow and task run). `flush` waits, bounded, until the
    given keys' writes are done. A write's own errors are its to log: one that raises is logged
    here and never reaches the waits.

    Args:
        in_flight: most writes running at once.
    """

    def __init__(self, in_flight: int = FINAL_WRITES_IN_FLIGHT) -> None:
        self._slots = asyncio.Semaphore(in_flight)
        self._latest: dict[str, Callable[[], Awaitable[Any]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.written = 0
        """Writes run so far (replaced ones not counted)."""

    def submit(self, key: str, write: Callable[[], Awaitable[Any]]) -> None:
        """Write ``write()`` soon under ``key`` (replacing a write of the key not started yet)."""
        self._latest[key] = write
        task = self._tasks.get(key)
        if task is None or task.done():
            task = asyncio.ensure_future(self._run(key))  # the submitter's context is copied
            self._tasks[key] = task
            task.add_done_callback(lambda done, key=key: self._done(key, done))

    def _done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]

    async def _run(self, key: str) -> None:
        async with self._slots:
            while key in self._latest:  # what was submitted while this one ran goes out too
                write = self._latest.pop(key)
                self.written += 1
                try:
                    await write()
                except Exception as exc:
                    logger.warning("Artifact %s not written: %r", key, exc)

    @property
    def pending(self) -> int:
        """Keys whose writes are queued or running."""
        return len(self._tasks)

    async def flush(self, keys: Iterable[str] | None = None, timeout: float | None = None) -> bool:
        """Wait until the writes of ``keys`` (all by default) are done, at most ``timeout`` s.

        Returns whether they all were; a cancel of the caller stops only the waiting.
        """
        wanted = list(self._tasks) if keys is None else list(keys)
        tasks = {self._tasks[k] for k in wanted if k in self._tasks}
        if not tasks:
            return True
        _, left = await asyncio.wait(tasks, timeout=timeout)
        return not left


_loop_writes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ArtifactWrites] = (
    weakref.WeakKeyDictionary()
)


def artifact_writes() -> ArtifactWrites:
    """The `ArtifactWrites` of the running loop (made on first use)."""
    loop = asyncio.get_running_loop()
    writes = _loop_writes.get(loop)
    if writes is None:
        writes = _loop_writes[loop] = ArtifactWrites()
    return writes


async def flush_artifact_writes(
    keys: Iterable[str] | None = None, timeout: float | None = None
) -> bool:
    """Wait (at most ``timeout`` s, `ARTIFACT_FLUSH_TIMEOUT` by default) until the final artifact
    writes of ``keys`` (every pending one by default) on the running loop are done.

    ``watch_comfy_job`` returns before its final artifacts are written; the Prefect tasks call this
    for their job at their end. Call it before ending an event loop of your own that ran
    ``watch_comfy_job``. Returns whether every write was done in time (a late one is logged).
    """
    writes = _loop_writes.get(asyncio.get_running_loop())
    if writes is None:
        return True
    limit = ARTIFACT_FLUSH_TIMEOUT if timeout is None else timeout
    done = await writes.flush(keys, limit)
    if not done:
        logger.warning("Some Comfy artifacts were not written within %gs; going on", limit)
    return done
