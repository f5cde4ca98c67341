"""The v2 asset routes: multipart upload, from-hash, ``HEAD by-hash``, read, delete and content.

Blobs are kept by their blake3 (``blake3:<hex>``); an asset is a record over a blob. A blob is found
by hash only by an account that uploaded it (a miss and "not yours" are the same 404
``blob_not_found``). Content answers 302 to a signed URL of the emulator's storage stand-in, on the
storage origin (a second port when served by ``EmulatorServer``, so that a client following the
redirect must not, and by httpx's rules does not, carry its key there).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from prefect_comfy_emulator.multipart import parse_multipart_all
from prefect_comfy_emulator.v2.errors import V2Error, as_v2
from prefect_comfy_emulator.v2.face import blake3_of
from prefect_comfy_emulator.v2.jobs import (
    claim_key,
    face_of,
    invalid,
    json_body,
    origin_of,
    owner_of,
    settle_key,
)
from prefect_comfy_emulator.v2.render import output_of
from prefect_comfy_emulator.wire import ApiError

HASH = re.compile(r"blake3:[0-9a-f]{64}")


def _file_path(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 255 or "\x00" in value:
        raise invalid("'file_path' must be a file name or path of 1 to 255 characters", "file_path")
    if value.startswith("/") or ".." in value.split("/"):
        raise invalid("'file_path' must be relative and must not contain '..'", "file_path")
    return value


def _expires_in(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 60 <= value <= 604_800:
        raise invalid("'expires_in' must be seconds from 60 to 604800", "expires_in")
    return value


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(t, str) and 0 < len(t) <= 128 for t in value
    ):
        raise invalid("'tags' must be a list of strings", "tags")
    return value


async def upload(request: Request) -> Response:
    face, owner = face_of(request), owner_of(request)
    try:
        parts = parse_multipart_all(request.headers.get("content-type", ""), await request.body())
    except ApiError as exc:
        raise as_v2(exc) from None
    fields: dict[str, list[Any]] = {}
    for name, part in parts:
        fields.setdefault(name, []).append(part)
    unknown = sorted(
        set(fields) - {"file", "content_type", "file_path", "expected_hash", "tags", "expires_in"}
    )
    if unknown:
        raise invalid(f"unknown field {unknown[0]!r}", unknown[0])
    files = fields.get("file", [])
    if len(files) != 1 or files[0].filename is None:
        raise invalid("one 'file' part (with a filename) is required", "file")
    texts = {k: v[-1].text for k, v in fields.items() if k not in ("file", "tags")}
    if "content_type" not in texts or not texts["content_type"]:
        raise invalid("'content_type' is required", "content_type")
    file_path = _file_path(texts.get("file_path"))
    expires_in = _expires_in(texts.get("expires_in"))
    tags = _tags([p.text for p in fields.get("tags", [])])
    expected = texts.get("expected_hash")
    if expected is not None and not HASH.fullmatch(expected):
        raise invalid("'expected_hash' must be blake3:<64 hex digits>", "expected_hash")
    claim = await claim_key(request)
    status = 500
    try:
        data = files[0].data
        digest = blake3_of(data)
        if expected is not None and expected != digest:
            raise V2Error(
                409, "hash_mismatch", f"the bytes hash to {digest}, not to expected_hash {expected}"
            )
        digest, new = face.store_blob(owner, data)
        asset = face.mint(owner, digest, texts["content_type"], file_path, tags, expires_in, new)
        status = 201 if new else 200
        return JSONResponse(face.asset_body(asset, origin_of(request)), status_code=status)
    except ApiError as exc:
        status = exc.status
        raise
    finally:
        settle_key(request, claim, status)


async def from_hash(request: Request) -> Response:
    face, owner = face_of(request), owner_of(request)
    body = await json_body(request)
    unknown = sorted(set(body) - {"hash", "file_path", "tags", "expires_in"})
    if unknown:
        raise invalid(f"unknown field {unknown[0]!r}", unknown[0])
    digest = body.get("hash")
    if not isinstance(digest, str) or not HASH.fullmatch(digest):
        raise invalid("'hash' must be blake3:<64 hex digits>", "hash")
    file_path = _file_path(body["file_path"]) if body.get("file_path") is not None else None
    tags, expires_in = _tags(body.get("tags")), _expires_in(body.get("expires_in"))
    if not face.owns_blob(owner, digest):
        raise V2Error(404, "blob_not_found", f"no blob {digest} that this account may use")
    existing = face.same_reference(owner, digest, file_path or _default_path(face, owner, digest))
    if existing is not None:
        return JSONResponse(face.asset_body(existing, origin_of(request)), status_code=200)
    path = file_path or _default_path(face, owner, digest)
    ctype = next(a.content_type for a in face.assets.values() if a.hash == digest)
    asset = face.mint(owner, digest, ctype, path, tags, expires_in, created_new=False)
    return JSONResponse(face.asset_body(asset, origin_of(request)), status_code=201)


def _default_path(face: Any, owner: str, digest: str) -> str:
    return next(
        (a.file_path for a in face.assets.values() if a.owner == owner and a.hash == digest),
        digest.removeprefix("blake3:")[:16],
    )


async def head_by_hash(request: Request) -> Response:
    face, owner = face_of(request), owner_of(request)
    digest = request.path_params["hash"]
    found = HASH.fullmatch(digest) is not None and face.owns_blob(owner, digest)
    return Response(status_code=200 if found else 404)


async def get_asset(request: Request) -> Response:
    face, owner = face_of(request), owner_of(request)
    asset_id = request.path_params["id"]
    output = face.state.outputs.get(asset_id)
    if output is not None and output.owner == owner:
        body = output_of(output, origin_of(request))
        body.update(created_at=output.created_at, file_path=output.name, expires_at=None)
        return JSONResponse(body)
    return JSONResponse(face.asset_body(face.asset(owner, asset_id), origin_of(request)))


async def delete_asset(request: Request) -> Response:
    face_of(request).delete(owner_of(request), request.path_params["id"])
    return Response(status_code=204)


async def content(request: Request) -> Response:
    face, owner = face_of(request), owner_of(request)
    storage = request.app.state.storage_origin or origin_of(request)
    location = face.content_location(owner, request.path_params["id"], storage)
    return RedirectResponse(location, status_code=302)


def asset_routes() -> list[tuple[str, Any, str]]:
    return [
        ("/assets", upload, "POST"),
        ("/assets/from-hash", from_hash, "POST"),
        ("/assets/by-hash/{hash}", head_by_hash, "HEAD"),
        ("/assets/{id}", get_asset, "GET"),
        ("/assets/{id}", delete_asset, "DELETE"),
        ("/assets/{id}/content", content, "GET"),
    ]
