"""ComfyUI's answers and WebSocket frames mapped onto the project's models and events, with no I/O.

What maps to what (``docs/comfyui.md`` has the whole table):

- ``/queue`` items and ``/history`` entries → `Job` (``pending``,
  ``running``, ``completed``, ``failed``, ``cancelled``; an interrupt is told apart from an error by
  the last message in ``status.messages``);
- ``/history`` ``outputs`` → `Output` with a ``/api/view`` download URL;
- a refused graph (HTTP 400 with ``node_errors``) → `InvalidWorkflow`;
- ``execution_start``/``execution_cached``/``progress_state``/``executing``/``progress`` frames →
  ``job.progress`` payloads, by `ProgressTracker`
  (its own module, re-exported here).

Tags and the idempotency key of a job live in the prompt's ``extra_data`` under `EXTRA_KEY`;
ComfyUI stores ``extra_data`` with the prompt in ``/queue`` and ``/history``.

Example:
    >>> view_url("http://127.0.0.1:8188", "ok_00001_.png", "", "output")
    'http://127.0.0.1:8188/api/view?filename=ok_00001_.png&subfolder=&type=output'
    >>> model_location("lora/detail.safetensors")
    ('loras', 'detail.safetensors')
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from prefect_comfy.backends.comfyui.progress import PROGRESS_FRAMES as PROGRESS_FRAMES
from prefect_comfy.backends.comfyui.progress import RUNNING_CAP as RUNNING_CAP
from prefect_comfy.backends.comfyui.progress import ProgressTracker as ProgressTracker
from prefect_comfy.exceptions import ComfyConfigError, InvalidWorkflow
from prefect_comfy.models import Job, Output, ResourceError

__all__ = [
    "EXTRA_KEY",
    "MODEL_FOLDERS",
    "ProgressTracker",
    "cancelled_payload",
    "extra_data_for",
    "failed_payload",
    "invalid_workflow",
    "job_from_history",
    "job_from_queue",
    "lost_payload",
    "model_location",
    "outcome_event",
    "outputs_from_history",
    "prompt_record",
    "tags_of",
    "view_url",
]

EXTRA_KEY = "prefect_comfy"
"""The key of the prompt's ``extra_data`` where a submit keeps ``tags`` and ``idempotency_key``."""

MODEL_FOLDERS: dict[str, str] = {
    "checkpoint": "checkpoints",
    "lora": "loras",
    "vae": "vae",
    "controlnet": "controlnet",
    "embedding": "embeddings",
    "upscaler": "upscale_models",
    "clip": "text_encoders",
    "unet": "diffusion_models",
    "diffusion_model": "diffusion_models",
}
"""Model type → the ``models/<folder>`` of a ComfyUI install (ComfyUI 0.3.x names)."""

TERMINAL_FRAMES: frozenset[str] = frozenset(
    {"execution_success", "execution_error", "execution_interrupted"}
)

_NODE_IN_DETAILS = re.compile(r"Node ID '#?([^']+)'")


# -- extra_data: tags and idempotency ----------------------------------------------------------
def extra_data_for(tags: Sequence[str], idempotency_key: str | None) -> dict[str, Any]:
    """The ``extra_data`` a submit sends: ``{"prefect_comfy": {"tags": [...], "idempotency_key"?}}``."""
    ours: dict[str, Any] = {"tags": list(dict.fromkeys(tags))}
    if idempotency_key:
        ours["idempotency_key"] = idempotency_key
    return {EXTRA_KEY: ours}


def tags_of(extra_data: Any) -> list[str]:
    """The tags a submit stored in a prompt's ``extra_data`` (``[]`` for prompts of other clients)."""
    ours = extra_data.get(EXTRA_KEY) if isinstance(extra_data, Mapping) else None
    tags = ours.get("tags") if isinstance(ours, Mapping) else None
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


@dataclass(frozen=True)
class PromptRecord:
    """One queued or finished prompt: ``[number, prompt_id, graph, extra_data, outputs, ...]``."""

    prompt_id: str
    graph: dict[str, Any]
    extra_data: dict[str, Any]

    @property
    def tags(self) -> list[str]:
        return tags_of(self.extra_data)


def prompt_record(item: Any) -> PromptRecord | None:
    """Parse a ``/queue`` item or a ``/history`` entry's ``prompt`` list (``None`` if malformed)."""
    if not isinstance(item, (list, tuple)) or len(item) < 2:
        return None
    graph = item[2] if len(item) > 2 and isinstance(item[2], dict) else {}
    extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
    return PromptRecord(str(item[1]), graph, extra)


# -- outputs -----------------------------------------------------------------------------------
def view_url(origin: str, filename: str, subfolder: str = "", type: str = "output") -> str:
    """The ``/api/view`` URL of a file (ComfyUI serves ``/view`` and ``/api/view``; Comfy Cloud the latter)."""
    query = urlencode(
        {"filename": filename, "subfolder": subfolder or "", "type": type or "output"}
    )
    return f"{origin}/api/view?{query}"


def file_kind(filename: str) -> tuple[str, str | None]:
    """``(type, mime_type)`` of a file by its extension: ``image``, ``video``, ``audio`` or ``file``."""
    mime, _ = mimetypes.guess_type(filename)
    if mime is None and filename.lower().endswith(".webp"):
        mime = "image/webp"
    major = (mime or "").split("/", 1)[0]
    return (major if major in ("image", "video", "audio") else "file"), mime


def outputs_from_history(prompt_id: str, outputs: Any, origin: str) -> list[Output]:
    """Every file in a history entry's ``outputs`` ``{node: {"images": [{filename, subfolder, type}]}}``.

    Lists under any key (``images``, ``gifs``, ``audio`` …) count; entries without a ``filename``
    (text outputs) do not. Ids are ``<prompt_id>:<node>:<subfolder/filename>``. A file of ``type``
    ``temp`` (``PreviewImage`` and other previews, not saved) is ``temporary``.
    """
    found: list[Output] = []
    if not isinstance(outputs, Mapping):
        return found
    for node_id, node_out in outputs.items():
        if not isinstance(node_out, Mapping):
            continue
        for items in node_out.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, Mapping) or not isinstance(item.get("filename"), str):
                    continue
                filename = item["filename"]
                subfolder = str(item.get("subfolder") or "")
                where = item.get("type") or "output"
                kind, mime = file_kind(filename)
                path = f"{subfolder}/{filename}" if subfolder else filename
                found.append(
                    Output(
                        id=f"{prompt_id}:{node_id}:{path}",
                        name=filename,
                        type=kind,
                        temporary=str(where) == "temp",
                        mime_type=mime,
                        download_url=view_url(origin, filename, subfolder, str(where)),
                        job_id=prompt_id,
                    )
                )
    return found


# -- jobs --------------------------------------------------------------------------------------
def _last_outcome_message(entry: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    status = entry.get("status") if isinstance(entry.get("status"), Mapping) else {}
    messages = status.get("messages") if isinstance(status, Mapping) else None
    for message in reversed(messages or []):
        if (
            isinstance(message, (list, tuple))
            and len(message) == 2
            and message[0] in ("execution_error", "execution_interrupted")
        ):
            return message[0], message[1] if isinstance(message[1], dict) else {}
    return None, {}


def error_of(data: Mapping[str, Any]) -> dict[str, Any]:
    """``{code, message, node_id, node_type}`` from an ``execution_error`` frame's data."""
    error = {
        "code": data.get("exception_type") or "execution_error",
        "message": str(data.get("exception_message") or "").strip() or "the prompt failed",
        "node_id": str(data["node_id"]) if data.get("node_id") is not None else None,
        "node_type": data.get("node_type"),
    }
    return {k: v for k, v in error.items() if v is not None}


def job_from_history(prompt_id: str, entry: Mapping[str, Any], origin: str) -> Job:
    """A finished prompt's `Job` from its ``/history`` entry.

    ``status_str`` is ``"error"`` for interrupts too: the last ``execution_interrupted`` or
    ``execution_error`` message decides between ``cancelled`` and ``failed``.
    """
    record = prompt_record(entry.get("prompt"))
    tags = record.tags if record else []
    status = entry.get("status") if isinstance(entry.get("status"), Mapping) else {}
    kind, data = _last_outcome_message(entry)
    status_str = status.get("status_str")
    if kind == "execution_interrupted":
        return Job(id=prompt_id, status="cancelled", tags=tags)
    if kind == "execution_error" or status_str == "error":
        error = error_of(data)
        return Job(
            id=prompt_id,
            status="failed",
            tags=tags,
            error=ResourceError(
                code=error.get("code"), message=error.get("message"), node_id=error.get("node_id")
            ),
        )
    outputs = outputs_from_history(prompt_id, entry.get("outputs"), origin)
    return Job(id=prompt_id, status="completed", tags=tags, outputs=outputs, progress=100.0)


def job_from_queue(prompt_id: str, item: Any, status: str) -> Job:
    """A queued prompt's `Job` (``status`` is ``running`` or ``pending``)."""
    record = prompt_record(item)
    return Job(id=prompt_id, status=status, tags=record.tags if record else [])


def outcome_event(
    prompt_id: str, entry: Mapping[str, Any], origin: str
) -> tuple[str, dict[str, Any]]:
    """``(event name, payload)`` of a finished prompt from its ``/history`` entry.

    ``job.completed`` carries the outputs; ``job.failed`` the error with ``node_type``;
    ``job.cancelled`` the node an interrupt stopped at.
    """
    job = job_from_history(prompt_id, entry, origin)
    kind, data = _last_outcome_message(entry)
    if job.status == "failed":
        return "job.failed", failed_payload(prompt_id, data or {}, job.tags)
    if job.status == "cancelled":
        return "job.cancelled", cancelled_payload(prompt_id, job.tags, data)
    return "job.completed", job.model_dump(mode="json", exclude_none=True)


def failed_payload(prompt_id: str, data: Mapping[str, Any], tags: Sequence[str]) -> dict[str, Any]:
    """The ``job.failed`` payload for an ``execution_error`` frame's data."""
    return {"id": prompt_id, "status": "failed", "error": error_of(data), "tags": list(tags)}


def cancelled_payload(
    prompt_id: str, tags: Sequence[str], data: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``job.cancelled`` payload (``node_id``/``node_type`` where an interrupt stopped it)."""
    payload: dict[str, Any] = {"id": prompt_id, "status": "cancelled", "tags": list(tags)}
    for key in ("node_id", "node_type"):
        if data and data.get(key) is not None:
            payload[key] = str(data[key])
    return payload


# -- refused graphs ----------------------------------------------------------------------------
def invalid_workflow(body: Any) -> InvalidWorkflow:
    """The `InvalidWorkflow` for a ``POST /prompt`` 400 body, one entry per problem.

    Each entry names the node, its ``class_type``, the input (``extra_info.input_name``) and the
    message with its details. A problem without ``node_errors`` (an unknown node class) names the
    node found in ``error.details`` (``Node ID '#1'``).
    """
    body = body if isinstance(body, Mapping) else {}
    error = body.get("error") if isinstance(body.get("error"), Mapping) else {}
    headline = str(error.get("message") or "the workflow is not valid")
    entries: list[dict[str, Any]] = []
    node_errors = body.get("node_errors")
    if isinstance(node_errors, Mapping):
        for node_id, node in node_errors.items():
            node = node if isinstance(node, Mapping) else {}
            for err in node.get("errors") or [{}]:
                err = err if isinstance(err, Mapping) else {"message": str(err)}
                extra = err.get("extra_info") if isinstance(err.get("extra_info"), Mapping) else {}
                field_name = extra.get("input_name")
                message = str(err.get("message") or "invalid")
                details = str(err.get("details") or "")
                if details and details != field_name:
                    message = f"{message}: {details}"
                entry: dict[str, Any] = {
                    "node_id": str(node_id),
                    "class_type": node.get("class_type"),
                    "field": field_name,
                    "message": message,
                    "type": err.get("type"),
                }
                entries.append({k: v for k, v in entry.items() if v is not None})
    if not entries:
        details = str(error.get("details") or "")
        match = _NODE_IN_DETAILS.search(details)
        entry = {"node_id": match.group(1) if match else None, "message": headline}
        if details and not match:
            entry["message"] = f"{headline}: {details}"
        entry["type"] = error.get("type")
        entries.append({k: v for k, v in entry.items() if v is not None})
    code = error.get("type")
    return InvalidWorkflow(
        f"ComfyUI refused the workflow: {headline}" + (f" [{code}]" if code else ""), entries
    )


# -- models ------------------------------------------------------------------------------------
def model_location(model_id: str) -> tuple[str, str]:
    """``(folder, filename)`` of a model id ``"<folder>/<filename>"``; a type name also works as folder.

    Raises:
        ComfyConfigError: the id has no ``/``.
    """
    folder, sep, filename = str(model_id).partition("/")
    if not sep or not folder or not filename:
        raise ComfyConfigError(
            f"a ComfyUI model id is '<folder>/<filename>', such as 'checkpoints/model.safetensors'; "
            f"got {model_id!r}"
        )
    return MODEL_FOLDERS.get(folder, folder), filename


def lost_payload(prompt_id: str, tags: list[str]) -> dict[str, Any]:
    """The payload of ``job.lost``: a prompt ComfyUI forgot (it restarted while the link was down)."""
    return {
        "id": prompt_id,
        "status": "lost",
        "tags": list(tags),
        "error": {
            "code": "lost",
            "message": "ComfyUI no longer has this prompt in its queue or history "
            "(it restarted while the connection was down)",
        },
    }


def finished_at(entry: Any) -> datetime | None:
    """When a ComfyUI history entry's last status message was written (``timestamp`` in ms)."""
    status = entry.get("status") if isinstance(entry, dict) else None
    messages = status.get("messages") if isinstance(status, dict) else None
    for message in reversed(messages or []):
        data = message[1] if isinstance(message, (list, tuple)) and len(message) == 2 else None
        stamp = data.get("timestamp") if isinstance(data, dict) else None
        if isinstance(stamp, (int, float)):
            return datetime.fromtimestamp(stamp / 1000, tz=UTC)
    return None
