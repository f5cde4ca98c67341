"""The listener on Comfy API v2 (no account-wide stream), between the emulator's v2 face and a real
Prefect server (the test harness).

Jobs are submitted by another process (raw HTTP, not the project's code) where the server lists
jobs, and through the project's submit task where listing answers 501 (as on Comfy Cloud).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.events.clients import get_events_client
from prefect.events.filters import EventFilter, EventResourceFilter

from prefect_comfy.backends.v2.backend import V2Backend
from prefect_comfy.backends.v2.block import ComfyV2Credentials
from prefect_comfy.listener.cursor import FileCursor
from prefect_comfy.listener.forwarder import ComfyListener
from prefect_comfy.orchestration.events import names as comfy_events
from prefect_comfy.orchestration.tasks import submit_comfy_job
from prefect_comfy_emulator import EmulatorConfig, EmulatorServer
from tests.support.keys import API_KEY
from tests.support.listener_v2 import TERMINAL, Counting
from tests.support.waiting import eventually, scaled
from tests.support.workflows import failing_workflow, slow_workflow, tiny_workflow

pytestmark = pytest.mark.prefect


SUBMITTER = """
import json, sys, httpx
url, key, specs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ids = []
with httpx.Client(base_url=url + "/api/v2", headers={"Authorization": "Bearer " + key}) as http:
    for workflow in specs:
        answer = http.post("/jobs", json={"workflow": workflow, "metadata": {"tag:elsewhere": "1"}})
        answer.raise_for_status()
        ids.append(answer.json()["id"])
print(json.dumps(ids))
"""


def submit_elsewhere(emu: EmulatorServer, workflows: list[dict]) -> list[str]:
    """Submit from another process, with plain HTTP: the listener can only find these by listing."""
    done = subprocess.run(
        [sys.executable, "-c", SUBMITTER, emu.v2_url, API_KEY, json.dumps(workflows)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


async def stored_terminal(job_id: str) -> list[str]:
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(resource=EventResourceFilter(id=[f"comfy.job.{job_id}"])), limit=50
        )
    return [e.event for e in page.events if e.event in TERMINAL]


@contextlib.asynccontextmanager
async def listening(emu: EmulatorServer, counting: Counting, **options: Any) -> AsyncIterator:
    backend = V2Backend(emu.v2_url, API_KEY)
    listener = ComfyListener(backend, heartbeat_interval=None, events_client=counting, **options)
    task = asyncio.create_task(listener.run())
    try:
        await eventually(
            lambda: listener.connected or task.done(), timeout=20, message="listener up"
        )
        yield listener
    finally:
        listener.stop()
        await asyncio.wait_for(task, scaled(30))
        await backend.aclose()


@pytest.fixture
def capped() -> Iterator[EmulatorServer]:
    config = EmulatorConfig(api_keys=[API_KEY], step_duration=0.01, v2_max_streams=3)
    with EmulatorServer(config) as emu:
        yield emu


@pytest.fixture
def cloud_like() -> Iterator[EmulatorServer]:
    config = EmulatorConfig(api_keys=[API_KEY], step_duration=0.01, v2_list_jobs=False)
    with EmulatorServer(config) as emu:
        yield emu


async def cancel(emu: EmulatorServer, job_id: str) -> None:
    async with V2Backend(emu.v2_url, API_KEY) as backend:
        await backend.cancel(job_id)


async def test_listing_v2_forwards_each_outcome_once_with_more_jobs_than_streams(
    prefect_api_url, capped: EmulatorServer, caplog: pytest.LogCaptureFixture
):
    counting = Counting()
    caplog.set_level("INFO", logger="prefect_comfy.listener")
    async with listening(capped, counting) as listener:
        assert listener.follower is not None and listener.follower.mode == "listing"
        assert "follows the jobs found by listing" in caplog.text
        workflows = [slow_workflow(20)] * 6 + [failing_workflow("v2 listener")] * 2
        workflows += [slow_workflow(400), tiny_workflow()]
        ids = await asyncio.to_thread(submit_elsewhere, capped, workflows)
        expected = {job_id: "comfy.job.completed" for job_id in ids[:6] + ids[9:]}
        expected |= {job_id: "comfy.job.failed" for job_id in ids[6:8]}
        expected[ids[8]] = "comfy.job.cancelled"

        # The 20-s job is followed on its own stream whenever the listing round finds it; the
        # 1-s jobs may all end between two rounds (discovery backs off to 5 s), leaving only their
        # outcomes. Its progress is the part of the test that does not depend on that timing.
        def long_job_progress() -> bool:
            return any(
                e.event == "comfy.job.progress" and e.resource.id == f"comfy.job.{ids[8]}"
                for e in counting.sent
            )

        await eventually(long_job_progress, timeout=30, message="the 20-s job's progress sent")
        await cancel(capped, ids[8])

        async def all_sent() -> bool:
            return all(counting.terminal(j) for j in ids)

        await eventually(all_sent, timeout=60, message="every outcome sent")
        for job_id, name in expected.items():
            assert counting.terminal(job_id) == [name], job_id
        progress = [e for e in counting.sent if e.event == "comfy.job.progress"]
        assert progress and all(e.resource.get("comfy.tag.elsewhere") == "true" for e in progress)
        streams = listener.follower.stats
    assert 1 <= capped.v2_stats()["streams_peak"] <= 3
    assert streams["job_streams_opened"] >= 3

    async def all_stored() -> bool:
        return all([await stored_terminal(j) for j in ids])

    await eventually(all_stored, timeout=30, message="every outcome stored in Prefect")
    for job_id, name in expected.items():
        assert await stored_terminal(job_id) == [name]


async def test_without_listing_it_follows_jobs_submitted_through_the_project(
    prefect_api_url, cloud_like: EmulatorServer, caplog: pytest.LogCaptureFixture
):
    creds = ComfyV2Credentials(endpoint=cloud_like.v2_url, api_key=API_KEY)
    tag = f"v2-501-{uuid.uuid4().hex[:8]}"

    @flow
    async def submit_three() -> list[str]:
        jobs = [
            await submit_comfy_job(creds, slow_workflow(10), tags=[tag]),
            await submit_comfy_job(creds, failing_workflow("through the project"), tags=[tag]),
            await submit_comfy_job(creds, tiny_workflow(), tags=[tag]),
        ]
        return [job.id for job in jobs]

    counting = Counting()
    caplog.set_level("INFO", logger="prefect_comfy.listener")
    async with listening(cloud_like, counting) as listener:
        assert listener.follower is not None and listener.follower.mode == "submitted"
        assert "job listing not available (501)" in caplog.text
        assert "only the jobs submitted through prefect-comfy" in caplog.text
        ids = await submit_three()
        [outsider] = await asyncio.to_thread(submit_elsewhere, cloud_like, [tiny_workflow()])

        async def all_sent() -> bool:
            return all(counting.terminal(j) for j in ids)

        await eventually(all_sent, timeout=60, message="the project's jobs' outcomes")
        names = ["comfy.job.completed", "comfy.job.failed", "comfy.job.completed"]
        assert [counting.terminal(j) for j in ids] == [[n] for n in names]
        async with V2Backend(cloud_like.v2_url, API_KEY) as backend:
            await eventually(
                lambda: _ended(backend, outsider), timeout=20, message="the outsider ended"
            )
        rounds = listener.follower.rounds
        await eventually(
            lambda: listener.follower.rounds >= rounds + 2, timeout=30, message="two more rounds"
        )
        assert counting.terminal(outsider) == []  # not submitted through the project: not seen


async def _ended(backend: V2Backend, job_id: str) -> bool:
    return (await backend.get_job(job_id)).is_terminal


async def test_a_restart_with_a_cursor_sends_what_ended_while_down(
    prefect_api_url, capped: EmulatorServer, tmp_path: Path
):
    cursor_path = tmp_path / "cursor.json"
    counting = Counting()
    async with listening(
        capped, counting, cursor=FileCursor(cursor_path), listener_id="v2-restart"
    ) as listener:
        [running] = await asyncio.to_thread(submit_elsewhere, capped, [slow_workflow(60)])
        await eventually(
            lambda: any(
                e.event == "comfy.job.progress" and e.resource.id == f"comfy.job.{running}"
                for e in counting.sent
            ),
            timeout=20,
            message="the running job seen in flight",
        )
        assert listener.follower.following == 1
    assert running in cursor_path.read_text()
    assert counting.terminal(running) == []
    # While no listener runs: the job in flight ends, and a new one is submitted and ends.
    [while_down] = await asyncio.to_thread(submit_elsewhere, capped, [tiny_workflow()])
    async with V2Backend(capped.v2_url, API_KEY) as backend:
        for job_id in (running, while_down):
            await eventually(lambda j=job_id: _ended(backend, j), timeout=30, message=job_id)
    again = Counting()
    async with listening(capped, again, cursor=FileCursor(cursor_path), listener_id="v2-restart"):
        await eventually(
            lambda: again.terminal(running) and again.terminal(while_down),
            timeout=30,
            message="both outcomes after the restart",
        )
        assert again.terminal(running) == ["comfy.job.completed"]
        assert again.terminal(while_down) == ["comfy.job.completed"]


async def test_prefect_comfy_listen_with_a_saved_v2_block(prefect_api_url, capped: EmulatorServer):
    """The command users run: ``prefect-comfy listen --block NAME`` with a ComfyV2Credentials block."""
    name = f"v2-listen-{uuid.uuid4().hex[:8]}"
    await ComfyV2Credentials(endpoint=capped.v2_url, api_key=API_KEY).save(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_")}
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-c", "from prefect_comfy.cli import main; main()", "listen"],
        *["--block", name, "--cursor", "none", "--heartbeat-interval", "0"],
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []

    async def read() -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            lines.append(raw.decode(errors="replace"))

    reader = asyncio.create_task(read())
    try:
        await eventually(
            lambda: (
                any("event stream connected" in line for line in lines)
                or process.returncode is not None
            ),
            timeout=90,
            message="the listener connected",
        )
        text = "".join(lines)
        assert f"Comfy API v2 at {capped.v2_url}: follows the jobs found by listing" in text, text
        [job_id] = await asyncio.to_thread(submit_elsewhere, capped, [slow_workflow(10)])

        async def stored() -> list[str]:
            return await stored_terminal(job_id)

        assert await eventually(stored, timeout=60, message="the outcome in Prefect") == [
            "comfy.job.completed"
        ]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), scaled(30)) == 0, "".join(lines)[-3000:]
        await reader


async def stored_terminal_events(job_id: str) -> list[Any]:
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(resource=EventResourceFilter(id=[f"comfy.job.{job_id}"])), limit=50
        )
    return [e for e in page.events if e.event in TERMINAL]


async def test_a_sigkill_and_restart_loses_and_duplicates_no_outcome(
    prefect_api_url, capped: EmulatorServer, tmp_path: Path
):
    """``prefect-comfy listen`` on v2, killed with SIGKILL while 4 jobs run (one more than the cap of
    streams: one is read in the shared poll) and restarted: jobs that end while it is down, and jobs
    that start and end while it is down, each get exactly one outcome in Prefect, with the id the
    live event would have had."""
    from tests.support.listener_process import ListenerProcess, cursor_ids

    block = f"v2-kill-{uuid.uuid4().hex[:8]}"
    await ComfyV2Credentials(endpoint=capped.v2_url, api_key=API_KEY).save(block)
    cursor = tmp_path / "cursor.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_")}
    listeners = []
    for _ in range(2):
        process = ListenerProcess(capped, cursor, "v2-kill")
        process.args[process.args.index("--name") : process.args.index("--name")] = ["--block", block]  # fmt: skip
        process.env = env
        listeners.append(process)
    first, second = listeners
    async with V2Backend(capped.v2_url, API_KEY) as backend:

        async def status(job_id: str) -> str:
            return (await backend.get_job(job_id)).status

        try:
            await first.start()
            # 4 running jobs: 1 ends before the kill, 2 during the outage, 1 after the restart.
            seconds = [0.5, 4.0, 4.0, 14.0]
            specs = [slow_workflow(int(s / 0.05), step_seconds=0.05) for s in seconds]
            running = await asyncio.to_thread(submit_elsewhere, capped, specs)
            later = set(running[1:])
            await eventually(
                lambda: later <= cursor_ids(cursor), timeout=30, message="3 jobs in the cursor"
            )
            await eventually(
                lambda: _ended(backend, running[0]), timeout=30, message="the first job ended"
            )
            assert await first.end(signal.SIGKILL) == -signal.SIGKILL

            # While no listener runs: jobs start and end, never seen in flight by any listener.
            unseen = await asyncio.to_thread(
                submit_elsewhere, capped, [tiny_workflow(), failing_workflow("oom", code="oom")]
            )

            async def outage_over() -> bool:
                return all([await _ended(backend, j) for j in running[1:3] + unseen])

            await eventually(outage_over, timeout=60, interval=0.1, message="jobs ended while down")
            assert await status(running[-1]) == "running", "too slow a machine"

            await second.start()
            await eventually(
                lambda: _ended(backend, running[-1]), timeout=60, message="the last job ended"
            )
            expected = {j: f"comfy.job.{await status(j)}" for j in running + unseen}

            async def every_outcome_stored() -> bool:
                return all([await stored_terminal_events(j) for j in expected])

            await eventually(
                every_outcome_stored, timeout=60, interval=0.5, message="an outcome for every job"
            )
            assert await second.end(signal.SIGTERM) == 0, second.text[-3000:]
        finally:
            for listener in listeners:
                if listener.process is not None and listener.process.returncode is None:
                    listener.process.kill()
                    await listener.process.wait()
        address = backend.address
    assert expected[unseen[-1]] == "comfy.job.failed"
    for job_id, name in expected.items():
        stored = await stored_terminal_events(job_id)
        assert [e.event for e in stored] == [name], (job_id, stored)
        assert stored[0].id == comfy_events.event_id(address, name, f"comfy.job.{job_id}")
    assert API_KEY not in first.text + second.text


async def test_without_listing_a_restart_looks_back_to_the_cursor_watermark(
    prefect_api_url, cloud_like: EmulatorServer, tmp_path: Path
):
    """On Comfy Cloud (501) a job submitted through the project 30 minutes before a restart, and
    ended while no listener ran, gets its outcome: the submitted events are read back from the
    cursor's watermark, not only from 10 minutes before the start."""
    from datetime import datetime, timedelta

    from prefect.events import Event

    from prefect_comfy.listener.cursor import CursorState

    async with V2Backend(cloud_like.v2_url, API_KEY) as backend:
        job = await backend.submit(tiny_workflow())
        await eventually(lambda: _ended(backend, job.id), timeout=30, message="the job ended")
        address = backend.address
    now = datetime.now(UTC)
    submitted = Event(
        event="comfy.job.submitted",
        occurred=now - timedelta(minutes=30),
        resource={"prefect.resource.id": f"comfy.job.{job.id}", "comfy.backend": "v2"},
    )
    async with get_events_client() as client:
        await client.emit(submitted)

    async def stored() -> bool:
        async with get_client() as prefect:
            page = await prefect.read_events(
                filter=EventFilter(resource=EventResourceFilter(id=[f"comfy.job.{job.id}"])),
                limit=5,
            )
        return any(e.id == submitted.id for e in page.events)

    await eventually(stored, timeout=30, message="the old submitted event in Prefect")
    cursor = FileCursor(tmp_path / "cursor.json")
    await cursor.save(CursorState(address, [], now - timedelta(minutes=40)))
    counting = Counting()
    async with listening(cloud_like, counting, cursor=cursor) as listener:
        assert listener.follower is not None
        await eventually(
            lambda: counting.terminal(job.id), timeout=30, message="the old job's outcome"
        )
    assert counting.terminal(job.id) == ["comfy.job.completed"]
