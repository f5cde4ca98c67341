"""Inputs and models on a ComfyUI server: what `ComfyUIBackend`'s upload methods do.

ComfyUI takes input files (``POST /upload/image``) but has no API for model files: they are copied
into the server's ``models/<folder>/`` by hand, and a wait for one lists that folder until the file
appears (the stream's one poll, started by a model watch in the
`ServerMemory`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect_comfy.backends.base import Source
from prefect_comfy.backends.comfyui import mapping
from prefect_comfy.backends.comfyui.http import ComfyUIHttp
from prefect_comfy.backends.comfyui.memory import ServerMemory
from prefect_comfy.exceptions import (
    AuthenticationError,
    ComfyAPIError,
    ComfyConfigError,
    InvalidRequest,
    UploadFailed,
)
from prefect_comfy.models import ComfyEvent, Input, Model

__all__ = ["get_input", "get_model", "no_model_upload", "upload_input"]


async def upload_input(
    http: ComfyUIHttp,
    memory: ServerMemory,
    source: Source,
    *,
    name: str | None,
    tags: Sequence[str],
    overwrite: bool,
) -> Input:
    """Upload an input file; publishes ``input.ready`` (or ``input.failed`` and raises UploadFailed)."""
    if isinstance(source, bytes):
        if not name:
            raise ComfyConfigError("name is required when uploading bytes")
        data = source
    else:
        path = Path(source)
        data = path.read_bytes()
        name = name or path.name
    assert name is not None
    subfolder, _, filename = name.rpartition("/")
    try:
        answer = await http.upload_image(filename, data, subfolder=subfolder, overwrite=overwrite)
    except (InvalidRequest, ComfyAPIError) as exc:
        if isinstance(exc, AuthenticationError):
            raise
        memory.publish(
            ComfyEvent(
                event="input.failed",
                payload={
                    "id": name,
                    "name": name,
                    "status": "failed",
                    "error": {"code": "upload_failed", "message": str(exc)},
                },
            )
        )
        raise UploadFailed(
            "input", name, error_code="upload_failed", error_message=str(exc)
        ) from None
    returned = str(answer.get("name") or filename)
    folder = str(answer.get("subfolder") or "")
    input_id = f"{folder}/{returned}" if folder else returned
    item = Input(
        id=input_id,
        name=input_id,
        status="ready",
        size=len(data),
        tags=list(tags),
        download_url=mapping.view_url(http.origin, returned, folder, "input"),
    )
    memory.publish(
        ComfyEvent(event="input.ready", payload=item.model_dump(mode="json", exclude_none=True))
    )
    return item


async def get_input(http: ComfyUIHttp, input_id: str) -> Input:
    """``ready`` when ``/view?type=input`` serves the file (``NotFound`` when it does not)."""
    subfolder, _, filename = str(input_id).rpartition("/")
    url = mapping.view_url(http.origin, filename, subfolder, "input")
    size = (await http.head(url)).get("Content-Length")
    return Input(
        id=input_id,
        name=input_id,
        status="ready",
        size=int(size) if size and size.isdigit() else None,
        download_url=url,
    )


def no_model_upload(source: Source, *, type: str, name: str | None) -> ComfyConfigError:
    """The error that says where on the server a model file must be copied."""
    folder = mapping.MODEL_FOLDERS.get(type, type)
    shown = name or (Path(source).name if not isinstance(source, bytes) else "<file>")
    return ComfyConfigError(
        f"ComfyUI has no API to upload models: copy {shown} into the server's "
        f"models/{folder}/ folder, then wait for model id '{folder}/{shown}' "
        "(wait_for_model notices the file)"
    )


async def get_model(http: ComfyUIHttp, memory: ServerMemory, model_id: str) -> Model:
    """``ready`` once the folder lists the file; else ``pending_upload``, and a watch starts."""
    folder, filename = mapping.model_location(model_id)
    model_type = next((t for t, f in mapping.MODEL_FOLDERS.items() if f == folder), None)
    files = await http.model_files(folder)
    if filename in files:
        return Model(id=model_id, name=filename, status="ready", type=model_type)
    memory.watch_model(model_id, folder, filename, model_type)
    return Model(id=model_id, name=filename, status="pending_upload", type=model_type)
