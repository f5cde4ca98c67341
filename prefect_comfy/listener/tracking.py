"""The Comfy side of the listener's memory: job tags, resources in flight, REST reconciliation.

The Comfy event stream has no replay. `InFlightTracker` remembers (bounded, oldest
forgotten first) the tags last seen for each job and every job and upload last seen in flight;
after a reconnect, `InFlightTracker.reconcile` has the waiting layer's reconciler read those
through REST (listing where it can, retrying what fails) and hands the terminal event that was
missed (synthesised from `prefect_comfy.models.STATUS_EVENT`) to the listener to forward. Job events whose payload has no tags (progress) get the remembered tags,
or those of one REST read of the job, made in the background (`InFlightTracker.tags_soon`).

Example:
    >>> from prefect_comfy.models import ComfyEvent
    >>> tracker = InFlightTracker(backend=None, max_tracked=1_000)  # tracking alone reads nothing
    >>> tracker.track(ComfyEvent(event="job.started", payload={"id": "job_1", "status": "running"}))
    >>> dict(tracker.in_flight)
    {('job', 'job_1'): 'running'}
    >>> tracker.track(ComfyEvent(event="job.completed", payload={"id": "job_1"}))
    >>> dict(tracker.in_flight)
    {}
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.bounded import Bounded as Bounded
from prefect_comfy.exceptions import NotFound
from prefect_comfy.models import (
    JOB_TERMINAL,
    STATUS_EVENT,
    UPLOAD_TERMINAL,
    ComfyEvent,
    Input,
    Job,
    Model,
)
from prefect_comfy.transport.deadlines import within
from prefect_comfy.waiting.reconcile import Reconciler

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_TRACKED",
    "RECONCILE_CONCURRENCY",
    "REST_TIMEOUT",
    "Bounded",
    "InFlightTracker",
]

DEFAULT_MAX_TRACKED = 10_000
"""Jobs and uploads whose tags and in-flight state the listener remembers (oldest forgotten first)."""
RECONCILE_CONCURRENCY = 8
"""REST reads at once while reconciling after a reconnect."""
TAG_LOOKUPS = 8
"""Most REST reads of jobs' tags at once (made in the background, never by the stream's loop)."""
REST_TIMEOUT = 30.0
"""Longest wait for one REST read (reconciliation, tag lookups)."""

_TERMINAL = {"job": JOB_TERMINAL, "input": UPLOAD_TERMINAL, "model": UPLOAD_TERMINAL}


class InFlightTracker:
    """What the listener remembers of one backend's jobs and uploads between events.

    Args:
        backend: read through REST for missing tags and for reconciliation.
        max_tracked: jobs (tags) and jobs and uploads (in flight) remembered.
    """

    def __init__(self, backend: ComfyBackend, max_tracked: int = DEFAULT_MAX_TRACKED) -> None:
        self.backend = backend
        self.tags: Bounded = Bounded(max_tracked)
        """Job id → the tags last seen for it."""
        self.in_flight: Bounded = Bounded(max_tracked)
        """``(kind, id)`` → last status, for jobs and uploads not yet seen to end."""
        self._epoch = 0
        self._missed: list[ComfyEvent] = []
        self._lookups: dict[str, asyncio.Future[object]] = {}
        self._lookup_limit = asyncio.Semaphore(TAG_LOOKUPS)
        self._reconciler = Reconciler(
            backend,
            pending=self.in_flight.__contains__,
            epoch=lambda: self._epoch,
            found=self._found,
            missing=self._missing,
            concurrency=RECONCILE_CONCURRENCY,
        )

    def track(self, comfy_event: ComfyEvent) -> None:
        """Remember a job's tags, and whether the event's job or upload is still in flight."""
        kind, rid = comfy_event.kind, comfy_event.resource_id
        if rid is None or kind not in _TERMINAL:
            return
        tags = comfy_event.payload.get("tags")
        if kind == "job" and isinstance(tags, list):
            self.tags.remember(rid, [t for t in tags if isinstance(t, str)])
        status = comfy_event.payload.get("status")
        if comfy_event.is_terminal or status in _TERMINAL[kind]:
            self.in_flight.pop((kind, rid), None)
        else:
            self.in_flight.remember((kind, rid), status)

    def tags_soon(self, job_id: str) -> asyncio.Future[object] | None:
        """Start reading a job's tags through REST in the background (once per job, at most
        `TAG_LOOKUPS` at a time) unless they are known; return the lookup to await, or
        ``None`` when the tags are known. The stream never waits on it."""
        if job_id in self.tags:
            return None
        lookup = self._lookups.get(job_id)
        if lookup is None:
            lookup = self._lookups[job_id] = asyncio.ensure_future(self._look_up(job_id))
            lookup.add_done_callback(lambda _: self._lookups.pop(job_id, None))
        return lookup

    async def _look_up(self, job_id: str) -> object:
        async with self._lookup_limit:
            return await self.job_tags(job_id)

    async def job_tags(self, job_id: str) -> list[str] | None:
        """The tags last seen for a job, else one REST read of them; ``None`` if that fails."""
        if job_id in self.tags:
            return self.tags.use(job_id)
        try:
            job = await within(self.backend.get_job(job_id), REST_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("could not read the tags of job %s: %s", job_id, exc)
            return None
        self.tags.remember(job_id, list(job.tags))
        return list(job.tags)

    async def reconcile(self, forward: Callable[[ComfyEvent], Awaitable[Any]]) -> int:
        """Read every resource last seen in flight; pass each missed terminal event to ``forward``.

        The reading is the waiting layer's `Reconciler`
        (the one REST reconciler of the package): unfinished jobs listed where the server can list,
        single reads elsewhere, and a failed read tried again, backed off, until it succeeds or the
        resource is no longer in flight. So this returns once every resource is known.

        Returns:
            How many terminal events were synthesised.
        """
        pending = list(self.in_flight)
        if not pending:
            return 0
        self._epoch += 1  # answers of an earlier round predate this reconnect
        self._reconciler.submit(pending)
        await self._reconciler.settled()
        missed, self._missed = self._missed, []
        for comfy_event in missed:
            await forward(comfy_event)
        if missed:
            logger.info("reconciled %d missed terminal events through REST", len(missed))
        return len(missed)

    def _found(self, key: tuple[str, str], resource: Job | Input | Model) -> None:
        kind, _ = key
        name = STATUS_EVENT.get((kind, resource.status))
        if name is None or key not in self.in_flight:
            return  # still in flight, or the live event got there first
        self.in_flight.pop(key, None)
        payload = resource.model_dump(mode="json", exclude_none=True, exclude={"workflow"})
        when = getattr(resource, "completed_at", None)
        self._missed.append(ComfyEvent(event=name, payload=payload, timestamp=when))

    def _missing(self, key: tuple[str, str], exc: NotFound) -> None:
        self.in_flight.pop(key, None)
