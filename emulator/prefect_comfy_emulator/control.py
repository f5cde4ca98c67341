"""Test controls under ``/_emulator`` (no authentication, JSON in and out)."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from prefect_comfy_emulator.config import CONTROL_PREFIX
from prefect_comfy_emulator.state import EmulatorState, Fault
from prefect_comfy_emulator.wire import (
    CloseAfterConnected,
    DuplicateEvents,
    FaultRequest,
    not_found,
    parse_body,
)

MALFORMED_FRAMES = ("this is not JSON {", json.dumps({"data": {"note": "a frame without a type"}}))
"""What ``POST /_emulator/malformed-frame`` sends to every connection, in order."""


def _state(request: Request) -> EmulatorState:
    return request.app.state.emulator


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def reset(request: Request) -> Response:
    _state(request).reset()
    return JSONResponse({"reset": True})


async def reset_faults(request: Request) -> Response:
    _state(request).reset_faults()
    return JSONResponse({"reset": True})


async def stats(request: Request) -> Response:
    return JSONResponse(_state(request).stats())


async def drop_connections(request: Request) -> Response:
    return JSONResponse({"dropped": _state(request).bus.drop_all()})


async def pause_events(request: Request) -> Response:
    _state(request).bus.pause()
    return JSONResponse({"paused": True})


async def resume_events(request: Request) -> Response:
    return JSONResponse({"paused": False, "delivered": _state(request).bus.resume()})


def _faults(state: EmulatorState) -> list[dict[str, object]]:
    return [vars(f).copy() for f in state.faults]


async def add_fault(request: Request) -> Response:
    body = parse_body(FaultRequest, await request.body())
    state = _state(request)
    state.add_fault(Fault(body.status, body.count, body.retry_after, body.path, body.when))
    return JSONResponse({"faults": _faults(state)})


async def list_faults(request: Request) -> Response:
    return JSONResponse({"faults": _faults(_state(request))})


async def clear_faults(request: Request) -> Response:
    _state(request).faults.clear()
    return JSONResponse({"faults": []})


async def duplicate_events(request: Request) -> Response:
    body = parse_body(DuplicateEvents, await request.body())
    _state(request).bus.duplicate = body.enabled
    return JSONResponse({"enabled": body.enabled})


async def close_after_connected(request: Request) -> Response:
    body = parse_body(CloseAfterConnected, await request.body())
    _state(request).bus.close_after_connected = body.count
    return JSONResponse({"count": body.count})


async def malformed_frame(request: Request) -> Response:
    bus = _state(request).bus
    count = 0
    for frame in MALFORMED_FRAMES:
        count = bus.broadcast_raw(frame)
    return JSONResponse({"connections": count})


async def job_internals(request: Request) -> Response:
    state = _state(request)
    job = state.jobs.get(request.path_params["id"])
    if job is None:
        raise not_found("job", request.path_params["id"])
    return JSONResponse(
        {
            **job.wire(state.secret),
            "cancel_requested": job.cancel_requested,
            "cancel_requests": job.cancel_requests,
        }
    )


def control_routes() -> list[BaseRoute]:
    def r(path: str, endpoint, *methods: str) -> Route:  # type: ignore[no-untyped-def]
        return Route(CONTROL_PREFIX + path, endpoint, methods=list(methods))

    return [
        r("/health", health, "GET"),
        r("/reset", reset, "POST"),
        r("/reset-faults", reset_faults, "POST"),
        r("/stats", stats, "GET"),
        r("/drop-connections", drop_connections, "POST"),
        r("/pause-events", pause_events, "POST"),
        r("/resume-events", resume_events, "POST"),
        r("/faults", add_fault, "POST"),
        r("/faults", list_faults, "GET"),
        r("/faults", clear_faults, "DELETE"),
        r("/duplicate-events", duplicate_events, "POST"),
        r("/malformed-frame", malformed_frame, "POST"),
        r("/close-after-connected", close_after_connected, "POST"),
        r("/jobs/{id}", job_internals, "GET"),
    ]
