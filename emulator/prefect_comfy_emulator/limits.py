"""The request body limit: a body over the limit is answered 413 without being read into memory.

A declared ``Content-Length`` over the limit is refused before a byte of the body is read; a body
without one (chunked) is counted as it arrives and refused as soon as it passes the limit. The answer
says ``Connection: close``, so the server stops reading the rest instead of draining it.

Example:
    >>> body_too_large(1024).status
    413
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefect_comfy_emulator.wire import ApiError


def body_too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "invalid_request",
        f"the request body is larger than the emulator's limit of {max_bytes} bytes "
        "(EmulatorConfig.max_request_bytes); send a smaller body",
        headers={"Connection": "close"},
    )


class BodyLimit:
    """ASGI middleware in front of every HTTP route (API, storage and controls)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        shape: Callable[[str, ApiError], ApiError] = lambda path, error: error,
    ) -> None:
        self.app, self.max_bytes, self.shape = app, max_bytes, shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_bytes:
            error = self.shape(scope.get("path", ""), body_too_large(self.max_bytes))
            await error.response()(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise body_too_large(self.max_bytes)
            return message

        await self.app(scope, counted, send)
