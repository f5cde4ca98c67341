"""Item 9: with EVERY logger at DEBUG, no API key in any log line, exception or repr, on every backend.

And issue 11's sweep of the whole Prefect path: ``run_comfy_workflow`` on every backend, then every
event, artifact, log, flow run and task run the Prefect server holds of it is read back and swept.

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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.events.filters import EventFilter, EventOccurredFilter, EventResourceFilter

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.backends.comfyui.block import ComfyUIServer
from prefect_comfy.exceptions import ComfyError, WebSocketAuthError
from prefect_comfy.orchestration.flows import run_comfy_workflow
from prefect_comfy.settings import ComfySettings
from prefect_comfy.waiting.waits import wait_for
from tests.support.comfyui_graphs import empty_to_save
from tests.support.keys import API_KEY, OTHER_KEY, WRONG_KEY
from tests.support.waiting import eventually, scaled
from tests.support.workflows import failing_workflow, tiny_workflow

COMFYUI_KEY = "comfyui-sweep-key-for-a-local-comfyui"
SERVER_SIDE = ("uvicorn", "prefect_comfy_emulator", "websockets.server")
"""The emulator runs in this process: what its server logs about the requests it received (the
bearer header, the ``?api_key=`` path in uvicorn's access log) is swept too; the emulator redacts it."""


class Everything(logging.Handler):
    """Keeps every record, formatted (with its traceback) at emit time."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def server_side(self) -> list[str]:
        return [line for line in self.lines if line.startswith(SERVER_SIDE)]


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
        await asyncio.wait_for(connected.wait(), scaled(30))
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
    # The emulator's own uvicorn logged the requests it served (swept above, with the key redacted).
    assert any("/developer/api/v1/" in line for line in captured.server_side()), "no server log"
    if ws_auth == "query":
        assert any("api_key=REDACTED" in line for line in captured.server_side())


@pytest.mark.comfyui
async def test_comfyui_backend_at_debug_leaks_no_key(comfyui_server: Any, tmp_path: Path) -> None:
    with every_logger_at_debug() as captured:
        async with ComfyUIBackend(comfyui_server.url, COMFYUI_KEY) as backend:
            texts = await full_run(backend, tmp_path)
            texts += [backend.connection_key, repr(backend.http)]
    swept(captured.lines + texts, COMFYUI_KEY)
    handshake = [line for line in captured.lines if line.startswith("websockets.client")]
    assert any("token=REDACTED" in line for line in handshake), "the handshake was not logged"


# -- the whole Prefect path: events, artifacts, logs, states ---------------------------------------
async def prefect_texts(flow_run_id: Any, since: datetime) -> list[str]:
    """Everything the Prefect server holds of one flow run: events, artifacts, logs, the run."""
    async with get_client() as client:
        events = []
        for resource in (
            EventResourceFilter(id_prefix=["comfy."]),
            EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
        ):
            page = await client.read_events(
                filter=EventFilter(occurred=EventOccurredFilter(since=since), resource=resource),
                limit=50,
            )
            events += page.events
        artifacts = await client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        flow_run = await client.read_flow_run(flow_run_id)
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return (
        [e.model_dump_json() for e in events]
        + [a.model_dump_json() for a in artifacts]
        + [log.model_dump_json() for log in logs]
        + [flow_run.model_dump_json()]
        + [t.model_dump_json() for t in task_runs]
    )


async def flow_at_debug(credentials: Any, key: str, tmp_path: Path, workflow: dict) -> list[str]:
    """Run ``run_comfy_workflow`` with every logger at DEBUG; return all that can be read of it."""
    since = datetime.now(UTC) - timedelta(seconds=5)
    with every_logger_at_debug() as captured:
        state = await asyncio.to_thread(
            run_comfy_workflow,
            credentials,
            workflow,
            output_dir=str(tmp_path),
            return_state=True,
        )
    flow_run_id = state.state_details.flow_run_id
    texts = captured.lines + [repr(state), str(state.message), repr(credentials)]
    try:
        texts.append(repr(await state.result()))
    except Exception as exc:  # a failed job: the exception is part of the sweep
        texts += [str(exc), repr(exc), repr(getattr(exc, "__cause__", None))]

    async def outcome_stored() -> list[str] | None:
        found = await prefect_texts(flow_run_id, since)
        done = [t for t in found if '"comfy.job.completed"' in t or '"comfy.job.failed"' in t]
        return found if done else None

    texts += await eventually(outcome_stored, timeout=30, message="the outcome event in Prefect")
    return texts


@pytest.mark.prefect
@pytest.mark.parametrize("ws_auth", ["header", "query"])
async def test_a_flow_on_the_cloud_backend_leaves_no_key_in_prefect(
    prefect_api_url: str, emulator: Any, tmp_path: Path, ws_auth: str
) -> None:
    credentials = ComfyCloudCredentials(api_key=API_KEY, base_url=emulator.url, ws_auth=ws_auth)
    texts = await flow_at_debug(credentials, API_KEY, tmp_path / "ok", tiny_workflow("sweep-flow"))
    assert any('"comfy.job.completed"' in t for t in texts)
    assert any("comfy-job-" in t for t in texts), "no artifact was read back"
    texts += await flow_at_debug(credentials, API_KEY, tmp_path / "bad", failing_workflow())
    swept(texts, API_KEY)


@pytest.mark.prefect
@pytest.mark.comfyui
async def test_a_flow_on_comfyui_leaves_no_key_in_prefect(
    prefect_api_url: str, comfyui_server: Any, tmp_path: Path
) -> None:
    credentials = ComfyUIServer(url=comfyui_server.url, api_key=COMFYUI_KEY)
    texts = await flow_at_debug(
        credentials, COMFYUI_KEY, tmp_path, empty_to_save(64, prefix="sweep")
    )
    assert any('"comfy.job.completed"' in t for t in texts)
    swept(texts, COMFYUI_KEY)
