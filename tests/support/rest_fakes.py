"""Shared fakes for the REST client's unit tests (tests/unit/test_rest.py, test_transfer.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

KEY = "comfyui-unit-secret-0123456789"
ORIGIN = "https://comfy.test:8765"  # a remote server: https, or the key is refused
API = ORIGIN + "/developer/api/v1"
WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
}
JOB = {"id": "job_1", "status": "pending", "tags": ["a"]}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100

Reply = httpx.Response | Callable[[httpx.Request], httpx.Response] | Exception


class FakeAPI:
    """A scripted server: per ``(method, path)`` a queue of replies (the last one repeats)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Reply]] = {}
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    def on(self, method: str, path: str, *replies: Reply) -> FakeAPI:
        self.routes[(method, path)] = list(replies)
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(request.read())
        replies = self.routes.get((request.method, request.url.path))
        if not replies:
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no route"}})
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(reply, Exception):
            raise reply
        if callable(reply):
            return reply(request)
        return reply

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def err(status: int, code: str | None, message: str = "nope", **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"message": message, **extra}
    if code:
        body["code"] = code
    return httpx.Response(status, json={"error": body})


def assert_authorized(request: httpx.Request) -> None:
    assert request.headers["Authorization"] == f"Bearer {KEY}"


def multipart_fields(request: httpx.Request, body: bytes) -> dict[str, bytes]:
    """Parse a multipart body (enough for tests: name → raw value)."""
    boundary = request.headers["Content-Type"].split("boundary=")[1].encode()
    fields = {}
    for part in body.split(b"--" + boundary):
        if b"Content-Disposition" not in part:
            continue
        head, _, value = part.partition(b"\r\n\r\n")
        name = head.split(b'name="')[1].split(b'"')[0].decode()
        if b'filename="' in head:
            fields[name + ".filename"] = head.split(b'filename="')[1].split(b'"')[0]
        fields[name] = value[:-2]
    return fields


INPUT = {"id": "inp_1", "name": "cat.png", "status": "ready", "size": 108, "tags": ["t"]}
