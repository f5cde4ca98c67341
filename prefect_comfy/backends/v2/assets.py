"""Comfy API v2 assets: an upload as the official client does it, by blake3 hash first.

`upload_asset` hashes the bytes locally (blake3), asks ``HEAD /assets/by-hash/{hash}`` whether
the server has them, makes an asset over the known blob with ``POST /assets/from-hash`` if so, and
uploads them (multipart ``POST /assets``, ``expected_hash`` set) only if not. An asset is ready when
the call returns: v2 has no "ready" event.

A workflow refers to an asset with `asset_reference`
(``{"__type": "core/ASSET", "info": {"id", "hash"?, "file_path"}}``); a server that places assets
under their ``file_path`` (comfy-api-proxy, the emulator) also takes the plain name.

Example:
    >>> asset_reference("0b7c", "photo.png")
    {'__type': 'core/ASSET', 'info': {'id': '0b7c', 'file_path': 'photo.png'}}
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from blake3 import blake3

from prefect_comfy.backends.v2.http import V2Http
from prefect_comfy.exceptions import ComfyConfigError, NotFound

__all__ = ["MODEL_FOLDERS", "asset_reference", "blake3_of", "upload_asset"]

_CHUNK = 1 << 20

MODEL_FOLDERS: dict[str, str] = {
    "checkpoint": "checkpoints",
    "lora": "loras",
    "vae": "vae",
    "controlnet": "controlnet",
    "embedding": "embeddings",
    "upscaler": "upscale_models",
    "clip": "clip",
    "unet": "unet",
    "diffusion_model": "diffusion_models",
}
"""Model type -> the folder under ``models/`` that its ``file_path`` names."""


def asset_reference(asset_id: str, file_path: str | None = None, hash: str | None = None) -> dict:
    """The ``core/ASSET`` value to put in a workflow where a file name would go."""
    info: dict[str, Any] = {"id": asset_id}
    if hash:
        info["hash"] = hash
    if file_path:
        info["file_path"] = file_path
    return {"__type": "core/ASSET", "info": info}


def blake3_of(source: str | os.PathLike[str] | bytes) -> tuple[str, int]:
    """``("blake3:<hex>", size)`` of bytes or of a file (read in chunks)."""
    hasher = blake3()
    if isinstance(source, bytes):
        hasher.update(source)
        return f"blake3:{hasher.hexdigest()}", len(source)
    size = 0
    with open(source, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return f"blake3:{hasher.hexdigest()}", size


async def upload_asset(
    http: V2Http,
    source: str | os.PathLike[str] | bytes,
    *,
    file_path: str,
    tags: Sequence[str] = (),
) -> dict[str, Any]:
    """Upload (or re-reference) bytes as an asset at ``file_path``; returns the v2 Asset.

    Raises:
        ComfyConfigError: the file does not exist.
        ComfyAPIError: the server refused the upload (409 ``hash_mismatch`` …).
    """
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise ComfyConfigError(f"No file to upload at {source}")
    digest, _ = blake3_of(source)
    content_type = mimetypes.guess_type(file_path)[0] or "application/octet-stream"
    try:
        await http.request("HEAD", http.url(f"/assets/by-hash/{digest}"), what="HEAD by-hash")
        return await http.v2(
            "POST",
            "/assets/from-hash",
            json={"hash": digest, "file_path": file_path, "tags": list(tags)},
        )
    except NotFound:
        pass  # the server lacks the bytes (or lost them between the two calls): send them

    def body(stack: ExitStack) -> dict[str, Any]:
        data = source if isinstance(source, bytes) else stack.enter_context(open(source, "rb"))  # noqa: SIM115
        fields: dict[str, Any] = {
            "content_type": content_type,
            "file_path": file_path,
            "expected_hash": digest,
        }
        if tags:
            fields["tags"] = list(tags)
        name = Path(file_path).name
        return {"files": {"file": (name, data, content_type)}, "data": fields}

    return await http.v2("POST", "/assets", body=body)
