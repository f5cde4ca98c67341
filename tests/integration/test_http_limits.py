"""Item 11 against a hostile HTTP server on 127.0.0.1:0: endless bodies, stalls, redirects.

The server is a few lines of raw asyncio: it answers by path, and counts what it managed to send
before the client hung up. Memory is measured with ``tracemalloc`` around each call.
"""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from prefect_comfy.backends.cloud.rest import ComfyClient
from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.exceptions import (
    ComfyAPIError,
    ComfyTransportError,
    ResponseTooLarge,
    ServerError,
)
from prefect_comfy.settings import ComfySettings
from tests.support.keys import API_KEY
from tests.support.waiting import scaled

CHUNK = b"x" * 65536
LIMIT = 1 << 20


class HostileServer:
    """Answers ``/endless-500``, ``/endless-200``, ``/stall`` and ``/moved`` (anything under them)."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.server: asyncio.AbstractServer | None = None
        self.url = ""
        self.handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> HostileServer:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            kind = next(k for k in ("endless-500", "endless-200", "stall", "moved") if k in path)
            if kind == "moved":
                writer.write(
                    b"HTTP/1.1 307 Temporary Redirect\r\nLocation: https://elsewhere.invalid/x\r\n"
                    b"Content-Length: 0\r\n\r\n"
                )
                await writer.drain()
                return
            status = b"500 Internal Server Error" if kind == "endless-500" else b"200 OK"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            if kind == "stall":
                writer.write(b"5\r\nhello\r\n")
                await writer.drain()
                await asyncio.sleep(3600)  # the hostile part: never another byte
            while True:  # the hostile part: a body without end
                writer.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
                await writer.drain()
                self.sent[kind] = self.sent.get(kind, 0) + len(CHUNK)
        except (ConnectionError, asyncio.IncompleteReadError, StopIteration):
            pass
        except asyncio.CancelledError:
            pass  # the server is shutting down
        finally:
            self.handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@pytest.fixture
async def hostile() -> AsyncIterator[HostileServer]:
    async with HostileServer() as server:
        yield server


def settings(**extra: object) -> ComfySettings:
    return ComfySettings(max_retries=0, max_response_bytes=LIMIT, **extra)  # type: ignore[arg-type]


async def peak_memory(call: Callable[[], Awaitable[object]]) -> tuple[BaseException, int]:
    """Run ``call()`` (it must fail) twice; its exception and the peak memory of the second run.

    The first run is the warm-up: imports and pools made once per process are not what is measured.
    """
    with contextlib.suppress(Exception):
        await asyncio.wait_for(call(), scaled(30))
    tracemalloc.start()
    try:
        await asyncio.wait_for(call(), scaled(30))
    except Exception as exc:
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    raise AssertionError("the call did not fail")


async def test_an_endless_500_body_is_read_only_so_far(hostile: HostileServer) -> None:
    async with ComfyClient(API_KEY, hostile.url, settings=settings()) as client:
        error, peak = await peak_memory(lambda: client._call("GET", "/endless-500"))
    assert isinstance(error, ServerError) and error.status_code == 500
    assert peak < LIMIT  # 64 KiB of it is read; before: the whole body, 53 MB -> 990 MB and on


async def test_an_endless_json_body_is_refused_with_a_clear_error(hostile: HostileServer) -> None:
    async with ComfyClient(API_KEY, hostile.url, settings=settings()) as client:
        error, peak = await peak_memory(lambda: client._call("GET", "/endless-200"))
    assert isinstance(error, ResponseTooLarge)
    assert "COMFY_MAX_RESPONSE_BYTES" in str(error) and API_KEY not in str(error)
    assert peak < 8 * LIMIT


async def test_comfyui_routes_are_capped_the_same_way(hostile: HostileServer) -> None:
    async with ComfyUIBackend(hostile.url, settings=settings()) as backend:
        error, _ = await peak_memory(lambda: backend.http.json("GET", "/endless-500/api/queue"))
        assert isinstance(error, ServerError)
        error, peak = await peak_memory(lambda: backend.http.json("GET", "/endless-200/api/queue"))
        assert isinstance(error, ResponseTooLarge)
    assert peak < 8 * LIMIT


async def test_an_endless_download_stops_at_the_size_limit(
    hostile: HostileServer, tmp_path: Path
) -> None:
    async with ComfyClient(API_KEY, hostile.url, settings=settings()) as client:
        url = f"{hostile.url}/endless-200/out.png"
        error, peak = await peak_memory(lambda: client.download(url, tmp_path, max_bytes=4 * LIMIT))
    assert isinstance(error, ResponseTooLarge) and "COMFY_MAX_DOWNLOAD_BYTES" in str(error)
    assert list(tmp_path.iterdir()) == []  # nothing kept, no temporary file
    assert peak < 8 * LIMIT  # streamed to disk, never held


async def test_a_stalled_download_fails_after_the_stall_timeout(
    hostile: HostileServer, tmp_path: Path
) -> None:
    async with ComfyUIBackend(
        hostile.url, settings=settings(download_stall_timeout=0.5)
    ) as backend:
        target = backend.http.origin_url.join(f"{hostile.url}/stall/view")
        with pytest.raises(ComfyTransportError, match="stalled"):
            await asyncio.wait_for(backend.http.download(target, tmp_path, "o.png"), scaled(30))
    assert list(tmp_path.iterdir()) == []


async def test_a_rest_redirect_over_a_real_socket(hostile: HostileServer) -> None:
    async with ComfyClient(API_KEY, hostile.url, settings=settings()) as client:
        with pytest.raises(ComfyAPIError) as info:
            await client.get_job("moved")
    assert info.value.status_code == 307 and "redirect" in str(info.value)
    assert "https://elsewhere.invalid/x" in str(info.value)
