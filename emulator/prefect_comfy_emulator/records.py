"""The emulator's resources (jobs, inputs/models, outputs) and how each looks on the wire."""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from prefect_comfy_emulator.config import STORAGE_PREFIX


def now_iso() -> str:
    """The current UTC time in ISO 8601 with a ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class IdFactory:
    """Prefixed ids (``job_…``) that are never the same twice, not even across emulator runs.

    Like the real service's, ids are unique across runs: Prefect stores an event id once, and the
    project's event ids derive from resource ids, so an emulator restarted on the same port and seed
    must not hand out the ids of the last run (its events would be dropped as duplicates). The seed
    still makes tokens and images reproducible; ``unique=False`` makes ids reproducible too, for
    unit tests of the generator. It is not reseeded by a reset.
    """

    def __init__(self, seed: int | None, *, unique: bool = True) -> None:
        self._rng = random.Random(seed)
        self._id_rng = random.Random(f"{seed}:{secrets.token_hex(16)}") if unique else self._rng
        self._issued: set[str] = set()

    def new(self, prefix: str) -> str:
        while True:
            value = f"{prefix}_{self._id_rng.getrandbits(64):016x}"
            if value not in self._issued:
                self._issued.add(value)
                return value

    def token(self, nbytes: int = 24) -> str:
        return self._rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()


def sign(secret: bytes, path: str) -> str:
    """The ``sig`` of a storage path."""
    return hmac.new(secret, path.encode("utf-8"), hashlib.sha256).hexdigest()[:40]


def storage_path(kind: str, resource_id: str, name: str) -> str:
    return f"{STORAGE_PREFIX}/{kind}/{resource_id}/{quote(name, safe='')}"


def signed_url(origin: str, secret: bytes, kind: str, resource_id: str, name: str) -> str:
    path = storage_path(kind, resource_id, name)
    return f"{origin}{path}?sig={sign(secret, path)}"


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


@dataclass(eq=False)
class OutputRecord:
    id: str
    job_id: str
    owner: str
    name: str
    data: bytes
    origin: str
    tags: list[str]
    created_at: str
    type: str = "image"
    mime_type: str = "image/png"
    node_id: str = ""

    def wire(self, secret: bytes) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "mime_type": self.mime_type,
            "size": len(self.data),
            "download_url": signed_url(self.origin, secret, "outputs", self.id, self.name),
            "job_id": self.job_id,
            "tags": list(self.tags),
            "created_at": self.created_at,
        }


@dataclass(eq=False)
class JobRecord:
    id: str
    owner: str
    workflow: dict[str, Any]
    tags: list[str]
    origin: str
    created_at: str
    batch_id: str | None = None
    status: str = "pending"
    progress: float = 0.0
    started_at: str | None = None
    completed_at: str | None = None
    error: dict[str, Any] | None = None
    outputs: list[OutputRecord] = field(default_factory=list)
    cancel_requested: bool = False
    cancel_requests: int = 0  # every cancel asked for, answered or refused (test controls read it)
    metadata: dict[str, str] = field(default_factory=dict)
    """Labels given on the v2 face (``metadata``); the v1 face neither shows nor sets them."""
    asset_ids: list[str] = field(default_factory=list)
    """The v2 assets its workflow referred to (``core/ASSET``)."""
    live: dict[str, Any] = field(default_factory=dict)
    """Where a running job is (node, step, node counts), for the v2 face's progress snapshots."""

    def wire(self, secret: bytes) -> dict[str, Any]:
        return _drop_none(
            {
                "id": self.id,
                "status": self.status,
                "workflow": self.workflow,
                "tags": list(self.tags),
                "batch_id": self.batch_id,
                "progress": self.progress,
                "outputs": [o.wire(secret) for o in self.outputs],
                "error": self.error,
                "created_at": self.created_at,
                "started_at": self.started_at,
                "completed_at": self.completed_at,
            }
        )


@dataclass(eq=False)
class UploadRecord:
    """An input or a model (``kind``), whatever way its bytes arrive."""

    id: str
    kind: str
    owner: str
    name: str
    status: str
    origin: str
    created_at: str
    tags: list[str] = field(default_factory=list)
    mime_type: str | None = None
    size: int | None = None
    data: bytes | None = None
    error: dict[str, Any] | None = None
    model_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] | None = None
    upload_token: str | None = None
    upload_expires_at: datetime | None = None

    def wire(self, secret: bytes) -> dict[str, Any]:
        ready = self.status == "ready"
        body = {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "size": self.size,
            "mime_type": self.mime_type,
            "tags": list(self.tags),
            "download_url": signed_url(self.origin, secret, self.kind + "s", self.id, self.name)
            if ready
            else None,
            "error": self.error,
            "created_at": self.created_at,
        }
        if self.kind == "model":
            body.update(type=self.model_type, metadata=dict(self.metadata), source=self.source)
        return _drop_none(body)
