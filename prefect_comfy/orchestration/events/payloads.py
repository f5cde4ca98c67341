"""What goes into a Prefect event of this package: scrubbed payloads and the current run's ids.

A payload is JSON-native, without the workflow graph (it can be large and is not an outcome), and
every string in it has secret-looking URL parameters and bearer tokens redacted
(`redact`), so that no API key reaches an event.

Example:
    >>> resource_payload({"id": "job_1", "url": "https://x.invalid/a?api_key=k", "workflow": {}})
    {'id': 'job_1', 'url': 'https://x.invalid/a?api_key=REDACTED'}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect_comfy.models import WireModel
from prefect_comfy.orchestration.events import names
from prefect_comfy.redaction import redact

__all__ = ["resource_payload", "run_context_ids", "scrub"]

_DROPPED_PAYLOAD_KEYS = frozenset({"workflow"})
"""Payload fields left out of events: a workflow graph can be large and is not an outcome."""


def run_context_ids() -> tuple[str | None, str | None]:
    """``(flow_run_id, task_run_id)`` of the current Prefect run, ``None`` outside one."""
    from prefect.context import FlowRunContext, TaskRunContext

    task_ctx = TaskRunContext.get()
    flow_ctx = FlowRunContext.get()
    task_run_id = str(task_ctx.task_run.id) if task_ctx else None
    flow_run_id = None
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        flow_run_id = str(flow_ctx.flow_run.id)
    elif task_ctx is not None and task_ctx.task_run.flow_run_id:
        flow_run_id = str(task_ctx.task_run.flow_run_id)
    return flow_run_id, task_run_id


def scrub(value: Any) -> Any:
    """A JSON-native copy with secret-looking URL parameters and bearer tokens redacted."""
    value = names.json_safe(value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in _DROPPED_PAYLOAD_KEYS}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def resource_payload(resource: WireModel | Mapping[str, Any]) -> dict[str, Any]:
    """The event payload for a job, input or model: its fields, JSON-native, without the workflow."""
    data = resource.model_dump(mode="json") if isinstance(resource, WireModel) else dict(resource)
    return scrub(data)
