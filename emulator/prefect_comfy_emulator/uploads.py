"""Inputs and models of the shared state: created, filled (multipart, PUT + complete, or a real
download), then ``ready`` or ``failed`` after ``upload_duration``, with their events.

A mixin of `EmulatorState` (kept apart for size): it uses the
state's ids, records, bus, config and task spawner.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from prefect_comfy_emulator.records import UploadRecord, now_iso

if TYPE_CHECKING:
    from prefect_comfy_emulator.bus import EventBus
    from prefect_comfy_emulator.config import EmulatorConfig
    from prefect_comfy_emulator.records import IdFactory

UPLOAD_URL_LIFETIME = timedelta(hours=1)


class UploadsMixin:
    ids: IdFactory
    uploads: dict[str, UploadRecord]
    bus: EventBus
    config: EmulatorConfig
    secret: bytes

    def _spawn(self, coro: Any) -> None:  # provided by EmulatorState
        raise NotImplementedError

    # ---- inputs and models -----------------------------------------------------------------
    def new_upload(
        self, owner: str, kind: str, origin: str, name: str, status: str, **fields: Any
    ) -> UploadRecord:
        record = UploadRecord(
            id=self.ids.new("inp" if kind == "input" else "mod"), kind=kind, owner=owner, name=name,
            status=status, origin=origin, created_at=now_iso(), **fields,
        )  # fmt: skip
        self.uploads[record.id] = record
        return record

    def accept_bytes(self, record: UploadRecord, data: bytes, mime_type: str | None) -> None:
        """Bytes arrived (multipart or PUT + complete): ``uploading`` now, ``ready`` after upload_duration."""
        record.data = data
        record.size = len(data)
        record.mime_type = mime_type or record.mime_type or "application/octet-stream"
        record.status = "uploading"
        self._spawn(self._settle(record, None))

    def start_download(self, record: UploadRecord, url: str) -> None:
        self._spawn(self._download(record, url))

    async def _download(self, record: UploadRecord, url: str) -> None:
        error = None
        try:
            async with httpx.AsyncClient(timeout=self.config.download_timeout) as client:
                answer = await client.get(url, follow_redirects=True)
            if answer.status_code >= 400:
                error = f"HTTP {answer.status_code} while downloading from URL"
            else:
                record.data = answer.content
                record.size = len(answer.content)
                ctype = answer.headers.get("content-type", "application/octet-stream")
                record.mime_type = ctype.split(";")[0].strip()
        except httpx.HTTPError as exc:
            error = f"download failed: {type(exc).__name__}"
        await self._settle(record, error and {"code": "download_failed", "message": error})

    async def _settle(self, record: UploadRecord, error: dict[str, Any] | None) -> None:
        await asyncio.sleep(self.config.upload_duration)
        if self.uploads.get(record.id) is not record:
            return
        record.status = "failed" if error else "ready"
        record.error = error
        self.bus.publish(record.owner, f"{record.kind}.{record.status}", record.wire(self.secret))

    def fail_upload(self, record: UploadRecord, code: str, message: str) -> None:
        record.status = "failed"
        record.error = {"code": code, "message": message}
        self.bus.publish(record.owner, f"{record.kind}.failed", record.wire(self.secret))

    def new_presigned(self, record: UploadRecord) -> None:
        record.upload_token = self.ids.token()
        record.upload_expires_at = datetime.now(UTC) + UPLOAD_URL_LIFETIME

    def upload_by_token(self, token: str) -> UploadRecord | None:
        for record in self.uploads.values():
            if record.upload_token == token:
                return record
        return None
