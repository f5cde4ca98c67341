"""The emulator's Comfy API v2 face, under ``/api/v2`` on the same port, with the same API keys and
the same state engine as the developer-API face (a job submitted on one is seen on the other).

Parts: ``errors`` (the v2 envelope and codes), ``render`` (records in v2 shapes), ``face`` (assets,
blobs, stream slots, injected errors), ``jobs``, ``sse`` and ``assets`` (the routes), and here the
route table and the v2 test controls (``/_emulator/v2/...``). See ``docs/emulator.md``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from prefect_comfy_emulator.config import CONTROL_PREFIX, V2_PREFIX
from prefect_comfy_emulator.v2.assets import asset_routes
from prefect_comfy_emulator.v2.errors import STATUS_OF
from prefect_comfy_emulator.v2.face import InjectedError, V2Face
from prefect_comfy_emulator.v2.jobs import job_routes
from prefect_comfy_emulator.v2.sse import job_events
from prefect_comfy_emulator.wire import ApiError, parse_json

__all__ = ["V2Face", "v2_routes"]


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def inject_error(request: Request) -> Response:
    """``POST /_emulator/v2/errors`` {code, count?, retry_after?, path?, method?}."""
    body = parse_json(await request.body())
    face: V2Face = request.app.state.v2
    if not isinstance(body, dict) or body.get("code") not in STATUS_OF:
        raise ApiError(
            422,
            "validation_error",
            "code must be one of " + ", ".join(sorted(STATUS_OF)),
            [{"field": "code", "message": "unknown v2 error code"}],
        )
    count, retry = body.get("count", 1), body.get("retry_after")
    path, method = body.get("path", "/jobs"), body.get("method", "POST")
    if (
        not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 100_000
        or not (retry is None or (isinstance(retry, (int, float)) and 0 <= retry <= 3600))
        or not isinstance(path, str) or method not in ("GET", "POST", "DELETE")
    ):  # fmt: skip
        raise ApiError(
            422,
            "validation_error",
            "count 1-100000, retry_after 0-3600 s, path a string, method GET/POST/DELETE",
        )
    face.injected.append(InjectedError(body["code"], count, retry, path, method))
    return JSONResponse({"injected": len(face.injected)})


async def v2_stats(request: Request) -> Response:
    return JSONResponse(request.app.state.v2.stats())


def v2_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route(V2_PREFIX + path, endpoint, methods=[method])
        for path, endpoint, method in (*job_routes(), *asset_routes())
    ]
    routes += [
        Route(V2_PREFIX + "/jobs/{id}/events", job_events, methods=["GET"]),
        Route(V2_PREFIX + "/health", health, methods=["GET"]),
        Route(CONTROL_PREFIX + "/v2/errors", inject_error, methods=["POST"]),
        Route(CONTROL_PREFIX + "/v2/stats", v2_stats, methods=["GET"]),
    ]
    return routes
