"""A Prefect API that hangs or fails artifact writes never keeps a wait from returning (issue 11, 15).

Real sockets: the emulator runs the job, and Prefect's own client talks to a loopback "Prefect API"
that either accepts connections and never answers, or answers every request with a 503 (which the
client retries with backoff). The sensor's wait must still return the completed job, in about its
write bounds, with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.orchestration import artifacts
from prefect_comfy.orchestration import sensor as watching
from prefect_comfy.orchestration.sensor import watch_comfy_job
from prefect_comfy.orchestration.writes import flush_artifact_writes
from tests.support.keys import API_KEY
from tests.support.workflows import slow_workflow

# Outside a run Prefect still writes artifacts (it warns that this is deprecated): the writes reach
# the broken API, which is what this test needs.
pytestmark = pytest.mark.filterwarnings("ignore:Artifact creation outside:FutureWarning")


async def _hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.read()  # read until the client gives up; never answer
    finally:
        writer.close()


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            await reader.readexactly(length)
            body = b'{"detail": "overloaded"}'
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture(params=["hangs", "fails"])
async def broken_prefect_api(request) -> AsyncIterator[str]:
    server = await asyncio.start_server(
        _hang if request.param == "hangs" else _refuse, "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            yield request.param
    finally:
        server.close()


async def test_a_broken_prefect_api_never_keeps_a_wait_from_returning(
    emulator, broken_prefect_api, monkeypatch, caplog
):
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(artifacts, "ARTIFACT_WRITE_TIMEOUT", 1.0)
    monkeypatch.setattr(artifacts, "OUTPUTS_ARTIFACT_TIMEOUT", 1.0)
    monkeypatch.setattr(watching, "STOP_TIMEOUT", 2.0)
    async with CloudBackend(api_key=API_KEY, base_url=emulator.api_url) as backend:
        job = await backend.submit(slow_workflow(10))
        started = time.monotonic()
        done = await asyncio.wait_for(
            watch_comfy_job(backend, job.id, emit_events=False, progress_interval=0.1), 30
        )
        elapsed = time.monotonic() - started
    # the final writes went on in the background, each bounded: the flush a task ends with
    assert await flush_artifact_writes(timeout=10)
    assert done.status == "completed" and done.outputs
    # the job itself takes ~0.5 s; at most one progress write and the outputs artifact time out
    assert elapsed < 8.0, (
        f"the wait took {elapsed:.1f}s with a Prefect API that {broken_prefect_api}"
    )
    assert "Progress artifact of Comfy job" in caplog.text
    assert "Outputs artifact of Comfy job" in caplog.text
