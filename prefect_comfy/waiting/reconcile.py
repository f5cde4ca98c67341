"""Reconciliation: after every (re)connect, find out over REST what ended while nobody listened.

The stream has no replay. After each connect the hub hands the keys of its pending waits to a
`Reconciler`, which

1. lists the server's unfinished jobs when that costs fewer requests than reading the pending jobs
   one by one (`ComfyBackend.list_unfinished`: the first page says how large the server's
   backlog is, and the listing stops there when reading is cheaper; the other pages are read
   concurrently): a pending job in that list is still running, and the stream will tell how it
   ends. Three waits against 10,000 unfinished jobs thus cost one page and three reads, and N
   waits at most min(N, pages) + 1 requests, plus a read for each job that ended meanwhile;
2. reads the rest one by one (at most ``concurrency`` at a time): jobs missing from the list,
   inputs and models, and every key when the server cannot list;
3. tries a failed list or read again, backed off with jitter up to `RETRY_MAX_DELAY` seconds
   apart, until it succeeds or nobody waits for the key any more (issue 11 item 2: a REST outage
   longer than the client's own retry budget must not leave a wait hanging).

A read that started before a later (re)connect and found the resource unfinished is made again:
it could not see what the lost connection missed.

While the stream is down (reconnecting, or a link that flaps and never stays subscribed), the hub
also asks for `Reconciler.poll_while_down`: every pending key is reconciled again and again,
`DOWN_POLL_INITIAL` seconds after the stream went down, then backed off to at most
`DOWN_POLL_MAX` seconds apart, until the stream is live again or nobody waits. A wait thus
ends within seconds of its job ending even when the stream never stays up (issue 11 item 3).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.exceptions import NotFound
from prefect_comfy.models import Input, Job, Model
from prefect_comfy.transport.backoff import Backoff
from prefect_comfy.transport.deadlines import within

__all__ = ["DOWN_POLL_INITIAL", "DOWN_POLL_MAX", "LIST_THRESHOLD", "RETRY_MAX_DELAY", "Reconciler"]

logger = logging.getLogger(__name__)

Key = tuple[str, str]
Resource = Job | Input | Model

RETRY_INITIAL_DELAY = 0.5
"""The first pause before a failed reconciliation is tried again, seconds."""
RETRY_MAX_DELAY = 10.0
"""The longest pause between two tries of a failed reconciliation, seconds."""
DOWN_POLL_INITIAL = 1.0
"""Seconds after the stream went down before pending keys are read the first time (then backed
off up to `DOWN_POLL_MAX`)."""
DOWN_POLL_MAX = 5.0
"""The longest pause between two reconciliations while the stream is down, seconds."""
READ_TIMEOUT = 60.0
"""Longest wait for one read (the REST client's own retries included); then it is tried again."""
LIST_THRESHOLD = 3
"""From this many pending jobs on, reconciliation lists unfinished jobs instead of reading each."""


class Reconciler:
    """Reads pending resources for a hub (runs on the hub's loop).

    Args:
        backend: where to read.
        pending: whether a key is still waited for.
        epoch: the hub's connection counter (it changes at every connect and disconnect).
        found: called with each resource read (or listed as unfinished).
        missing: called with the `NotFound` of a key.
        concurrency: most single reads in flight at once.
    """

    def __init__(
        self,
        backend: ComfyBackend,
        *,
        pending: Callable[[Key], bool],
        epoch: Callable[[], int],
        found: Callable[[Key, Resource], None],
        missing: Callable[[Key, NotFound], None],
        concurrency: int,
    ) -> None:
        self.backend = backend
        self._pending = pending
        self._epoch = epoch
        self._found = found
        self._missing = missing
        self._limit = asyncio.Semaphore(concurrency)
        self._queue: dict[Key, None] = {}
        self._runner: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._poll_backoff = Backoff(DOWN_POLL_INITIAL, DOWN_POLL_MAX)
        self._down: Callable[[], bool] = lambda: False
        self._down_keys: Callable[[], Iterable[Key]] = tuple
        self.reads = 0
        """Single REST reads made."""
        self.lists = 0
        """Listings of unfinished jobs made (each may be several pages, or stop at the first)."""
        self.list_requests = 0
        """REST requests those listings took (where the backend counts them)."""
        self.seconds = 0.0
        """How long the last reconciliation took, from its first round to nothing left to read."""
        self.polls = 0
        """Reconciliations made while the stream was down."""

    def submit(self, keys: Iterable[Key]) -> None:
        """Reconcile these keys soon: keys that come while a round runs go into the next round, so
        one listing in flight serves every wait (a burst of 10,000 registrations included)."""
        for key in keys:
            self._queue[key] = None
        if self._queue and (self._runner is None or self._runner.done()):
            self._runner = asyncio.ensure_future(self._drain())

    def poll_while_down(self, down: Callable[[], bool], keys: Callable[[], Iterable[Key]]) -> None:
        """Reconcile ``keys()`` repeatedly, backed off, for as long as ``down()`` says the stream
        is not live (and somebody waits); a new call restarts the back-off from its first pause."""
        self._poll_backoff.reset()
        self._down, self._down_keys = down, keys  # a poller already pausing asks these now
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while True:
            await self._poll_backoff.pause()
            if not self._down():
                return
            self.polls += 1
            self.submit(self._down_keys())

    @property
    def busy(self) -> bool:
        """Whether a reconciliation is queued or running."""
        return bool(self._queue) or (self._runner is not None and not self._runner.done())

    async def settled(self) -> None:
        """Wait until nothing is queued or running (a cancel of the caller stops only the waiting)."""
        while self.busy and self._runner is not None:
            await asyncio.shield(self._runner)

    async def aclose(self) -> None:
        """Stop reconciling (the hub is closing)."""
        self._queue.clear()
        for task in (self._runner, self._poller):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _drain(self) -> None:
        started = time.perf_counter()
        try:
            await self._rounds()
        finally:
            self.seconds = time.perf_counter() - started
            logger.debug("reconciled in %.3fs", self.seconds)

    async def _rounds(self) -> None:
        retry = Backoff(RETRY_INITIAL_DELAY, RETRY_MAX_DELAY)
        while self._queue:
            keys = [k for k in self._queue if self._pending(k)]
            self._queue.clear()
            if not keys:
                return
            failed, stale = await self._round(keys)
            for key in (*failed, *stale):
                self._queue[key] = None
            if failed:
                delay = retry.next_delay()
                logger.info(
                    "Could not reconcile %d pending Comfy resource(s); trying again in %.1fs",
                    len(failed),
                    delay,
                )
                await asyncio.sleep(delay)
            elif not stale:
                retry.reset()

    async def _round(self, keys: list[Key]) -> tuple[list[Key], list[Key]]:
        """One try at every key: (keys that failed, keys whose answer predates a reconnect)."""
        failed: list[Key] = []
        stale: list[Key] = []
        jobs = [k for k in keys if k[0] == "job"]
        singles = [k for k in keys if k[0] != "job"]
        if len(jobs) >= LIST_THRESHOLD:
            epoch = self._epoch()
            try:
                # Reading N jobs costs N requests: list only where that costs fewer.
                unfinished = await self.backend.list_unfinished(max_requests=len(jobs))
            except Exception as exc:
                logger.warning("could not list unfinished Comfy jobs to reconcile: %s", exc)
                failed += jobs
            else:
                if unfinished is not None:
                    self.lists += 1
                    self.list_requests += unfinished.requests
                if unfinished is None:
                    singles += jobs
                elif self._epoch() != epoch:
                    stale += jobs  # listed across a reconnect: list again
                else:
                    by_id = {job.id: job for job in unfinished.jobs}
                    for key in jobs:
                        job = by_id.get(key[1])
                        if job is None:
                            singles.append(key)  # it ended, or was not listed: read it
                        else:
                            self._found(key, job)
        else:
            singles += jobs
        results = await asyncio.gather(*(self._read(k) for k in singles))
        for key, result in zip(singles, results, strict=True):
            if result == "failed":
                failed.append(key)
            elif result == "stale":
                stale.append(key)
        return failed, stale

    async def _read(self, key: Key) -> str:
        """Read one resource: ``done``, ``failed`` (try again, backed off) or ``stale``."""
        kind, rid = key
        if not self._pending(key):
            return "done"
        async with self._limit:
            if not self._pending(key):
                return "done"
            read = {
                "job": self.backend.get_job,
                "input": self.backend.get_input,
                "model": self.backend.get_model,
            }[kind]
            epoch = self._epoch()
            self.reads += 1
            try:
                resource = await within(read(rid), READ_TIMEOUT)
            except NotFound as exc:
                self._missing(key, exc)
                return "done"
            except Exception as exc:
                logger.warning("could not read Comfy %s %s to reconcile: %s", kind, rid, exc)
                return "failed"
        self._found(key, resource)
        # Unfinished, but read before a later reconnect: read again, it cannot have seen the gap.
        return "done" if resource.is_terminal or self._epoch() == epoch else "stale"
