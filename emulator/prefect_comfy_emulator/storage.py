"""The stand-in for signed object storage, outside the API prefix and without authentication.

Like S3 with presigned URLs, it refuses any request that also carries an ``Authorization`` header
(400), so a client that leaks its API key to storage fails its tests.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from prefect_comfy_emulator.config import STORAGE_PREFIX
from prefect_comfy_emulator.records import sign, storage_path
from prefect_comfy_emulator.state import EmulatorState
from prefect_comfy_emulator.wire import ApiError


def _refuse_authorization(request: Request) -> None:
    if "authorization" in request.headers:
        raise ApiError(
            400,
            "invalid_request",
            "storage URLs are pre-signed: a request must not also carry an Authorization header",
        )


async def download(request: Request) -> Response:
    _refuse_authorization(request)
    state: EmulatorState = request.app.state.emulator
    kind, resource_id, name = (request.path_params[k] for k in ("kind", "id", "name"))
    record = state.outputs.get(resource_id) if kind == "outputs" else state.uploads.get(resource_id)
    if (
        record is None
        or (kind != "outputs" and getattr(record, "kind", None) + "s" != kind)
        or record.name != name
    ):
        raise ApiError(404, "not_found", "no such object")
    expected = sign(state.secret, storage_path(kind, record.id, record.name))
    if not hmac.compare_digest(request.query_params.get("sig", ""), expected):
        raise ApiError(403, "forbidden", "the signature of this URL is missing or wrong")
    if record.data is None:
        raise ApiError(404, "not_found", "no such object")
    media = getattr(record, "mime_type", None) or "application/octet-stream"
    return Response(record.data, media_type=media)


async def upload(request: Request) -> Response:
    _refuse_authorization(request)
    state: EmulatorState = request.app.state.emulator
    record = state.upload_by_token(request.path_params["token"])
    if record is None or record.upload_expires_at is None:
        raise ApiError(403, "forbidden", "this upload URL is not valid")
    if record.upload_expires_at < datetime.now(UTC):
        raise ApiError(403, "forbidden", "this upload URL has expired")
    if record.status != "pending_upload":
        raise ApiError(400, "invalid_request", "this upload is already complete")
    data = await request.body()
    if len(data) != record.size:
        raise ApiError(
            400,
            "invalid_request",
            f"the body has {len(data)} bytes; the upload URL was signed for {record.size}",
        )
    record.data = data
    return Response(status_code=200, headers={"ETag": f'"{sign(state.secret, record.id)[:32]}"'})


def storage_routes() -> list[BaseRoute]:
    return [
        Route(STORAGE_PREFIX + "/{kind:str}/{id:str}/{name:str}", download, methods=["GET"]),
        Route(STORAGE_PREFIX + "/uploads/{token:str}", upload, methods=["PUT"]),
    ]
