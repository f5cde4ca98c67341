"""What the v2 face keeps beside the shared state: assets over content-addressed blobs, the count
of open SSE streams, and errors injected for the next submissions.

Jobs, outputs and the executor are the shared `EmulatorState`'s;
an asset is also an input of the account (by its ``file_path``), so that ``LoadImage`` finds it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect_comfy_emulator.config import EmulatorConfig
from prefect_comfy_emulator.records import signed_url
from prefect_comfy_emulator.state import EmulatorState
from prefect_comfy_emulator.v2.errors import STATUS_OF, V2Error
from prefect_comfy_emulator.v2.render import URL_LIFETIME, content_url, iso


def blake3_of(data: bytes) -> str:
    """``blake3:<hex>`` of ``data``, as the contract names blobs."""
    try:
        import blake3
    except ImportError:  # pragma: no cover - blake3 comes with the dev extra and comfy-sdk
        raise V2Error(
            500,
            "upstream_error",
            "the emulator's v2 assets need the blake3 package: pip install blake3",
        ) from None
    return "blake3:" + blake3.blake3(data).hexdigest()


@dataclass(eq=False)
class AssetRecord:
    id: str
    owner: str
    hash: str
    content_type: str
    file_path: str
    tags: list[str]
    created_at: datetime
    expires_at: datetime | None
    input_id: str
    """The shared input record that carries the bytes (``LoadImage`` finds it by name)."""
    created_new: bool = True


@dataclass
class InjectedError:
    """The next ``remaining`` v2 requests under ``path`` get ``code`` (and its contract status)."""

    code: str
    remaining: int
    retry_after: float | None = None
    path: str = "/jobs"
    method: str = "POST"

    def error(self) -> V2Error:
        headers = {}
        if self.retry_after is not None:
            value = self.retry_after
            headers["Retry-After"] = str(int(value)) if float(value).is_integer() else str(value)
        return V2Error(STATUS_OF[self.code], self.code, f"{self.code} (injected)", headers=headers)


@dataclass
class V2Face:
    state: EmulatorState
    assets: dict[str, AssetRecord] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    blob_owners: dict[str, set[str]] = field(default_factory=dict)
    streams_open: int = 0
    streams_refused: int = 0
    streams_peak: int = 0
    injected: list[InjectedError] = field(default_factory=list)

    @property
    def config(self) -> EmulatorConfig:
        return self.state.config

    def reset(self) -> None:
        self.assets.clear()
        self.blobs.clear()
        self.blob_owners.clear()
        self.injected.clear()
        self.streams_refused = 0
        self.streams_peak = self.streams_open

    def stats(self) -> dict[str, Any]:
        return {
            "streams_open": self.streams_open,
            "streams_peak": self.streams_peak,
            "streams_refused": self.streams_refused,
            "assets": len(self.assets),
        }

    # ---- injected errors -------------------------------------------------------------------
    def take_injected(self, method: str, relative_path: str) -> V2Error | None:
        for item in self.injected:
            if item.method == method and relative_path.startswith(item.path):
                item.remaining -= 1
                if item.remaining <= 0:
                    self.injected.remove(item)
                return item.error()
        return None

    # ---- assets ----------------------------------------------------------------------------
    def owns_blob(self, owner: str, digest: str) -> bool:
        return owner in self.blob_owners.get(digest, set())

    def store_blob(self, owner: str, data: bytes) -> tuple[str, bool]:
        """Keep bytes under their blake3; ``True`` when they were new to the emulator."""
        digest = blake3_of(data)
        new = digest not in self.blobs
        self.blobs.setdefault(digest, data)
        self.blob_owners.setdefault(digest, set()).add(owner)
        return digest, new

    def mint(
        self,
        owner: str,
        digest: str,
        content_type: str,
        file_path: str,
        tags: list[str],
        expires_in: int | None,
        created_new: bool,
    ) -> AssetRecord:
        """A new asset over a stored blob, and the ready input that carries it."""
        data = self.blobs[digest]
        upload = self.state.new_upload(
            owner, "input", "", file_path, "ready", tags=list(tags), mime_type=content_type,
            size=len(data), data=data,
        )  # fmt: skip
        now = datetime.now(UTC)
        asset = AssetRecord(
            id=str(uuid.UUID(bytes=hashlib.sha256(self.state.ids.new("ast").encode()).digest()[:16], version=4)),
            owner=owner, hash=digest, content_type=content_type, file_path=file_path,
            tags=list(tags), created_at=now,
            expires_at=now + timedelta(seconds=expires_in) if expires_in else None,
            input_id=upload.id, created_new=created_new,
        )  # fmt: skip
        self.assets[asset.id] = asset
        return asset

    def same_reference(self, owner: str, digest: str, file_path: str | None) -> AssetRecord | None:
        for asset in self.assets.values():
            if asset.owner == owner and asset.hash == digest and asset.file_path == file_path:
                return asset
        return None

    def asset(self, owner: str, asset_id: str) -> AssetRecord:
        asset = self.assets.get(asset_id)
        if asset is None or asset.owner != owner:
            raise V2Error(404, "not_found", f"asset {asset_id!r} not found")
        return asset

    def delete(self, owner: str, asset_id: str) -> None:
        asset = self.asset(owner, asset_id)
        in_use = [
            job.id
            for job in self.state.jobs.values()
            if job.owner == owner and job.status in ("pending", "running")
            and asset.id in job.asset_ids
        ]  # fmt: skip
        if in_use:
            raise V2Error(409, "asset_in_use", f"asset {asset_id} is used by job {in_use[0]}")
        del self.assets[asset.id]
        self.state.uploads.pop(asset.input_id, None)

    def asset_body(self, asset: AssetRecord, origin: str) -> dict[str, Any]:
        return {
            "id": asset.id,
            "hash": asset.hash,
            "size_bytes": len(self.blobs[asset.hash]),
            "content_type": asset.content_type,
            "file_path": asset.file_path,
            "created_new": asset.created_new,
            "created_at": iso(asset.created_at),
            "url": content_url(origin, asset.id),
            "url_expires_at": iso(datetime.now(UTC) + URL_LIFETIME),
            "expires_at": iso(asset.expires_at) if asset.expires_at else None,
            "job_id": None,
        }

    def content_location(self, owner: str, asset_id: str, storage_origin: str) -> str:
        """The signed storage URL of an asset's or an output's bytes (the 302's ``Location``)."""
        output = self.state.outputs.get(asset_id)
        secret = self.state.secret
        if output is not None and output.owner == owner:
            return signed_url(storage_origin, secret, "outputs", output.id, output.name)
        asset = self.asset(owner, asset_id)
        upload = self.state.uploads[asset.input_id]
        return signed_url(storage_origin, secret, "inputs", upload.id, upload.name)
