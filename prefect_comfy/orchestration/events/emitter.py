"""Comfy events → Prefect events, within a budget.

A Prefect server stores about 1,000 events a second, so progress is a budget and outcomes are not:

- per job, at most one ``comfy.job.progress`` per ``progress_interval`` (default 1 s); updates in
  between are coalesced (the newest wins) and sent when the interval has passed
  (`ComfyEventEmitter.flush_due`);
- across the whole process, progress events share one budget, `progress_budget` (at most
  ``COMFY_PROGRESS_EVENTS_PER_SECOND`` in any second, default `DEFAULT_PROGRESS_EVENTS_PER_SECOND`,
  read when first needed; `set_progress_events_per_second` changes it). No progress event
  ever goes over it;
- outcomes (``submitted``, ``completed``, ``failed``, ``cancelled``, ``timed-out``, input and model
  ``ready``/``failed``) are never throttled and never dropped. An outcome takes the place of the
  progress still held for its job: it carries where the job stood (``progress``, ``node_id``,
  ``node_class``, ``step``, ``steps``; 100 % for ``completed``), so no progress event is sent just
  before it.

Events are built by `prefect_comfy.orchestration.events.names.from_comfy_event` (deterministic ids) from payloads
scrubbed by `prefect_comfy.orchestration.events.payloads`, with the flow run and task run related explicitly,
and handed to a sink. The default sink, `prefect_event_sink`, queues them on Prefect's events
worker (one connection per process, shared by every wait); a process that emits outside a Prefect run and exits soon after should ``await drain_events()`` first.

Example:
    >>> sent = []
    >>> emitter = ComfyEventEmitter("http://127.0.0.1:8765", "cloud", sink=sent.append)
    >>> event = ComfyEvent(event="job.completed", payload={"id": "job_1", "status": "completed"})
    >>> emitter.outcome(event).event
    'comfy.job.completed'
    >>> [e.resource.id for e in sent]
    ['comfy.job.job_1']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from prefect.events import Event
from prefect.exceptions import EventTooLarge

from prefect_comfy.models import ComfyEvent, Job, ResourceError, WireModel
from prefect_comfy.orchestration.events import names
from prefect_comfy.orchestration.events.budget import (
    DEFAULT_PROGRESS_EVENTS_PER_SECOND,
    PROGRESS_BUDGET_ENV,
    Coalescer,
    ProgressBudget,
    progress_budget,
    set_progress_events_per_second,
)
from prefect_comfy.orchestration.events.payloads import resource_payload as resource_payload
from prefect_comfy.orchestration.events.payloads import run_context_ids as run_context_ids
from prefect_comfy.orchestration.events.payloads import scrub
from prefect_comfy.orchestration.events.sink import drain_events, prefect_event_sink

__all__ = [
    "DEFAULT_PROGRESS_EVENTS_PER_SECOND",
    "DEFAULT_PROGRESS_INTERVAL",
    "PROGRESS_BUDGET_ENV",
    "ComfyEventEmitter",
    "EventSink",
    "ProgressBudget",
    "drain_events",
    "emit_submitted",
    "prefect_event_sink",
    "progress_budget",
    "run_context_ids",
    "set_progress_events_per_second",
]

logger = logging.getLogger(__name__)

DEFAULT_PROGRESS_INTERVAL = 1.0
"""Seconds between two ``comfy.job.progress`` events of one job."""
EventSink = Callable[[Event], Any]
"""Where built events go: a callable that takes one Prefect `Event`."""

Clock = Callable[[], float]

PROGRESS_FIELDS = ("progress", "node_id", "node_class", "step", "steps")
"""Where a job stands: the progress payload fields an outcome takes over from the last progress."""


def _says_done(comfy_event: ComfyEvent) -> bool:
    progress = comfy_event.payload.get("progress")
    return isinstance(progress, (int, float)) and progress >= 100


class ComfyEventEmitter:
    """Turns the Comfy events of one backend into Prefect events, progress within a budget.

    Args:
        address: the backend's `address` (part of
            every event id).
        backend_kind: the ``comfy.backend`` label (``cloud``, ``comfyui``).
        flow_run_id: the flow run related to every event (the submitting run).
        task_run_id: the task run related to every event.
        progress_interval: seconds between two progress events of one job.
        budget: the progress budget; the process-wide `progress_budget` by default.
        sink: where events go; `prefect_event_sink` by default.
        clock: a monotonic clock (tests inject one).

    Not thread-safe: one emitter belongs to one wait (its own event loop); the budget is shared.
    """

    def __init__(
        self,
        address: str,
        backend_kind: str,
        *,
        flow_run_id: str | None = None,
        task_run_id: str | None = None,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
        budget: ProgressBudget | None = None,
        sink: EventSink | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if progress_interval < 0:
            raise ValueError("progress_interval must be >= 0")
        self.address = address
        self.backend_kind = backend_kind
        self.flow_run_id = flow_run_id
        self.task_run_id = task_run_id
        self._budget = budget
        self._sink = sink or prefect_event_sink
        self._clock = clock
        self._held: Coalescer[ComfyEvent] = Coalescer(float(progress_interval), lambda: self.budget)
        self._latest: dict[str, dict[str, Any]] = {}
        """Per job, the newest progress payload seen, sent or not (an outcome takes it over)."""
        self._last_occurrence: dict[str, str] = {}

    @classmethod
    def for_backend(cls, backend: Any, **kwargs: Any) -> ComfyEventEmitter:
        """An emitter for a backend, related to the current flow run and task run (if any)."""
        flow_run_id, task_run_id = run_context_ids()
        kwargs.setdefault("flow_run_id", flow_run_id)
        kwargs.setdefault("task_run_id", task_run_id)
        return cls(backend.address, backend.kind, **kwargs)

    @property
    def progress_interval(self) -> float:
        """Seconds between two progress events of one job."""
        return self._held.interval

    @property
    def budget(self) -> ProgressBudget:
        """The progress budget in use (looked up when first needed)."""
        if self._budget is None:
            self._budget = progress_budget()
        return self._budget

    # -- building ---------------------------------------------------------------------------------
    def build(self, comfy_event: ComfyEvent, *, occurrence: str | None = None) -> Event:
        """The Prefect event for a Comfy event: scrubbed JSON-native payload, ``comfy.status`` set.

        ``occurrence`` overrides what distinguishes this occurrence in the deterministic id.
        """
        payload = scrub(comfy_event.payload)
        if isinstance(payload.get("error"), dict):
            payload["error"] = ResourceError(**payload["error"]).model_dump(mode="json")
        if not payload.get("status"):
            suffix = comfy_event.event.split(".", 1)[-1]
            payload["status"] = "running" if suffix == "progress" else suffix
        fixed = ComfyEvent(
            event=comfy_event.event,
            payload=payload,
            id=comfy_event.id,
            timestamp=comfy_event.timestamp,
        )
        event = names.from_comfy_event(
            fixed,
            address=self.address,
            backend_kind=self.backend_kind,
            flow_run_id=self.flow_run_id,
            task_run_id=self.task_run_id,
        )
        if occurrence is not None:
            event.id = names.event_id(self.address, event.event, event.resource.id, occurrence)
        return event

    def emit(self, event: Event) -> Event:
        """Hand a built event to the sink, unthrottled. A sink error is logged, never raised."""
        try:
            self._sink(event)
        except EventTooLarge:
            raise
        except Exception as exc:  # an event must never fail the wait it reports on
            logger.warning(
                "Could not emit Prefect event %s for %s: %r", event.event, event.resource.id, exc
            )
        return event

    # -- progress ---------------------------------------------------------------------------------
    def progress(self, comfy_event: ComfyEvent) -> bool:
        """Offer a progress update; returns whether it was sent now (else it is held, coalesced)."""
        job_id = comfy_event.resource_id
        if job_id is None:
            return False
        self._latest[job_id] = comfy_event.payload
        if names.occurrence_of(comfy_event) == self._last_occurrence.get(job_id):
            self._held.drop(job_id)  # a repeat of what was sent last: nothing new to say
            return False
        self._held.offer(job_id, comfy_event)
        now = self._clock()
        if _says_done(comfy_event):
            # The outcome follows at once and says 100 % itself: hold this one for an interval.
            self._held.hold(job_id, now + self.progress_interval)
        event, _ = self._held.take(now, job_id)
        if event is None:
            return False
        self._send(job_id, event)
        return True

    def _send(self, job_id: str, event: ComfyEvent) -> None:
        self._last_occurrence[job_id] = names.occurrence_of(event)
        self.emit(self.build(event))

    def next_due(self) -> float | None:
        """Seconds until a held progress update may go out (``None`` when nothing is held)."""
        return self._held.next_due(self._clock(), budget_cap=60.0)

    def flush_due(self) -> int:
        """Send the held updates whose interval has passed, as far as the budget allows."""
        now = self._clock()
        sent = 0
        while (taken := self._held.take(now))[0] is not None:
            event = taken[0]
            self._send(str(event.resource_id), event)
            sent += 1
        return sent

    def flush(self, job_id: str | None = None) -> int:
        """Send the held update of a job (or of all jobs) now, whatever the interval, within the budget.

        For a wait that ends with no outcome to report (it was interrupted): what the budget has no
        room for is dropped. A wait that ends with an outcome does not flush: the outcome says it.
        """
        now = self._clock()
        sent = 0
        for key in self._held.keys() if job_id is None else [job_id]:
            event = self._held.drop(key)
            if event is not None and self.budget.try_acquire():
                self._held.sent(key, now)
                self._send(key, event)
                sent += 1
        return sent

    def _take_over_progress(self, resource_id: str | None, payload: dict[str, Any]) -> None:
        """End a job's progress: its held update is dropped, where it stood goes into ``payload``."""
        latest = None
        if resource_id is not None:
            self._held.end(resource_id)
            self._last_occurrence.pop(resource_id, None)
            latest = self._latest.pop(resource_id, None)
        for key in PROGRESS_FIELDS:
            if payload.get(key) is None and latest and latest.get(key) is not None:
                payload[key] = latest[key]
        if payload.get("status") == "completed":
            payload["progress"] = 100

    # -- outcomes ---------------------------------------------------------------------------------
    def outcome(
        self,
        comfy_event: ComfyEvent,
        *,
        resource: WireModel | Mapping[str, Any] | None = None,
        occurrence: str | None = None,
    ) -> Event:
        """Emit an outcome (never throttled); it takes the place of the job's held progress.

        Args:
            comfy_event: the terminal Comfy event (``job.completed``, ``input.ready`` …).
            resource: the resource as read afterwards (a `Job` with its
                full outputs); its fields complete the event's payload.
            occurrence: overrides what distinguishes this occurrence in the event id.
        """
        payload = scrub(comfy_event.payload)
        if resource is not None:
            # The resource as read after the event is the fuller record (a job's outputs).
            for key, value in resource_payload(resource).items():
                if value not in (None, [], {}) or key not in payload:
                    payload[key] = value
        if comfy_event.kind == "job":
            payload.setdefault("status", comfy_event.event.split(".", 1)[-1])
            self._take_over_progress(comfy_event.resource_id, payload)
        comfy_event = ComfyEvent(
            event=comfy_event.event,
            payload=payload,
            id=comfy_event.id,
            timestamp=comfy_event.timestamp,
        )
        return self.emit(self.build(comfy_event, occurrence=occurrence))

    def timed_out(self, job_id: str, *, timeout: float, last_status: str | None) -> Event:
        """Emit ``comfy.job.timed-out`` (payload ``id``, ``timeout``, ``last_status``, where it stood).

        Its id is unique to the task run (a later wait's time-out is another occurrence).
        """
        payload: dict[str, Any] = {
            "id": job_id,
            "timeout": timeout,
            "last_status": last_status,
            "status": last_status or "unknown",
        }
        self._take_over_progress(job_id, payload)
        event = ComfyEvent(event="job.timed-out", payload=payload)
        return self.emit(self.build(event, occurrence=f"{self.task_run_id or ''}|{timeout}"))


def emit_submitted(
    job: Job,
    backend: Any,
    *,
    flow_run_id: str | None = None,
    task_run_id: str | None = None,
    sink: EventSink | None = None,
) -> Event:
    """Emit ``comfy.job.submitted`` for a job a backend accepted (call it from the submit task).

    The flow run and task run default to the current run's. The payload is the job without its
    workflow graph. An idempotent re-submit of the same job yields the same event id.

    Args:
        job: the job `ComfyBackend.submit` returned.
        backend: the backend (its ``address`` and ``kind``).
        flow_run_id: overrides the related flow run.
        task_run_id: overrides the related task run.
        sink: where the event goes; `prefect_event_sink` by default.
    """
    ctx_flow_run_id, ctx_task_run_id = run_context_ids()
    emitter = ComfyEventEmitter(
        backend.address,
        backend.kind,
        flow_run_id=flow_run_id or ctx_flow_run_id,
        task_run_id=task_run_id or ctx_task_run_id,
        sink=sink,
    )
    payload = resource_payload(job)
    payload["status"] = payload.get("status") or "pending"
    return emitter.emit(emitter.build(ComfyEvent(event="job.submitted", payload=payload)))
