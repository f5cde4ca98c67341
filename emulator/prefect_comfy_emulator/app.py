"""The emulator as an ASGI app: `create_app` puts the routes, the WebSocket, the storage
stand-in and the test controls together around one `EmulatorState`.

Example:
    >>> from prefect_comfy_emulator import EmulatorConfig, create_app
    >>> app = create_app(EmulatorConfig(api_keys=["comfyui-test-key-not-real"], seed=1))
    >>> app.state.emulator.stats()["requests_total"]
    0
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefect_comfy_emulator.catalog import catalog_routes
from prefect_comfy_emulator.config import API_PREFIX, V2_PREFIX, EmulatorConfig
from prefect_comfy_emulator.control import control_routes
from prefect_comfy_emulator.idempotency import Answer
from prefect_comfy_emulator.limits import BodyLimit
from prefect_comfy_emulator.routes import IDEMPOTENT_PATHS, api_routes
from prefect_comfy_emulator.state import EmulatorState
from prefect_comfy_emulator.storage import storage_routes
from prefect_comfy_emulator.v2 import V2Face, v2_routes
from prefect_comfy_emulator.v2.errors import as_v2
from prefect_comfy_emulator.wire import ApiError
from prefect_comfy_emulator.ws import ws_endpoint

OPEN_PATHS = frozenset({V2_PREFIX + "/health"})
"""API paths served without a key."""


class KeyRing:
    """Maps accepted API keys to account ids (``acct_1`` …) so that no record holds a key."""

    def __init__(self, keys: list[str]) -> None:
        self._accounts = [(key.encode(), f"acct_{i + 1}") for i, key in enumerate(keys)]

    def __call__(self, key: str | None) -> tuple[str | None, ApiError]:
        if not key:
            return None, ApiError(
                401, "unauthorized", "missing API key: send Authorization: Bearer <key>"
            )
        candidate = key.encode()
        for known, account in self._accounts:
            if hmac.compare_digest(known, candidate):
                return account, ApiError(401, "unauthorized", "")
        return None, ApiError(401, "unauthorized", "invalid API key")

    @staticmethod
    def bearer(headers: Headers) -> str | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None


def shaped(path: str, error: ApiError) -> ApiError:
    """The error in the envelope of the face that ``path`` belongs to."""
    return as_v2(error) if path == V2_PREFIX or path.startswith(V2_PREFIX + "/") else error


def _under_api(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in (API_PREFIX, V2_PREFIX))


async def _send_error(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    await shaped(scope.get("path", ""), error).response()(scope, receive, send)


class ApiGate:
    """In front of every HTTP request under either face's prefix: count, authenticate, inject
    faults (``before`` and ``after``), and (v1 face) replay answers for a repeated
    ``Idempotency-Key``. The v2 face's single-use keys are its own routes' business."""

    def __init__(self, app: ASGIApp, state: EmulatorState, keys: KeyRing) -> None:
        self.app, self.state, self.keys = app, state, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not _under_api(path) or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        state = self.state
        state.requests_total += 1
        headers = Headers(scope=scope)
        owner, refusal = self.keys(self.keys.bearer(headers))
        if owner is None:
            await _send_error(refusal, scope, receive, send)
            return
        scope["emulator.owner"] = owner
        fault = state.take_fault(path, "before")
        if fault is not None:
            await _send_error(fault.error(), scope, receive, send)
            return
        idem_key = headers.get("idempotency-key")
        claim = None
        if scope["method"] == "POST" and path in IDEMPOTENT_PATHS and idem_key:
            held = await state.idempotency.claim((owner, path, idem_key))
            if isinstance(held, Answer):
                await Response(
                    held.body,
                    status_code=held.status,
                    media_type=held.content_type,
                    headers={"Idempotent-Replayed": "true"},
                )(scope, receive, send)
                return
            claim = held
        if claim is None and not state.has_fault(path, "after"):
            # Nothing to store or replace: stream the answer as it comes (SSE needs this).
            await self.app(scope, receive, send)
            return
        captured: list[Message] = []

        async def capture(message: Message) -> None:
            captured.append(message)

        answer = None
        try:
            await self.app(scope, receive, capture)
            answer = _answer(captured)
        finally:
            if claim is not None:
                keep = answer is not None and 200 <= answer.status < 300
                state.idempotency.settle(claim, answer if keep else None)
        fault = state.take_fault(path, "after")
        if fault is not None:
            await _send_error(fault.error(), scope, receive, send)
            return
        for message in captured:
            await send(message)


def _answer(captured: list[Message]) -> Answer:
    """The status, body and content type of a captured response."""
    start = next((m for m in captured if m["type"] == "http.response.start"), None)
    if start is None:
        return Answer(500, b"", "")
    body = b"".join(m.get("body", b"") for m in captured if m["type"] == "http.response.body")
    ctype = Headers(raw=start["headers"]).get("content-type", "application/json")
    return Answer(start["status"], body, ctype)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return shaped(request.url.path, exc).response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    route = f"{request.method} {request.url.path}"
    path = request.url.path
    if exc.status_code == 404:
        message = f"route {route} is not implemented by the emulator"
        return shaped(path, ApiError(404, "not_found", message)).response()
    if exc.status_code == 405:
        message = f"method not allowed: {route} is not implemented by the emulator"
        error = ApiError(405, "invalid_request", message, headers=dict(exc.headers or {}))
        return shaped(path, error).response()
    return shaped(path, ApiError(exc.status_code, "invalid_request", str(exc.detail))).response()


async def _crash(request: Request, exc: Exception) -> Response:
    error = ApiError(500, "internal_error", f"emulator error: {type(exc).__name__}")
    return shaped(request.url.path, error).response()


def create_app(config: EmulatorConfig) -> Starlette:
    """A fresh emulator app with its own state (``app.state.emulator``)."""
    state = EmulatorState(config)
    keys = KeyRing(config.api_keys)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await state.shutdown()

    face = V2Face(state)
    state.on_reset.append(face.reset)
    state.on_reset_faults.append(face.injected.clear)
    routes: list[Any] = [
        *v2_routes(),
        *api_routes(),
        WebSocketRoute(API_PREFIX + "/ws", ws_endpoint),
        *storage_routes(),
        *control_routes(),
        *catalog_routes(),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(BodyLimit, max_bytes=config.max_request_bytes, shape=shaped),
            Middleware(ApiGate, state=state, keys=keys),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _crash},
        lifespan=lifespan,
    )
    app.state.emulator = state
    app.state.v2 = face
    app.state.storage_origin = None  # EmulatorServer sets its second port's origin
    app.state.authenticate = keys
    return app
