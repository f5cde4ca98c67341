"""Waiting on a server without a global stream: per-job streams in capped slots, one shared poll.

Comfy API v2 has no account-wide event stream, only one stream per job
(`ComfyBackend.job_events`), and servers
cap how many are open (429 ``too_many_streams``). For such a backend
(``capabilities.per_job_streams`` and not ``global_event_stream``) the hub hands its pending
resources to one `JobStreams`, which

- opens a stream for each pending job while fewer than `JobStreams.cap` are open (the cap
  starts at ``COMFY_MAX_STREAMS``, default 8, and is learned: a refusal lowers it to the streams
  open at that moment, moves the job to the shared REST read, and no new stream is tried before
  the refusal's ``retry_after``, held between `REFUSAL_FLOOR` and `REFUSAL_CEILING`);
- follows every other pending resource in ONE shared, backed-off REST loop (0.5 s apart, x1.5 per
  quiet round up to 5 s, back to 0.5 s when a polled job changed status): where the server lists
  its unfinished jobs (`ComfyBackend.list_unfinished`), a round is ONE listing, not a read per job,
  and only a polled job missing from it (it ended) is read; elsewhere each is read. A resource new
  to the loop is looked at at once; inputs and models end on that first read;
- gives the streams to the jobs closest to their end (`nearness`): a freed slot to the polled job
  with the most progress, and a running polled job takes a queued streamed job's stream;
- follows a stream that ends without a terminal event with ONE read, then streams or polls the job
  again.

Stream events go to the hub's ``dispatch`` (progress reaches ``on_progress`` exactly as from a
global stream), reads to ``found``. A terminal event from ``job_events`` is trusted: the backend
confirms it with a read before yielding it. docs/architecture.md ("Servers without a global
stream") tells the whole story.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.exceptions import ComfyProtocolError, NotFound, TooManyStreams
from prefect_comfy.models import TERMINAL_EVENTS, ComfyEvent
from prefect_comfy.transport.backoff import Backoff
from prefect_comfy.waiting.nearness import Nearness
from prefect_comfy.waiting.reconcile import Resource

__all__ = [
    "DEFAULT_MAX_STREAMS",
    "POLL_FACTOR",
    "POLL_INITIAL",
    "POLL_MAX",
    "JobStreams",
    "per_job_mode",
]

logger = logging.getLogger(__name__)

Key = tuple[str, str]

DEFAULT_MAX_STREAMS = 8
"""Streams tried at most at once when ``COMFY_MAX_STREAMS`` is not set."""
POLL_INITIAL = 0.5
"""Seconds between the shared poll's rounds after a change (comfy-sdk's ``Job.wait`` schedule)."""
POLL_FACTOR = 1.5
"""How much the pause grows after a round in which nothing changed."""
POLL_MAX = 5.0
"""The longest pause between two rounds, seconds."""
REFUSAL_PAUSE = 5.0
"""Seconds before a new stream is tried after a refusal without ``Retry-After``."""
REFUSAL_FLOOR = 1.0
"""The shortest pause after a refusal, whatever ``Retry-After`` says (0, negative or NaN would
otherwise retry the stream in a tight loop and never let the job's REST read happen)."""
REFUSAL_CEILING = 60.0
"""The longest pause after a refusal (``Retry-After: 1e9`` must not block new streams for good;
the refused jobs are read over REST meanwhile)."""
REOPEN_DELAY = 0.5
"""Seconds before a job whose stream ended early (and was read once) is streamed or polled again."""
FAILURES_BEFORE_POLLING = 3
"""Streams in a row that fail before yielding anything, after which only the poll is used."""
SWAP_GRACE = 2.0
"""Seconds after a stream was given up for another during which a refusal keeps the cap."""
SWAP_RETRY = 0.05
"""Seconds before a new stream is tried after such a refusal."""


def per_job_mode(backend: ComfyBackend) -> bool:
    """Whether the hub waits on this backend with per-job streams and the shared poll."""
    caps = backend.capabilities
    return bool(getattr(caps, "per_job_streams", False)) and not caps.global_event_stream


class JobStreams:
    """The per-job streams and the shared poll of one hub (runs on the hub's loop).

    Args:
        backend: the hub's backend.
        pending: whether a key is still waited for.
        dispatch: called with every event of a stream.
        found: called with every resource read.
        missing: called with the `NotFound` of a key.
        broken: called with the `ComfyProtocolError` of a read that the server answered
            with something that is not the resource (the wait fails at once; default: ``missing``).
        max_streams: the cap to start from.
        concurrency: most REST reads in flight at once.
    """

    def __init__(
        self,
        backend: ComfyBackend,
        *,
        pending: Callable[[Key], bool],
        dispatch: Callable[[ComfyEvent], None],
        found: Callable[[Key, Resource], None],
        missing: Callable[[Key, NotFound], None],
        broken: Callable[[Key, ComfyProtocolError], None] | None = None,
        max_streams: int = DEFAULT_MAX_STREAMS,
        concurrency: int = 16,
    ) -> None:
        self.backend = backend
        self._pending = pending
        self._dispatch = dispatch
        self._found = found
        self._missing = missing
        self._broken = broken or missing
        self.cap = max(1, max_streams)
        """Streams tried at most at once (lowered by refusals)."""
        self._streams: dict[Key, asyncio.Task[None]] = {}
        self._connected: set[Key] = set()  # streams that the server accepted (one event or more)
        self._polled: dict[Key, None] = {}  # in order: the oldest moves to a stream first
        self._fresh: dict[Key, None] = {}  # polled but never read: read without waiting a round
        self._status: dict[Key, str] = {}
        self._near = Nearness()  # who gets a stream: the jobs closest to their end
        self._list_pages = 1  # what the last listing of unfinished jobs cost (0: cannot list)
        self._listed_at = float("-inf")
        self._blocked_until = 0.0
        self._swapped_at = float("-inf")  # when a stream was last given up for a closer job
        self._failures = 0
        self._streaming = True
        self._poller: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._resting: dict[Key, asyncio.TimerHandle] = {}  # streams ended early, read once
        self._limit = asyncio.Semaphore(concurrency)
        self.streams_opened = 0
        """Streams opened so far."""
        self.most_streams = 0
        """The most streams that were open at once."""
        self.refusals = 0
        """``TooManyStreams`` answers so far."""
        self.reads = 0
        """REST reads made (the poll's and the one after a stream that ended early)."""
        self.rounds = 0
        """Full rounds of the shared poll."""
        self.lists = 0
        """Listings of the unfinished jobs the shared poll made."""
        self.list_requests = 0
        """REST requests those listings took (a page each)."""
        self.preempted = 0
        """Streams given up to a polled job closer to its end."""

    @property
    def open_streams(self) -> int:
        """Streams open now."""
        return len(self._streams)

    @property
    def polled(self) -> int:
        """Resources the shared poll reads now."""
        return len(self._polled)

    @property
    def stats(self) -> dict[str, int]:
        """Counters for the hub's `stats`."""
        return {
            "job_streams_open": len(self._streams),
            "job_streams_opened": self.streams_opened,
            "job_streams_most": self.most_streams,
            "job_streams_cap": self.cap,
            "job_streams_refused": self.refusals,
            "polled": len(self._polled),
            "poll_reads": self.reads,
            "poll_rounds": self.rounds,
            "poll_lists": self.lists,
            "poll_list_requests": self.list_requests,
            "job_streams_preempted": self.preempted,
        }

    # -- what the hub calls ---------------------------------------------------------------------
    def track(self, keys: Iterable[Key]) -> None:
        """Start following these pending resources: on a stream if a slot is free, else polled."""
        for key in keys:
            if key in self._streams or key in self._polled or key in self._resting:
                continue
            if not self._pending(key):
                continue
            self._near.arrived(key)
            if key[0] == "job" and self._slot_free():
                self._open(key)
            else:
                self._poll(key, fresh=True)

    def forget(self, key: Key) -> None:
        """Nobody waits for this resource any more: close its stream or stop polling it."""
        task = self._streams.pop(key, None)
        if task is not None:
            task.cancel()
        self._polled.pop(key, None)
        self._fresh.pop(key, None)
        self._status.pop(key, None)
        self._near.forget(key)
        rest = self._resting.pop(key, None)
        if rest is not None:
            rest.cancel()
        self._fill()

    async def serve(self, on_connect: Callable[[], Awaitable[None]]) -> AsyncIterator[ComfyEvent]:
        """What the hub runs in place of ``events()``: "connected" at once, then nothing until
        closed (events reach the hub through ``dispatch``); closing it closes every stream."""
        try:
            await on_connect()
            await asyncio.Event().wait()
        finally:
            await self.aclose()
        yield  # pragma: no cover - an async generator that yields nothing

    async def aclose(self) -> None:
        """Close every stream and stop the poll."""
        tasks = [*self._streams.values(), *([self._poller] if self._poller else [])]
        self._streams.clear()
        self._connected.clear()
        self._polled.clear()
        self._fresh.clear()
        self._poller = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for rest in self._resting.values():
            rest.cancel()
        self._resting.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- slots ----------------------------------------------------------------------------------
    def _slot_free(self) -> bool:
        if not self._streaming or len(self._streams) >= self.cap:
            return False
        return asyncio.get_running_loop().time() >= self._blocked_until

    def _open(self, key: Key) -> None:
        self._polled.pop(key, None)
        self._fresh.pop(key, None)
        self.streams_opened += 1
        self._streams[key] = asyncio.ensure_future(self._follow(key))
        self.most_streams = max(self.most_streams, len(self._streams))

    def _fill(self) -> None:
        """Move the polled jobs closest to their end onto streams while slots are free."""
        while self._polled and self._slot_free():
            waiting = [k for k in self._polled if k[0] == "job"]
            for key in waiting:
                if not self._pending(key):
                    self._polled.pop(key, None)
            waiting = [k for k in waiting if k in self._polled]
            if not waiting:
                return
            self._open(max(waiting, key=self._near.rank))

    def _rebalance(self) -> None:
        """Give the stream of a streamed job that is only queued to a polled job that runs (the
        queued one is polled until a slot is free again)."""
        self._fill()
        while self._streams and self._polled and self._streaming:
            polled = [k for k in self._polled if k[0] == "job" and self._pending(k)]
            if not polled:
                return
            swap = self._near.swap(polled, list(self._streams))
            if swap is None:
                return
            best, worst = swap
            task = self._streams.pop(worst)
            task.cancel()
            self.preempted += 1
            self._swapped_at = asyncio.get_running_loop().time()
            self._poll(worst, fresh=False)
            self._open(best)

    def _refused(self, key: Key, exc: TooManyStreams) -> None:
        self.refusals += 1
        loop = asyncio.get_running_loop()
        if loop.time() < self._swapped_at + SWAP_GRACE:
            # A stream given up for this one may not be closed on the server yet: that says
            # nothing about the cap. Try again in a moment (the job is polled meanwhile).
            self._blocked_until = max(self._blocked_until, loop.time() + SWAP_RETRY)
            if self._timer is None:
                self._timer = loop.call_at(self._blocked_until, self._unblocked)
            return
        others = len(self._connected)  # the streams the server holds for us now
        if others < self.cap:
            self.cap = max(1, others)
            logger.info("The Comfy server caps event streams; holding at most %d", self.cap)
        pause = REFUSAL_PAUSE if exc.retry_after is None else float(exc.retry_after)
        pause = REFUSAL_FLOOR if pause != pause else min(REFUSAL_CEILING, max(REFUSAL_FLOOR, pause))
        self._blocked_until = max(self._blocked_until, loop.time() + pause)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(self._blocked_until, self._unblocked)

    def _unblocked(self) -> None:
        self._timer = None
        self._fill()

    # -- one stream -----------------------------------------------------------------------------
    async def _follow(self, key: Key) -> None:
        """Serve one job's stream; then free its slot (and read once if it ended early)."""
        outcome = await self._stream(key)
        if self._streams.get(key) is asyncio.current_task():
            del self._streams[key]
        if outcome == "ended" and self._pending(key):
            await self._read(key)  # the stream ended without an outcome: ask once, …
            if self._pending(key) and key not in self._resting:
                # … then let it rest, so that a server that keeps ending streams early is not
                # asked in a tight loop; it comes back on a stream if a slot is free, else polled.
                loop = asyncio.get_running_loop()
                self._resting[key] = loop.call_later(REOPEN_DELAY, self._wake_up, key)
        elif outcome == "refused" and self._pending(key) and key not in self._streams:
            self._poll(key, fresh=True)  # it never got its snapshot: read it now
        self._fill()

    def _wake_up(self, key: Key) -> None:
        self._resting.pop(key, None)
        if not self._pending(key) or key in self._streams or key in self._polled:
            return
        if self._slot_free():
            self._open(key)
        else:
            self._poll(key, fresh=False)  # read a moment ago: the next round is soon enough

    async def _stream(self, key: Key) -> str:
        """``terminal``, ``ended`` (no outcome: read once), ``refused`` or ``missing``."""
        events = 0
        stream = self.backend.job_events(key[1])
        try:
            async for event in stream:
                if not events:
                    self._connected.add(key)
                events += 1
                if event.event == "job.progress":
                    value = event.payload.get("progress")
                    self._near.note(
                        key, "running", value if isinstance(value, int | float) else None, None
                    )
                self._dispatch(event)
                if event.event in TERMINAL_EVENTS:
                    self._failures = 0
                    return "terminal"
        except TooManyStreams as exc:
            self._refused(key, exc)
            return "refused"
        except NotFound as exc:
            self._missing(key, exc)
            return "missing"
        except Exception as exc:  # a dropped connection, a 5xx, a surface without streams
            logger.info("Comfy event stream of job %s ended: %s", key[1], exc)
        finally:
            self._connected.discard(key)
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        if events:
            self._failures = 0
        else:
            self._failures += 1
            if self._failures >= FAILURES_BEFORE_POLLING and self._streaming:
                self._streaming = False
                logger.warning(
                    "Comfy per-job event streams keep failing; polling every pending job instead"
                )
        return "ended"

    # -- the shared poll ------------------------------------------------------------------------
    def _poll(self, key: Key, *, fresh: bool) -> None:
        self._polled[key] = None
        if fresh:
            self._fresh[key] = None
        if self._poller is None or self._poller.done():
            self._wake = asyncio.Event()
            self._poller = asyncio.ensure_future(self._poll_loop())
        elif fresh and self._wake is not None:
            self._wake.set()

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        pauses = Backoff(POLL_INITIAL, POLL_MAX, factor=POLL_FACTOR, jitter=False)
        next_round = loop.time() + pauses.next_delay()
        wake = self._wake
        assert wake is not None
        while self._polled:
            if self._fresh:  # first reads at once, without touching the schedule
                keys = list(self._fresh)
                self._fresh.clear()
                await self._read_all(keys)
                continue
            delay = next_round - loop.time()
            if delay > 0:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
                continue
            self.rounds += 1
            changed = await self._read_all(list(self._polled))
            if changed:
                pauses.reset()
            next_round = loop.time() + pauses.next_delay()

    async def _read_all(self, keys: list[Key]) -> bool:
        """One look: a listing where it costs fewer requests than reading these keys, then a read
        of each job missing from it (it ended), input and model; whether any changed status."""
        jobs = [k for k in keys if k[0] == "job" and self._pending(k) and k not in self._streams]
        listed = None
        if self._list_pages and len(jobs) > self._list_pages:
            # A listing looks at every polled job (new ones must not starve the rounds), 2/s at most.
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, self._listed_at + POLL_INITIAL - loop.time()))
            polled = [k for k in self._polled if k[0] == "job" and self._pending(k)]
            listed = await self._list([k for k in polled if k not in self._streams])
            self._listed_at = loop.time()
        if listed is not None:
            keys = [k for k in keys if k[0] != "job"] + listed[1]
        changed = await self._read_each(keys) or (listed is not None and listed[0])
        self._rebalance()
        return changed

    async def _list(self, jobs: list[Key]) -> tuple[bool, list[Key]] | None:
        """List (``len(jobs)`` pages at most): whether one changed, those not listed, or ``None``."""
        try:
            unfinished = await self.backend.list_unfinished(max_requests=len(jobs))
        except Exception as exc:  # the reads below answer, as on a server that cannot list
            logger.info("could not list the unfinished Comfy jobs: %s", exc)
            return None
        if unfinished is None:
            self._list_pages = 0  # this server cannot list: read each polled job from now on
            return None
        self.lists += 1
        self.list_requests += unfinished.requests
        # List again for more polled jobs than this took pages (+1: the budget ran out before the end)
        ran_out = not unfinished.complete and unfinished.requests >= len(jobs)
        self._list_pages = max(1, unfinished.requests) + int(ran_out)
        changed, listed = False, set()
        for job in unfinished.jobs:
            key = ("job", job.id)
            if key not in self._polled and key not in self._streams:
                continue
            listed.add(key)
            created = job.created_at.timestamp() if job.created_at is not None else None
            self._near.note(key, job.status, job.progress, created)
            if key in self._polled:
                changed = self._status.get(key) not in (None, job.status) or changed
                self._status[key] = job.status
                self._found(key, job)
        return changed, [k for k in jobs if k not in listed and k in self._polled]

    async def _read_each(self, keys: list[Key]) -> bool:
        """Read these keys (``concurrency`` at a time); whether any changed status."""
        results = await asyncio.gather(*(self._read(k) for k in keys))
        return any(results)

    async def _read(self, key: Key) -> bool:
        """Read one resource and report it; whether its status changed."""
        if not self._pending(key) or key in self._streams:
            self._polled.pop(key, None)
            return False
        kind, rid = key
        read = {
            "job": self.backend.get_job,
            "input": self.backend.get_input,
            "model": self.backend.get_model,
        }[kind]
        async with self._limit:
            self.reads += 1
            try:
                resource = await read(rid)
            except NotFound as exc:
                self._polled.pop(key, None)
                self._missing(key, exc)
                return True
            except ComfyProtocolError as exc:  # a malformed answer is not retried to the timeout
                self._polled.pop(key, None)
                self._broken(key, exc)  # type: ignore[arg-type]
                return True
            except Exception as exc:
                logger.warning("could not read Comfy %s %s: %s", kind, rid, exc)
                return False
        if resource.is_terminal:
            self._polled.pop(key, None)
            self._fresh.pop(key, None)
        changed = self._status.get(key) != resource.status
        self._status[key] = resource.status
        if kind == "job" and not resource.is_terminal:
            created = resource.created_at
            progress = getattr(resource, "progress", None)
            self._near.note(key, resource.status, progress, created and created.timestamp())
        self._found(key, resource)
        return changed
