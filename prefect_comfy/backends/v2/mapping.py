"""Comfy API v2's wire shapes as the package's models and events: plain code, no I/O.

- `job_of`: a v2 Job as a `Job` (statuses by `STATUS`;
  ``expired`` is ``failed`` with code ``expired``; ``canceling`` is still ``running``, because a
  server may acknowledge a cancel it never performs).
- `progress_payload`: a v2 ``progress`` snapshot (value 0..1) as a ``job.progress`` payload
  (``progress`` 0-100, ``node_id``, ``node_class``, ``step``, ``steps``).
- `SseParser`: Server-Sent Events, line by line (comments are keep-alives).

Example:
    >>> job_of({"id": "j1", "status": "canceling"}).status
    'running'
    >>> job_of({"id": "j1", "status": "expired"}).error.code
    'expired'
    >>> p = SseParser()
    >>> [p.feed(line) for line in ["event: status", 'data: {"status": "running"}', ""]][-1]
    ('status', {'status': 'running'})
"""

from __future__ import annotations

import binascii
import json
from typing import Any

from pydantic import ValidationError

from prefect_comfy.exceptions import ComfyProtocolError
from prefect_comfy.models import (
    MAX_PREVIEW_IMAGE_BYTES,
    ComfyEvent,
    Job,
    Output,
    ResourceError,
    preview_event,
)

__all__ = [
    "preview_of",
    "STATUS",
    "TERMINAL_V2",
    "SseParser",
    "event_of",
    "job_of",
    "matches",
    "metadata_of",
    "output_of",
    "progress_payload",
    "JobProgress",
]

STATUS: dict[str, str] = {
    "queued": "pending",
    "running": "running",
    "canceling": "running",
    "succeeded": "completed",
    "failed": "failed",
    "canceled": "cancelled",
    "expired": "failed",
}
"""v2 status -> the package's job status."""

TERMINAL_V2: frozenset[str] = frozenset({"succeeded", "failed", "canceled", "expired"})


def output_of(raw: dict[str, Any], job_id: str | None = None) -> Output:
    """A v2 Output (an asset) as an `Output`; downloads go through its content route."""
    asset_id = str(raw.get("id") or "")
    return Output(
        id=asset_id,
        type=str(raw.get("type") or "file"),
        name=raw.get("name"),
        mime_type=raw.get("content_type"),
        size=raw.get("size_bytes") or None,
        job_id=raw.get("job_id") or job_id,
        download_url=f"/api/v2/assets/{asset_id}/content" if asset_id else raw.get("url"),
    )


def _error_of(raw: dict[str, Any]) -> ResourceError | None:
    status, error = raw.get("status"), raw.get("error")
    if status == "expired":
        return ResourceError(
            code="expired",
            message="the server says the job expired (its records are gone); run it again",
        )
    if not isinstance(error, dict):
        return (
            ResourceError(code="unknown", message="no error reported")
            if status == "failed"
            else None
        )
    message = str(error.get("message") or "")
    if error.get("class_type"):
        message = f"{message} (class {error['class_type']})".strip()
    node = error.get("node_id")
    return ResourceError(
        code=error.get("code"), message=message, node_id=str(node) if node is not None else None
    )


def _percent(raw: Any) -> float | None:
    if isinstance(raw, dict) and isinstance(raw.get("value"), int | float):
        return round(max(0.0, min(1.0, float(raw["value"]))) * 100.0, 1)
    return None


def job_of(raw: Any) -> Job:
    """A v2 Job (lenient: unknown fields ignored).

    Raises:
        ComfyProtocolError: not a job: not an object, no string ``id``, or fields of the wrong
            type (a malformed answer is an error at once, never a job ``'None'``).

    Example:
        >>> job_of({"id": None, "status": "queued"})
        Traceback (most recent call last):
        ...
        prefect_comfy.exceptions.ComfyProtocolError: Comfy API v2 answered a job without a string 'id': {'id': None, 'status': 'queued'}
    """
    if not isinstance(raw, dict):
        raise ComfyProtocolError(f"Comfy API v2 answered {_cut(raw)} where a job was expected")
    if not isinstance(raw.get("id"), str) or not raw["id"]:
        raise ComfyProtocolError(f"Comfy API v2 answered a job without a string 'id': {_cut(raw)}")
    try:
        return _job_of(raw)
    except (TypeError, AttributeError, ValueError, ValidationError) as exc:
        what = exc.errors()[:1] if isinstance(exc, ValidationError) else exc
        raise ComfyProtocolError(
            f"Comfy API v2 answered a job {raw['id']!r} that does not fit: {_cut(what)}"
        ) from None


def _cut(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:200]}…"


def _job_of(raw: dict[str, Any]) -> Job:
    job_id = str(raw.get("id"))
    metadata = metadata_of(raw)
    status = STATUS.get(str(raw.get("status")), "running")
    return Job(
        id=job_id,
        status=status,
        tags=tags_of(metadata),
        outputs=[output_of(o, job_id) for o in raw.get("outputs") or [] if isinstance(o, dict)],
        error=_error_of(raw),
        progress=100.0 if status == "completed" else _percent(raw.get("progress")),
        created_at=raw.get("created_at"),
        started_at=raw.get("started_at"),
        completed_at=raw.get("completed_at"),
    )


TAG_PREFIX = "tag:"
"""Metadata labels ``tag:<tag> = "1"`` carry the job's tags (v2 filters metadata by equality)."""


def metadata_of(raw: dict[str, Any]) -> dict[str, Any]:
    """A job's metadata as labels: an object (Cloud, the emulator) or the JSON text of one
    (comfy-api-proxy keeps metadata as one opaque string of at most 1,024 bytes)."""
    metadata = raw.get("metadata")
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            return {}
    return metadata if isinstance(metadata, dict) else {}


def matches(raw: dict[str, Any], wanted: dict[str, str]) -> bool:
    """Whether a listed job carries every wanted label (servers that ignore the filter exist)."""
    metadata = metadata_of(raw)
    return all(metadata.get(k) == v for k, v in wanted.items())


def tags_of(metadata: dict[str, Any]) -> list[str]:
    return [k[len(TAG_PREFIX) :] for k in metadata if str(k).startswith(TAG_PREFIX)]


def progress_payload(job_id: str, raw: dict[str, Any]) -> dict[str, Any]:
    """A v2 ``progress`` snapshot as the payload of a ``job.progress`` event."""
    payload: dict[str, Any] = {
        "id": job_id,
        "status": "running",
        "progress": min(99.9, _percent(raw) or 0.0),
    }
    if raw.get("current_node") is not None:
        payload["node_id"] = str(raw["current_node"])
    if raw.get("current_node_class"):
        payload["node_class"] = raw["current_node_class"]
    steps = raw.get("steps")
    # One step is a node without steps: no "step 0/1".
    if raw.get("step") is not None and isinstance(steps, int) and steps > 1:
        payload["step"], payload["steps"] = raw["step"], steps
    return payload


class JobProgress:
    """One job's v2 ``progress`` snapshots as ``job.progress`` payloads that never go back.

    comfy-api-proxy counts only the nodes it has seen (``nodes_done``/``nodes_total`` of the
    ``progress_state`` frames; 0/0 with a step fraction in its ``progress`` frames), so its value
    jumps to 99.9 % after the first node and falls back later, and it names no node classes. Given
    the graph that was submitted (``classes``: node id -> class_type), the percentage is
    100 x (nodes done + the current node's step fraction) / nodes in the graph, and the class is
    filled in. Without it the server's value is used. Either way a lower value than one already
    reported is never reported.

    Example:
        >>> p = JobProgress({"1": "EmptyImage", "2": "KSampler", "3": "SaveImage", "4": "VAEDecode"})
        >>> p.payload("j", {"value": 1.0, "nodes_done": 1, "nodes_total": 1, "current_node": None})["progress"]
        25.0
        >>> later = p.payload("j", {"value": 0.5, "nodes_done": 0, "nodes_total": 0,
        ...                         "current_node": "2", "step": 4, "steps": 8})
        >>> later["progress"], later["node_class"], later["step"], later["steps"]
        (37.5, 'KSampler', 4, 8)
    """

    def __init__(
        self, classes: dict[str, str] | None = None, needs: dict[str, set[str]] | None = None
    ) -> None:
        self.classes = dict(classes or {})
        self.needs = needs or {}
        self.done = 0
        self.reported = 0.0

    def _upstream(self, node: str) -> int:
        """How many nodes ``node`` depends on: all done once it runs (ComfyUI runs a graph in
        dependency order), cached ones included, which the proxy never counts."""
        seen: set[str] = set()
        todo = list(self.needs.get(node, ()))
        while todo:
            one = todo.pop()
            if one not in seen:
                seen.add(one)
                todo.extend(self.needs.get(one, ()))
        return len(seen)

    def payload(self, job_id: str, raw: dict[str, Any]) -> dict[str, Any]:
        payload = progress_payload(job_id, raw)
        total = len(self.classes)
        if isinstance(raw.get("nodes_total"), int) and raw["nodes_total"] > 0:
            self.done = max(self.done, int(raw.get("nodes_done") or 0))
        if payload.get("node_id") is not None:
            self.done = max(self.done, self._upstream(payload["node_id"]))
        if total:
            step, steps = payload.get("step"), payload.get("steps")
            fraction = min(1.0, step / steps) if step is not None and steps else 0.0
            percent = 100.0 * (min(self.done, total) + fraction) / total
        else:
            percent = payload["progress"]
        self.reported = round(min(99.9, max(self.reported, percent)), 1)
        payload["progress"] = self.reported
        node = payload.get("node_id")
        if node is not None and "node_class" not in payload and self.classes.get(node):
            payload["node_class"] = self.classes[node]
        return payload


EVENT_OF_STATUS = {
    "completed": "job.completed",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}


def event_of(job: Job) -> ComfyEvent | None:
    """The terminal event a job in a final state stands for (its payload the job), or ``None``."""
    name = EVENT_OF_STATUS.get(job.status)
    if name is None:
        return None
    return ComfyEvent(event=name, payload=job.model_dump(mode="json", exclude={"workflow"}))


class SseParser:
    """Server-Sent Events, one line at a time: `feed` returns ``(event, data)`` at a blank line.

    ``data`` is decoded JSON (``None`` when it is not JSON); comments (``: keep-alive``) and fields
    other than ``event``/``data`` are skipped.
    """

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, Any] | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._event = "message"
                return None
            text, name = "\n".join(self._data), self._event
            self._event, self._data = "message", []
            try:
                return name, json.loads(text)
            except ValueError:
                return name, None
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None


def preview_of(
    job_id: str, data: dict[str, Any], tags: list[str] | None = None
) -> ComfyEvent | None:
    """A v2 ``preview`` frame ({node_id, content_type, data_base64}) as a ``job.preview`` event;
    ``None`` when it is malformed, too big or not a JPEG/PNG (dropped, never raised)."""
    raw, mime = data.get("data_base64"), data.get("content_type")
    if not isinstance(raw, str) or not isinstance(mime, str):
        return None
    if len(raw) > (MAX_PREVIEW_IMAGE_BYTES * 4) // 3 + 4:  # too big before decoding it
        return None
    try:
        image = binascii.a2b_base64(raw.encode("ascii"), strict_mode=True)
    except (ValueError, UnicodeEncodeError):
        return None
    node = data.get("node_id")
    return preview_event(job_id, image, mime, node_id=str(node) if node else None, tags=tags)
