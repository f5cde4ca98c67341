"""Item 9: with EVERY logger at DEBUG, no API key in any log line, exception or repr, on every backend.

A full submit → wait → download runs against the emulator (the key in the handshake's header, and in
its ``?api_key=`` query) and against a real ComfyUI (the key as ``X-API-Key`` and in the WebSocket's
``&token=``). Every record of every logger is captured, formatted with its traceback, and swept. The
test also checks that the handshake WAS logged (so the sweep saw the lines that used to leak).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.exceptions import ComfyError, WebSocketAuthError
from prefect_comfy.settings import ComfySettings
from prefect_comfy.waiting.waits import wait_for
from tests.conftest import API_KEY, OTHER_KEY, WRONG_KEY
from tests.workflows import tiny_workflow

COMFYUI_KEY = "comfyui-sweep-key-for-a-local-comfyui"
SERVER_SIDE = ("uvicorn", "prefect_comfy.emulator", "websockets.server")
"""The emulator runs in this process: what its server logs about requests it received is the
server's side (the real Comfy Cloud is elsewhere), not the client's, and is not swept here."""


class Everything(logging.Handler):
    """Keeps every record, formatted (with its traceback) at emit time."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(SERVER_SIDE):
            self.lines.append(self.format(record))


@contextlib.contextmanager
def every_logger_at_debug() -> Iterator[Everything]:
    """Root and every logger known now (websockets, httpx, httpcore, ours …) at DEBUG, captured."""
    handler = Everything()
    names = ["", "websockets", "websockets.client", "httpx", "httpcore", "prefect_comfy"]
    names += list(logging.Logger.manager.loggerDict)
    loggers = [logging.getLogger(name) for name in dict.fromkeys(names)]
    saved = [(lg, lg.level, lg.disabled, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
        if not lg.propagate:
            lg.addHandler(handler)
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        for lg, level, disabled, _ in saved:
            lg.setLevel(level)
            lg.disabled = disabled
            lg.removeHandler(handler)


async def full_run(backend: ComfyBackend, tmp_path: Path) -> list[str]:
    """Subscribe, submit, wait (directly and through the shared hub), download; what can be read."""
    connected = asyncio.Event()
    seen: list[Any] = []

    async def on_connect() -> None:
        connected.set()

    async def read() -> None:
        async for event in backend.events(["job.*"], on_connect=on_connect):
            seen.append(event)

    reader = asyncio.create_task(read())
    try:
        await asyncio.wait_for(connected.wait(), 30)
        job = await backend.submit(tiny_workflow("sweep"))
        event = await wait_for(backend, "job", job.id, timeout=60)
        assert event.event == "job.completed", event
        done = await backend.get_job(job.id)
        paths = [await backend.download(output, tmp_path) for output in done.outputs]
        assert paths and all(p.stat().st_size > 0 for p in paths)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return [repr(backend), repr(job), repr(done), repr(event), str(seen), repr(seen)]


def swept(texts: list[str], *keys: str) -> None:
    for key in keys:
        leaks = [text for text in texts if key in text]
        assert not leaks, f"the key leaked into: {leaks[0][:300]}"


@pytest.mark.parametrize(("ws_auth", "key"), [("header", API_KEY), ("query", OTHER_KEY)])
async def test_cloud_backend_at_debug_leaks_no_key(
    emulator: Any, tmp_path: Path, ws_auth: str, key: str
) -> None:
    with every_logger_at_debug() as captured:
        settings = ComfySettings(api_key=key, base_url=emulator.url, ws_auth=ws_auth)
        async with CloudBackend(settings=settings) as backend:
            texts = await full_run(backend, tmp_path)
            texts += [repr(backend.client), str(backend.client.__dict__.keys())]
        wrong = CloudBackend(
            settings=ComfySettings(api_key=WRONG_KEY, base_url=emulator.url, ws_auth=ws_auth)
        )
        with pytest.raises(ComfyError) as refused:
            await wrong.get_job("job_nope")
        with pytest.raises(WebSocketAuthError) as refused_ws:
            async for _ in wrong.events():
                pass
        await wrong.aclose()
    errors = [
        str(refused.value),
        repr(refused.value),
        str(refused_ws.value),
        repr(refused_ws.value),
    ]
    swept(captured.lines + texts + errors, key, WRONG_KEY)
    handshake = [line for line in captured.lines if line.startswith("websockets.client")]
    assert any("/developer/api/v1/ws" in line for line in handshake), "the handshake was not logged"
    if ws_auth == "header":
        assert any("Authorization: Bearer REDACTED" in line for line in handshake)
    else:
        assert any("api_key=REDACTED" in line for line in handshake)


@pytest.mark.comfyui
async def test_comfyui_backend_at_debug_leaks_no_key(comfyui_server: Any, tmp_path: Path) -> None:
    with every_logger_at_debug() as captured:
        async with ComfyUIBackend(comfyui_server.url, COMFYUI_KEY) as backend:
            texts = await full_run(backend, tmp_path)
            texts += [backend.connection_key, repr(backend.http)]
    swept(captured.lines + texts, COMFYUI_KEY)
    handshake = [line for line in captured.lines if line.startswith("websockets.client")]
    assert any("token=REDACTED" in line for line in handshake), "the handshake was not logged"
