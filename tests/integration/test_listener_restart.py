"""Restart: the listener killed with SIGKILL and restarted while jobs end loses no terminal event.

A killed listener used to forget what it saw in flight: after a SIGKILL during 10 running jobs and a
restart, the jobs that ended during the outage never got a terminal event (issue 11, item 5). Here
the listener runs as the command users run (a subprocess, ``prefect-comfy listen``) with a cursor
file; it is killed while 10 jobs run, and while it is down some of those jobs end, and more jobs and
an upload start *and* end (never seen by any listener). After the restart every job and the upload
must have exactly one terminal event in Prefect, with the deterministic id the live event has.
"""

from __future__ import annotations

import re
import signal
import uuid
from datetime import UTC
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventResourceFilter

from prefect_comfy.models import STATUS_EVENT
from prefect_comfy.orchestration.events import names as comfy_events
from prefect_comfy_emulator import EmulatorConfig, EmulatorServer
from tests.support.keys import API_KEY
from tests.support.listener_process import ListenerProcess, cursor_ids
from tests.support.waiting import eventually
from tests.support.workflows import failing_workflow, slow_workflow, tiny_workflow

pytestmark = pytest.mark.prefect

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture(scope="module")
def restart_emulator():
    """An emulator of its own, running 16 jobs at once (10 must run together)."""
    config = EmulatorConfig(
        api_keys=[API_KEY], seed=5, step_duration=0.01, upload_duration=0.05, concurrency=16
    )
    with EmulatorServer(config) as server:
        yield server


def comfy_http(emulator: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=emulator.api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    )


async def submit(http: httpx.AsyncClient, workflow: dict, tag: str) -> str:
    response = await http.post("/jobs", json={"workflow": workflow, "tags": [tag]})
    assert response.status_code == 202, response.text
    return response.json()["id"]


async def status(http: httpx.AsyncClient, kind: str, rid: str) -> str:
    response = await http.get(f"/{kind}s/{rid}")
    assert response.status_code == 200, response.text
    return response.json()["status"]


async def terminal_events(resource_id: str) -> list[Any]:
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(resource=EventResourceFilter(id=[resource_id])), limit=50
        )
    return [e for e in page.events if e.event != comfy_events.JOB_PROGRESS]


async def test_sigkill_and_restart_loses_and_duplicates_no_terminal_event(
    restart_emulator, prefect_api_url, tmp_path
):
    emulator = restart_emulator
    tag = f"restart{uuid.uuid4().hex[:8]}"
    cursor = tmp_path / "cursor.json"
    name = f"restart-{uuid.uuid4().hex[:6]}"
    first = ListenerProcess(emulator, cursor, name)
    second = ListenerProcess(emulator, cursor, name)
    try:
        await first.start()
        async with comfy_http(emulator) as http:
            # 10 running jobs: 3 end before the kill, 4 during the outage, 3 after the restart.
            seconds = [0.5] * 3 + [4.0] * 4 + [14.0] * 3
            running = [
                await submit(http, slow_workflow(int(s / 0.05), step_seconds=0.05), tag)
                for s in seconds
            ]
            later = set(running[3:])
            await eventually(
                lambda: later <= cursor_ids(cursor), timeout=30, message="7 jobs in the cursor"
            )
            assert await first.end(signal.SIGKILL) == -signal.SIGKILL

            # While no listener runs: jobs and an upload start and end, never seen in flight.
            unseen = [await submit(http, tiny_workflow(f"{tag}{i}"), tag) for i in range(3)]
            unseen.append(await submit(http, failing_workflow("out of VRAM", code="oom"), tag))
            upload = await http.post(
                "/inputs",
                files={"file": ("during-outage.png", PNG, "image/png")},
                data={"name": "during-outage.png", "tags": tag},
            )
            assert upload.status_code == 201, upload.text
            input_id = upload.json()["id"]

            async def outage_over() -> bool:
                ended = [await status(http, "job", j) for j in running[3:7] + unseen]
                ready = await status(http, "input", input_id)
                return all(s in ("completed", "failed") for s in ended) and ready == "ready"

            await eventually(outage_over, timeout=60, interval=0.1, message="jobs ended while down")
            assert await status(http, "job", running[-1]) == "running", "too slow a machine"

            await second.start()

            async def all_ended() -> bool:
                states = [await status(http, "job", j) for j in running + unseen]
                return all(s in ("completed", "failed") for s in states)

            await eventually(all_ended, timeout=90, interval=0.2, message="every job ended")
            expected = {
                comfy_events.resource_id("job", j): STATUS_EVENT[
                    ("job", await status(http, "job", j))
                ]
                for j in running + unseen
            }
        expected[comfy_events.resource_id("input", input_id)] = "input.ready"

        async def every_terminal_event_stored() -> bool:
            for rid in expected:
                if not await terminal_events(rid):
                    return False
            return True

        # The second listener may still be sending: wait for every event, then stop it.
        await eventually(
            every_terminal_event_stored,
            timeout=60,
            interval=0.5,
            message="a terminal event for every job and the upload",
        )
        assert await second.end(signal.SIGTERM) == 0, second.text[-3000:]
    finally:
        for listener in (first, second):
            if listener.process is not None and listener.process.returncode is None:
                listener.process.kill()
                await listener.process.wait()

    for rid, name in expected.items():
        stored = await terminal_events(rid)
        event_name = comfy_events.prefect_event_name(name)
        assert [e.event for e in stored] == [event_name], (rid, stored)
        assert stored[0].id == comfy_events.event_id(emulator.url, event_name, rid)
    failed = await terminal_events(comfy_events.resource_id("job", unseen[-1]))
    assert failed[0].payload["error"]["code"] == "oom"

    text = first.text + second.text
    assert API_KEY not in text
    summary = re.search(r"reconciled=(\d+) .* caught_up=(\d+)", second.text)
    assert summary, second.text[-3000:]
    reconciled, caught_up = map(int, summary.groups())
    # The 4 jobs that ended during the outage came from the cursor, the 5 never seen from the
    # catch-up by time (a repeat of one the first listener had sent is possible and harmless).
    assert caught_up >= 5, second.text[-3000:]
    assert reconciled >= 4 + caught_up, second.text[-3000:]


async def test_a_prefect_variable_holds_the_cursor(prefect_api_url):
    from datetime import datetime

    from prefect_comfy.listener.cursor import CursorState, VariableCursor

    cursor = VariableCursor(f"comfy-cursor-{uuid.uuid4().hex[:8]}")
    assert await cursor.load() is None
    when = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    first = CursorState("http://127.0.0.1:1", [("job", "job_1", "running")], when, [("job", "j0")])
    await cursor.save(first)
    second = CursorState("http://127.0.0.1:1", [("model", "mod_1", "uploading")], when)
    await cursor.save(second)  # replaces the first
    assert await cursor.load() == second
