"""Prefect events of prefect-comfy: their names, resources and ids, in one place.

Every Comfy event becomes a Prefect event named ``comfy.<comfy event>`` (``job.completed`` →
``comfy.job.completed``); the sensor adds ``comfy.job.submitted`` and ``comfy.job.timed-out``, and the
listener ``comfy.listener.heartbeat``. The primary resource is ``comfy.<kind>.<id>`` with labels
``prefect.resource.name``, ``comfy.backend``, ``comfy.status``, ``comfy.tags`` (comma-joined) and
``comfy.tag.<tag>`` = ``"true"`` for each tag. Related resources: the flow run (and task run) that
submitted the job.

Event ids are deterministic: uuid5 over the backend's address, the event name, the resource id and what
distinguishes the occurrence (a progress value; nothing for an outcome, which happens once). So the same
Comfy event emitted twice, by the sensor and by the listener, or again after a reconnect, is stored once.
The outcome of a job with a UUID id (ComfyUI's prompt ids, reused by comfy-api-proxy) leaves the
address out, so it is one event whichever server address saw it.

``docs/events.md`` is checked against `EVENT_NAMES` by the test suite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from prefect.events import Event, RelatedResource, Resource

from prefect_comfy.models import ComfyEvent

PREFIX = "comfy"
NAMESPACE = uuid.UUID("8f0c6d1e-3d1c-5a0e-9a53-2f6b1f0c0a11")
"""uuid5 namespace of every event id this package emits. Never change it: ids would stop matching."""

JOB_SUBMITTED = "comfy.job.submitted"
JOB_PROGRESS = "comfy.job.progress"
JOB_COMPLETED = "comfy.job.completed"
JOB_FAILED = "comfy.job.failed"
JOB_CANCELLED = "comfy.job.cancelled"
JOB_LOST = "comfy.job.lost"
JOB_TIMED_OUT = "comfy.job.timed-out"
INPUT_READY = "comfy.input.ready"
INPUT_FAILED = "comfy.input.failed"
MODEL_READY = "comfy.model.ready"
MODEL_FAILED = "comfy.model.failed"
LISTENER_HEARTBEAT = "comfy.listener.heartbeat"

EVENT_NAMES: dict[str, str] = {
    JOB_SUBMITTED: "A job was accepted by the Comfy server (emitted by `submit_comfy_job`).",
    JOB_PROGRESS: "Execution progress, coalesced per job and interval (payload `progress`, 0-100).",
    JOB_COMPLETED: "The job finished; payload `outputs` lists its files.",
    JOB_FAILED: "The job failed; payload `error` has the Comfy `code`, `message` and `node_id`.",
    JOB_CANCELLED: "The job was cancelled.",
    JOB_LOST: "The server no longer knows the job (a ComfyUI restart): it was lost, not cancelled; "
    "submitting it again may succeed (payload `error.code` is `lost`).",
    JOB_TIMED_OUT: "A wait for the job timed out (the sensor's own event; payload `timeout`).",
    INPUT_READY: "An uploaded input is ready to be used by name.",
    INPUT_FAILED: "An input upload failed; payload `error`.",
    MODEL_READY: "An uploaded model is ready to be used by name.",
    MODEL_FAILED: "A model upload failed; payload `error`.",
    LISTENER_HEARTBEAT: "The listener is alive; label `comfy.connected` says if its stream is up.",
}
"""Every event name this package emits, with what it means (the docs' event reference)."""

NEVER_THROTTLED: frozenset[str] = frozenset(EVENT_NAMES) - {JOB_PROGRESS, LISTENER_HEARTBEAT}

FLOW_RUN_TAG_PREFIX = "prefect.flow-run."
"""A Comfy job tagged ``prefect.flow-run.<uuid>`` was submitted by that flow run."""


def prefect_event_name(comfy_event: str) -> str:
    """``job.completed`` → ``comfy.job.completed`` (unknown names are kept, behind the prefix)."""
    return f"{PREFIX}.{comfy_event}"


def resource_id(kind: str, comfy_id: str) -> str:
    """``("job", "job_abc")`` → ``comfy.job.job_abc``."""
    return f"{PREFIX}.{kind}.{comfy_id}"


def event_id(address: str, event: str, resource: str, occurrence: str = "") -> uuid.UUID:
    """The deterministic id of one occurrence of an event about a resource on a server.

    An outcome (no ``occurrence``) of a resource whose Comfy id is a UUID leaves the address out:
    such an id names one job wherever it is seen from. comfy-api-proxy reuses ComfyUI's prompt id
    as its job id, so a ComfyUI listener and a v2 flow on the same ComfyUI see one job through two
    addresses, and its end must be one event. Short ids (``job_1``) are only unique per server.

    Example:
        >>> job = "comfy.job.0b6e8f4e-8d52-4d3e-9a3b-5d1c2e7f9a10"
        >>> event_id("http://a", "comfy.job.completed", job) == event_id(
        ...     "http://b", "comfy.job.completed", job)
        True
    """
    if not occurrence and _is_uuid(resource.rpartition(".")[2]):
        address = ""
    return uuid.uuid5(NAMESPACE, "\x1f".join((address, event, resource, occurrence)))


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def occurrence_of(comfy_event: ComfyEvent) -> str:
    """What distinguishes one occurrence of this event from another of the same name and resource.

    Outcomes (completed, failed, cancelled, ready) happen once per resource: nothing. Progress: the
    value and where execution stands, so a repeat of the same update is the same event.
    """
    if comfy_event.event.endswith(".progress"):
        p = comfy_event.payload
        return f"{p.get('progress')}|{p.get('node_id')}|{p.get('step')}|{p.get('steps')}"
    return ""


def event_id_of(comfy_event: ComfyEvent, *, address: str) -> uuid.UUID:
    """The id of the Prefect event `from_comfy_event` makes of ``comfy_event`` (without making it).

    Example:
        >>> done = ComfyEvent(event="job.completed", payload={"id": "job_1"})
        >>> event_id_of(done, address="http://a") == from_comfy_event(
        ...     done, address="http://a", backend_kind="cloud").id
        True
    """
    name = prefect_event_name(comfy_event.event)
    resource = resource_id(comfy_event.kind, str(comfy_event.payload.get("id")))
    return event_id(address, name, resource, occurrence_of(comfy_event))


def flow_run_id_from_tags(tags: Iterable[str]) -> str | None:
    """The submitting flow run's id, from a job's tags (see `FLOW_RUN_TAG_PREFIX`)."""
    for tag in tags or ():
        if isinstance(tag, str) and tag.startswith(FLOW_RUN_TAG_PREFIX):
            return tag[len(FLOW_RUN_TAG_PREFIX) :]
    return None


def job_progress_labels(payload: Mapping[str, Any]) -> dict[str, str]:
    """Where a job stands, as resource labels: ``comfy.progress`` (whole percent), ``comfy.node``,
    ``comfy.node-class`` and ``comfy.step`` (``12/20``), each only when the payload says it.

    Example:
        >>> job_progress_labels({"progress": 42.9, "node_id": "3", "node_class": "KSampler",
        ...                      "step": 12, "steps": 20})
        {'comfy.progress': '42', 'comfy.node': '3', 'comfy.node-class': 'KSampler', 'comfy.step': '12/20'}
    """
    labels: dict[str, str] = {}
    progress = payload.get("progress")
    if (
        isinstance(progress, (int, float))
        and not isinstance(progress, bool)
        and progress == progress
    ):
        # Whole percent, rounded down: 99.6 % is not done yet.
        labels["comfy.progress"] = str(int(min(max(progress, 0.0), 100.0)))
    if payload.get("node_id") not in (None, ""):
        labels["comfy.node"] = str(payload["node_id"])
    if payload.get("node_class"):
        labels["comfy.node-class"] = str(payload["node_class"])
    step, steps = payload.get("step"), payload.get("steps")
    # One step is a node without steps: "step 0/1" would say nothing true.
    if step is not None and isinstance(steps, int) and not isinstance(steps, bool) and steps > 1:
        labels["comfy.step"] = f"{step}/{steps}"
    return labels


def job_display_name(name: str, status: str, labels: Mapping[str, str]) -> str:
    """The job's ``prefect.resource.name``: what the Prefect UI shows on each event card.

    ``job_1 · 42% · KSampler step 12/20`` while it runs, ``job_1 · completed · 100%`` at the end,
    ``job_1 · failed · 40% · KSampler step 8/20`` where it stopped.

    Example:
        >>> job_display_name("job_1", "running", {"comfy.progress": "42", "comfy.node-class":
        ...                  "KSampler", "comfy.node": "3", "comfy.step": "12/20"})
        'job_1 · 42% · KSampler step 12/20'
    """
    parts = [name]
    if status and status != "running":
        parts.append(status)
    if "comfy.progress" in labels:
        parts.append(f"{labels['comfy.progress']}%")
    where = job_position(labels)
    if where and status != "completed":
        parts.append(where)
    return " · ".join(parts)


def job_position(labels: Mapping[str, str]) -> str | None:
    """Where a job is, from `job_progress_labels`: ``KSampler step 12/20``, ``node 3``."""
    node = labels.get("comfy.node-class") or (
        f"node {labels['comfy.node']}" if "comfy.node" in labels else ""
    )
    if not node:
        return None
    step = labels.get("comfy.step")
    return f"{node} step {step}" if step else node


def resource_for(
    kind: str,
    payload: Mapping[str, Any],
    *,
    backend_kind: str,
    status: str | None = None,
    name: str | None = None,
) -> Resource:
    """The primary resource of an event about a Comfy job, input or model."""
    comfy_id = str(payload.get("id"))
    tags = [t for t in payload.get("tags") or [] if isinstance(t, str)]
    status = str(status or payload.get("status") or "")
    shown = str(name or payload.get("name") or comfy_id)
    labels: dict[str, str] = {
        "prefect.resource.id": resource_id(kind, comfy_id),
        "prefect.resource.name": shown,
        "comfy.backend": backend_kind,
        "comfy.status": status,
    }
    if kind == "job":
        progress_labels = job_progress_labels(payload)
        labels.update(progress_labels)
        labels["prefect.resource.name"] = job_display_name(shown, status, progress_labels)
    if kind == "model" and payload.get("type"):
        labels["comfy.model-type"] = str(payload["type"])
    user_tags = [t for t in tags if not t.startswith(FLOW_RUN_TAG_PREFIX)]
    if user_tags:
        labels["comfy.tags"] = ",".join(user_tags)
        for tag in user_tags:
            labels[f"comfy.tag.{tag}"] = "true"
    return Resource(labels)


def related_for(
    *,
    flow_run_id: str | None = None,
    task_run_id: str | None = None,
    extra: Sequence[Mapping[str, str]] = (),
) -> list[RelatedResource]:
    """Related resources: the submitting flow run and task run, then anything extra."""
    related: list[RelatedResource] = []
    if flow_run_id:
        related.append(
            RelatedResource(
                {
                    "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                    "prefect.resource.role": "flow-run",
                }
            )
        )
    if task_run_id:
        related.append(
            RelatedResource(
                {
                    "prefect.resource.id": f"prefect.task-run.{task_run_id}",
                    "prefect.resource.role": "task-run",
                }
            )
        )
    related.extend(RelatedResource(dict(r)) for r in extra)
    return related


def from_comfy_event(
    comfy_event: ComfyEvent,
    *,
    address: str,
    backend_kind: str,
    flow_run_id: str | None = None,
    task_run_id: str | None = None,
    occurred: datetime | None = None,
) -> Event:
    """The Prefect event for one Comfy event, with its deterministic id.

    The submitting flow run is taken from the job's tags when not given.
    """
    name = prefect_event_name(comfy_event.event)
    kind = comfy_event.kind
    payload = json_safe(comfy_event.payload)
    resource = resource_for(kind, payload, backend_kind=backend_kind)
    flow_run_id = flow_run_id or flow_run_id_from_tags(payload.get("tags") or [])
    extra = [progress_related(resource)] if kind == "job" and "comfy.progress" in resource else []
    return Event(
        id=event_id_of(comfy_event, address=address),
        event=name,
        occurred=occurred or comfy_event.timestamp or datetime.now(UTC),
        resource=resource,
        related=related_for(flow_run_id=flow_run_id, task_run_id=task_run_id, extra=extra),
        payload=payload,
    )


PROGRESS_ROLE = "comfy-progress"
"""Role of the related resource that says where a job stands (see `progress_related`)."""


def progress_related(resource: Resource) -> dict[str, str]:
    """A related resource whose id reads ``comfy.progress.42% · KSampler step 12/20``.

    The Prefect UI (3.9) shows on an event card the event's name, the primary resource's *id* (not
    its ``prefect.resource.name``) and the related resources, a resource of a role it does not know
    by its id. So where the job stands goes into this id to be seen without opening Raw; the
    primary resource (``comfy.job.<id>``, what triggers match) is unchanged.
    """
    status = resource.get("comfy.status", "")
    parts = [status] if status and status != "running" else []
    parts.append(f"{resource['comfy.progress']}%")
    where = job_position(resource)
    if where and status != "completed":
        parts.append(where)
    return {
        "prefect.resource.id": f"{PREFIX}.progress.{' · '.join(parts)}",
        "prefect.resource.role": PROGRESS_ROLE,
        "prefect.resource.name": resource["prefect.resource.name"],
    }


def json_safe(value: Any) -> Any:
    """A JSON-native copy of a payload (datetimes to ISO strings, tuples to lists, others to str)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
