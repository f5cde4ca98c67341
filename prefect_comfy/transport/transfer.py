"""Moving files: uploads (multipart, from a URL, presigned) and streamed downloads.

`Transfers` is the part of `ComfyClient` that moves bytes.
The key rule is the shared session's: the API key goes only to URLs under the API base
(`is_api_url`); a presigned upload URL, a signed
storage URL, or a redirect to one never sees it, whatever its origin. Downloads are the one
streaming download of `prefect_comfy.transport.download`.

Example:
    >>> import asyncio, httpx
    >>> def handler(request):
    ...     return httpx.Response(201, json={"id": "in_1", "name": "cat.png", "status": "ready"})
    >>> async def main():
    ...     async with Transfers("comfyui-doc", "http://127.0.0.1:8765",
    ...                          transport=httpx.MockTransport(handler)) as client:
    ...         return (await client.upload_input(b"...", name="cat.png")).name
    >>> asyncio.run(main())
    'cat.png'
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import uuid
from collections.abc import AsyncIterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from prefect_comfy.exceptions import ComfyConfigError, ComfyProtocolError
from prefect_comfy.models import Input, Model, Output, UploadUrl
from prefect_comfy.transport.download import CHUNK_SIZE, MAX_REDIRECTS
from prefect_comfy.transport.download import download as stream_download
from prefect_comfy.transport.errors import quiet_url
from prefect_comfy.transport.session import M, RestSession, csv, segment

logger = logging.getLogger(__name__)

Source = str | PathLike[str] | bytes
"""An upload: a path to a file, or the bytes themselves (then ``name`` is required)."""

__all__ = ["CHUNK_SIZE", "MAX_REDIRECTS", "Source", "Transfers"]


class Transfers(RestSession):
    """Uploads of inputs and models, and downloads of outputs (see `ComfyClient`)."""

    # -- inputs ---------------------------------------------------------------------------------
    async def upload_input(
        self,
        source: Source,
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Input:
        """Upload a file as an input (``POST /inputs``, multipart); workflows refer to it by ``name``.

        Args:
            source: a path, or bytes (then ``name`` is required).
            name: the name workflows use; defaults to the file's name.
        """
        return await self._upload(
            "inputs", Input, source, name=name, tags=tags, idempotency_key=idempotency_key
        )

    async def create_input_from_url(
        self,
        url: str,
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Input:
        """Have the server fetch an input from a URL (``POST /inputs/from-url``, status ``downloading``)."""
        body = {"url": url, "tags": list(tags), **({"name": name} if name else {})}
        return await self._from_url("inputs", Input, body, idempotency_key)

    async def upload_input_presigned(
        self,
        source: Source,
        *,
        name: str,
        mime_type: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Input:
        """Upload a large input straight to storage: get-upload-url, PUT (no key), complete."""
        return await self._presigned(
            "inputs",
            Input,
            source,
            name=name,
            mime_type=mime_type,
            tags=tags,
            idempotency_key=idempotency_key,
        )

    # -- models ---------------------------------------------------------------------------------
    async def upload_model(
        self,
        source: Source,
        *,
        type: str,
        name: str | None = None,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Model:
        """Upload a model file of a ``type`` (checkpoint, lora …) (``POST /models``, multipart)."""
        fields = {"type": type}
        if metadata:
            fields["metadata"] = json.dumps(metadata)
        return await self._upload(
            "models",
            Model,
            source,
            name=name,
            tags=tags,
            idempotency_key=idempotency_key,
            fields=fields,
        )

    async def create_model_from_url(
        self,
        url: str,
        *,
        type: str,
        name: str | None = None,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Model:
        """Have the server fetch a model from a URL (``POST /models/from-url``)."""
        body: dict[str, Any] = {"url": url, "type": type, "tags": list(tags)}
        if name:
            body["name"] = name
        if metadata:
            body["metadata"] = metadata
        return await self._from_url("models", Model, body, idempotency_key)

    async def upload_model_presigned(
        self,
        source: Source,
        *,
        name: str,
        type: str,
        mime_type: str | None = None,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Model:
        """Upload a large model straight to storage: get-upload-url, PUT (no key), complete."""
        extra: dict[str, Any] = {"type": type}
        if metadata:
            extra["metadata"] = metadata
        return await self._presigned(
            "models",
            Model,
            source,
            name=name,
            mime_type=mime_type,
            tags=tags,
            extra=extra,
            idempotency_key=idempotency_key,
        )

    # -- the three ways up ----------------------------------------------------------------------
    async def _upload(
        self,
        kind: str,
        model: type[M],
        source: Source,
        *,
        name: str | None,
        tags: Sequence[str],
        idempotency_key: str | None,
        fields: dict[str, str] | None = None,
    ) -> M:
        path, payload, filename = _open_source(source, name)
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        form = {"name": filename, **(fields or {})}
        if csv(tags):
            form["tags"] = csv(tags) or ""

        def body(stack: contextlib.ExitStack) -> dict[str, Any]:
            content = payload if path is None else stack.enter_context(open(path, "rb"))  # noqa: SIM115
            return {"files": {"file": (filename, content, mime)}, "data": form}

        data = await self._call(
            "POST", f"/{kind}", body=body, idempotency_key=idempotency_key or str(uuid.uuid4())
        )
        return self._parse(model, data)

    async def _from_url(
        self, kind: str, model: type[M], body: dict[str, Any], key: str | None
    ) -> M:
        data = await self._call(
            "POST", f"/{kind}/from-url", json=body, idempotency_key=key or str(uuid.uuid4())
        )
        return self._parse(model, data)

    async def _presigned(
        self,
        kind: str,
        model: type[M],
        source: Source,
        *,
        name: str,
        mime_type: str | None,
        tags: Sequence[str],
        extra: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> M:
        path, payload, filename = _open_source(source, name)
        size = path.stat().st_size if path is not None else len(payload or b"")
        mime = mime_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        ticket_body = {"name": filename, "mime_type": mime, "size": size, "tags": list(tags)}
        ticket = self._parse(
            UploadUrl,
            await self._call(
                "POST",
                f"/{kind}/get-upload-url",
                json={**ticket_body, **(extra or {})},
                idempotency_key=idempotency_key or str(uuid.uuid4()),
            ),
        )
        upload_url = httpx.URL(self.base_url).join(ticket.upload_url)

        async def put() -> httpx.Response:
            content: Any = payload if path is None else _read_chunks(path)
            headers = {"Content-Type": mime, "Content-Length": str(size)}
            # Never the key: the upload URL is presigned storage, whatever its origin.
            request = self.client.build_request("PUT", upload_url, content=content, headers=headers)
            return await self.send(request, with_key=False)

        await self.retry.call(put, what=f"PUT {quiet_url(upload_url)}")
        data = await self._call("POST", f"/{kind}/{segment(ticket.id)}/complete")
        return self._parse(model, data)

    # -- downloads ------------------------------------------------------------------------------
    async def download(
        self,
        output_or_url: Output | str,
        dest: str | PathLike[str],
        *,
        max_bytes: int | None = None,
        stall_timeout: float | None = None,
    ) -> Path:
        """Stream an output to a file; returns its path.

        Args:
            output_or_url: an `Output` (its ``download_url``; read afresh if missing) or a URL.
            dest: a folder (the file gets a safe form of the output's name inside it, suffixed
                ``name (1).png`` if taken, never overwriting) or a file path (replaced). The bytes
                go to a temporary file beside the target, renamed into place once complete.
            max_bytes: the largest file accepted (default ``COMFY_MAX_DOWNLOAD_BYTES``: none).
            stall_timeout: seconds without a byte before an attempt fails (default
                ``COMFY_DOWNLOAD_STALL_TIMEOUT``, 60).

        The key is sent only if the URL is under the API base; a signed storage URL, or a
        redirect to one, never sees it.

        Raises:
            ResponseTooLarge: the file is over ``max_bytes``.
        """
        if isinstance(output_or_url, Output):
            output = output_or_url
            if not output.download_url:
                output = self._parse(
                    Output, await self._call("GET", f"/outputs/{segment(output.id)}")
                )
            if not output.download_url:
                raise ComfyProtocolError(f"Comfy output {output.id} has no download_url")
            url = httpx.URL(self.base_url).join(output.download_url)
            name = output.name or Path(unquote(url.path)).name or output.id
        else:
            url = httpx.URL(self.base_url).join(str(output_or_url))
            name = Path(unquote(url.path)).name or "download"
        return await stream_download(
            self, url, dest, name, max_bytes=max_bytes, stall_timeout=stall_timeout
        )


def _open_source(source: Source, name: str | None) -> tuple[Path | None, bytes | None, str]:
    """``(path, bytes, name)`` of an upload source; a path is read per attempt, not held in memory."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not name:
            raise ComfyConfigError("Uploading bytes needs a name= for the file")
        return None, bytes(source), name
    path = Path(source)
    if not path.is_file():
        raise ComfyConfigError(f"No file to upload at {str(path)!r}")
    return path, None, name or path.name


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            yield chunk
