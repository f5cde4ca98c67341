"""How the shared records look on the v2 face: Job, Output, Asset and the SSE payloads.

The v2 face shows the same jobs as the v1 face, under v2's names: ``pending`` is ``queued``,
``completed`` is ``succeeded``, ``cancelled`` is ``canceled``, and a running job with a cancel
requested is ``canceling``. Progress is a 0..1 snapshot with node counts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect_comfy_emulator.config import V2_PREFIX
from prefect_comfy_emulator.records import JobRecord, OutputRecord

STATUS_V2 = {
    "pending": "queued",
    "running": "running",
    "completed": "succeeded",
    "failed": "failed",
    "cancelled": "canceled",
}
TERMINAL_V2 = frozenset({"succeeded", "failed", "canceled", "expired"})
RETENTION = timedelta(hours=24)
URL_LIFETIME = timedelta(hours=1)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def status_of(job: JobRecord) -> str:
    if job.status == "running" and job.cancel_requested:
        return "canceling"
    return STATUS_V2[job.status]


def progress_of(job: JobRecord) -> dict[str, Any] | None:
    """The latest progress snapshot (``None`` before the first step)."""
    live = job.live
    if not live:
        return None
    node, step, steps = live.get("node_id"), live.get("step"), live.get("steps")
    return {
        "value": round(job.progress / 100, 4),
        "nodes_done": live.get("nodes_done", 0),
        "nodes_total": live.get("nodes_total", 0),
        "current_node": node,
        "current_node_class": live.get("node_class"),
        "step": step,
        "steps": steps,
        "message": f"{live.get('node_class')} {step}/{steps}" if node else None,
    }


def error_of(job: JobRecord) -> dict[str, Any] | None:
    if job.error is None:
        return None
    node_id = job.error.get("node_id")
    node = job.workflow.get(node_id) if isinstance(node_id, str) else None
    code = job.error.get("code", "execution_error")
    return {
        "code": "node_execution_error" if code == "execution_error" else code,
        "message": job.error.get("message", ""),
        "node_id": node_id,
        "class_type": node.get("class_type") if isinstance(node, dict) else None,
        "traceback": None,
    }


def content_url(origin: str, asset_id: str) -> str:
    return f"{origin}{V2_PREFIX}/assets/{asset_id}/content"


def output_of(output: OutputRecord, origin: str) -> dict[str, Any]:
    return {
        "node_id": output.node_id,
        "name": output.name,
        "type": output.type,
        "content_type": output.mime_type,
        "size_bytes": len(output.data),
        "id": output.id,
        "hash": None,
        "url": content_url(origin, output.id),
        "url_expires_at": iso(datetime.now(UTC) + URL_LIFETIME),
        "job_id": output.job_id,
    }


def job_of(job: JobRecord, origin: str, queue_position: int | None) -> dict[str, Any]:
    """The v2 Job. ``urls`` are server-relative links, as the contract allows."""
    created, started, ended = (
        _parse(t) for t in (job.created_at, job.started_at, job.completed_at)
    )
    assert created is not None
    metrics = {
        "queue_ms": int((started - created).total_seconds() * 1000) if started else None,
        "execution_ms": int((ended - started).total_seconds() * 1000)
        if started and ended
        else None,
    }
    base = f"{V2_PREFIX}/jobs/{job.id}"
    return {
        "id": job.id,
        "status": status_of(job),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "expires_at": iso(created + RETENTION),
        "queue_position": queue_position,
        "progress": progress_of(job),
        "outputs": [output_of(o, origin) for o in job.outputs],
        "error": error_of(job),
        "metrics": metrics,
        "urls": {"self": base, "events": base + "/events", "cancel": base + "/cancel"},
        "metadata": dict(job.metadata),
    }
