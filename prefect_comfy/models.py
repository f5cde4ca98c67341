"""The wire models every kind of server is read into: jobs, inputs, models, outputs and events.

They have the shapes of the Comfy Cloud developer API and are lenient as a client must be (unknown
fields ignored); the ComfyUI and Comfy API v2 backends map their servers' answers onto these same
models. The emulator keeps its own strict models, so that drift between the two shows up in tests.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
UploadStatus = Literal["pending_upload", "uploading", "downloading", "ready", "failed"]

JOB_TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
UPLOAD_TERMINAL: frozenset[str] = frozenset({"ready", "failed"})

MODEL_TYPES: tuple[str, ...] = (
    "checkpoint",
    "lora",
    "vae",
    "controlnet",
    "embedding",
    "upscaler",
    "clip",
    "unet",
    "diffusion_model",
)


class WireModel(BaseModel):
    """Base of the client's models: unknown fields are ignored, known ones validated."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ResourceError(WireModel):
    """Why a job, input or model failed. ``code`` also accepts the ``type`` spelling."""

    code: str | None = None
    message: str | None = None
    node_id: str | None = None

    def __init__(self, **data: Any) -> None:
        if data.get("code") is None and "type" in data:
            data["code"] = data.get("type")
        super().__init__(**data)


class Output(WireModel):
    """One file a job produced.

    ``temporary`` marks a preview that the server did not save (ComfyUI's ``PreviewImage`` writes
    ``type: "temp"`` files, cleared at its next start): downloads leave these out unless asked for.
    """

    id: str
    type: str = "file"
    temporary: bool = False
    download_url: str | None = None
    name: str | None = None
    mime_type: str | None = None
    size: int | None = None
    job_id: str | None = None
    tags: list[str] = Field(default_factory=list)
    created_at: datetime | None = None


class Job(WireModel):
    """A workflow execution."""

    id: str
    status: str
    workflow: dict[str, Any] | None = None
    tags: list[str] = Field(default_factory=list)
    batch_id: str | None = None
    outputs: list[Output] = Field(default_factory=list)
    error: ResourceError | None = None
    progress: float | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the job is completed, failed or cancelled."""
        return self.status in JOB_TERMINAL


class Input(WireModel):
    """A file uploaded for use in workflows (referred to by ``name``)."""

    id: str
    name: str
    status: str
    size: int | None = None
    mime_type: str | None = None
    tags: list[str] = Field(default_factory=list)
    download_url: str | None = None
    error: ResourceError | None = None
    created_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the upload is ready or failed."""
        return self.status in UPLOAD_TERMINAL


class Model(Input):
    """A model file uploaded for use in workflows (referred to by ``name``)."""

    type: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class UploadUrl(WireModel):
    """A presigned upload: PUT the bytes to ``upload_url``, then complete the upload."""

    id: str
    status: str
    upload_url: str
    upload_expires_at: datetime | None = None


class JobBatch(WireModel):
    """The answer to a batch submit."""

    batch_id: str
    jobs: list[Job]


class Page(WireModel):
    """One page of a list call."""

    items: list[Any]
    total: int
    has_more: bool


class WorkflowValidation(WireModel):
    """The answer of ``POST /workflows/validate``."""

    valid: bool
    errors: list[dict[str, Any]] = Field(default_factory=list)


class ComfyEvent(WireModel):
    """One event from the stream: ``event`` is the name (``job.completed``), ``payload`` the resource.

    ``id`` is the server's event id when it sends one (used to drop duplicates).
    """

    event: str
    payload: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None
    timestamp: datetime | None = None

    @property
    def resource_id(self) -> str | None:
        """The id of the job, input or model the event is about."""
        value = self.payload.get("id")
        return str(value) if value is not None else None

    @property
    def kind(self) -> str:
        """``job``, ``input``, ``model`` (the part of the name before the dot)."""
        return self.event.split(".", 1)[0]

    @property
    def is_terminal(self) -> bool:
        """True for an event that ends its resource (completed, failed, cancelled, ready)."""
        return self.event in TERMINAL_EVENTS

    def digest(self) -> bytes:
        """16 bytes that identify the event: its id, or its name and body when it has none.

        De-duplication remembers these, never the payload itself (a body can be megabytes).
        """
        if self.id is not None:
            text = f"id\x1f{self.id}"
        else:
            body = json.dumps(self.payload, sort_keys=True, separators=(",", ":"), default=str)
            text = f"body\x1f{self.event}\x1f{body}"
        return hashlib.blake2b(text.encode(), digest_size=16).digest()


TERMINAL_EVENTS: frozenset[str] = frozenset(
    {
        "job.completed",
        "job.failed",
        "job.cancelled",
        "job.lost",
        "input.ready",
        "input.failed",
        "model.ready",
        "model.failed",
    }
)

PREVIEW_EVENT = "job.preview"
"""A live preview image of a running job (payload ``image``: base64, ``mime_type``, ``size``).

Delivered only to waits whose progress callback asked for them (`with_previews`), never
sent to Prefect as an event."""


MAX_PREVIEW_IMAGE_BYTES = 256 * 1024
"""A live preview image larger than this is dropped, on every backend."""
PREVIEW_IMAGE_TYPES = frozenset({"image/jpeg", "image/png"})
"""The types a live preview may have."""


def preview_event(
    job_id: str,
    image: bytes,
    mime_type: str,
    *,
    node_id: str | None = None,
    tags: list[str] | None = None,
) -> ComfyEvent | None:
    """A ``job.preview`` event, or ``None`` for an image that is empty, too big or of another type."""
    mime = mime_type.split(";", 1)[0].strip().lower()
    if mime not in PREVIEW_IMAGE_TYPES or not image or len(image) > MAX_PREVIEW_IMAGE_BYTES:
        return None
    payload: dict[str, Any] = {
        "id": job_id,
        "status": "running",
        "mime_type": mime,
        "image": base64.b64encode(image).decode("ascii"),
        "size": len(image),
    }
    if node_id is not None:
        payload["node_id"] = str(node_id)
    if tags is not None:
        payload["tags"] = list(tags)
    return ComfyEvent(event=PREVIEW_EVENT, payload=payload)


def with_previews(callback: Any) -> Any:
    """An ``on_progress`` callback that also wants the job's ``job.preview`` events.

    Opt-in, so that a callback written for ``job.progress`` sees only those:
    ``wait_for(backend, "job", job_id, on_progress=with_previews(show))``.
    """
    marked = functools.partial(callback)
    marked.previews = True  # type: ignore[attr-defined]
    return marked


def wants_previews(callback: Any) -> bool:
    """Whether an ``on_progress`` callback was made with `with_previews`."""
    return bool(getattr(callback, "previews", False))


def preview_image(event: ComfyEvent) -> tuple[bytes, str] | None:
    """The image bytes and MIME type of a ``job.preview`` event, or ``None`` for any other event."""
    if event.event != PREVIEW_EVENT:
        return None
    image, mime = event.payload.get("image"), event.payload.get("mime_type")
    if not isinstance(image, str) or not isinstance(mime, str):
        return None
    try:
        return base64.b64decode(image, validate=True), mime
    except ValueError:
        return None


STATUS_EVENT: dict[tuple[str, str], str] = {
    ("job", "completed"): "job.completed",
    ("job", "failed"): "job.failed",
    ("job", "cancelled"): "job.cancelled",
    ("job", "lost"): "job.lost",
    ("input", "ready"): "input.ready",
    ("input", "failed"): "input.failed",
    ("model", "ready"): "model.ready",
    ("model", "failed"): "model.failed",
}
"""The event a resource of a kind in a final status stands for: how REST reconciliation makes events."""
