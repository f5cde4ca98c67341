"""The Prefect layer on the Comfy API v2 backend, against the emulator's v2 face.

These wait through the waiting layer's per-job streams (``capabilities.per_job_streams``): they need
the waiting layer's side of the interface (branch ``v2wait``) as well as this backend.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventResourceFilter

from prefect_comfy.backends.v2.backend import V2Backend
from prefect_comfy.backends.v2.block import ComfyV2Credentials
from prefect_comfy.exceptions import JobCancelled, JobFailed, JobTimedOut
from prefect_comfy.orchestration.flows import run_comfy_workflow
from prefect_comfy.orchestration.jobs import ComfyJobResult
from prefect_comfy.orchestration.tasks import cancel_comfy_job, submit_comfy_job, wait_for_comfy_job
from prefect_comfy.waiting.waits import wait_for
from prefect_comfy_emulator import EmulatorConfig, EmulatorServer
from tests.support.keys import API_KEY
from tests.support.waiting import eventually
from tests.support.workflows import failing_workflow, slow_workflow, tiny_workflow

pytestmark = pytest.mark.prefect


@pytest.fixture
def creds(emulator) -> ComfyV2Credentials:
    return ComfyV2Credentials(endpoint=emulator.v2_url, api_key=API_KEY)


async def status_of(creds: ComfyV2Credentials, job_id: str) -> str:
    async with creds.get_backend() as backend:
        return (await backend.get_job(job_id)).status


async def stored_events(job_id: str) -> list:
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(resource=EventResourceFilter(id=[f"comfy.job.{job_id}"])), limit=50
        )
    return page.events


async def test_run_comfy_workflow_completes_with_v2_events(prefect_api_url, creds, tmp_path: Path):
    state = await asyncio.to_thread(
        run_comfy_workflow,
        creds,
        slow_workflow(10),
        tags=["on-v2"],
        output_dir=str(tmp_path),
        return_state=True,
    )
    assert state.is_completed(), state
    result = await state.result()
    assert isinstance(result, ComfyJobResult) and result.status == "completed"
    assert result.outputs[0].path.read_bytes().startswith(b"\x89PNG")
    wanted = {"comfy.job.submitted", "comfy.job.completed"}

    async def names() -> set[str] | None:
        found = {e.event for e in await stored_events(result.job_id)}
        return found if wanted <= found else None

    await eventually(names, timeout=30, message="the flow's Prefect events")
    for event in await stored_events(result.job_id):
        assert event.resource["comfy.backend"] == "v2"
        assert API_KEY not in event.model_dump_json()


async def test_run_comfy_workflow_fails_with_node_and_class(prefect_api_url, creds):
    state = await asyncio.to_thread(
        run_comfy_workflow, creds, failing_workflow("v2 kaboom"), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(JobFailed) as info:
        await state.result()
    assert info.value.node_id == "1"
    assert "EmulatorFail" in str(info.value) and "v2 kaboom" in str(info.value)


async def test_run_comfy_workflow_times_out_and_cancels_the_job(prefect_api_url, creds):
    state = await asyncio.to_thread(
        run_comfy_workflow, creds, slow_workflow(steps=600), timeout=0.5, return_state=True
    )
    with pytest.raises(JobTimedOut) as info:
        await state.result()
    job_id = info.value.job_id

    async def cancelled() -> bool:
        return await status_of(creds, job_id) == "cancelled"

    await eventually(cancelled, timeout=15, message="the job canceled")


async def test_a_job_cancelled_from_prefect_ends_canceled(prefect_api_url, creds):
    @flow
    async def submit_then_cancel() -> str:
        job = await submit_comfy_job(creds, slow_workflow(steps=600))
        await cancel_comfy_job(creds, job)
        await wait_for_comfy_job(creds, job.id, timeout=30)
        return job.id

    state = await submit_then_cancel(return_state=True)
    with pytest.raises(JobCancelled) as info:
        await state.result()
    assert await status_of(creds, info.value.job_id) == "cancelled"


async def test_a_5xx_after_the_job_was_created_then_a_task_retry_is_one_job(
    prefect_api_url, creds, emulator, monkeypatch
):
    monkeypatch.setenv("COMFY_MAX_RETRIES", "0")  # the Prefect retry, not the client's, retries
    emulator.inject_faults(status=503, count=1, path="/jobs", when="after")
    tag = f"v2-retry-{uuid.uuid4().hex[:8]}"
    quick = submit_comfy_job.with_options(retry_delay_seconds=0)

    @flow
    async def submit_once():
        return await quick(creds, tiny_workflow("retry"), tags=[tag], return_state=True)

    task_state = await submit_once()
    job = await task_state.result()
    async with get_client() as client:
        task_run = await client.read_task_run(task_state.state_details.task_run_id)
    assert task_run.run_count == 2  # the first attempt got the injected 503
    async with creds.get_backend() as backend:
        listed = await backend._list_jobs({f"tag:{tag}": "1"})
    assert [j.id for j in listed] == [job.id]


@pytest.fixture
def capped() -> Iterator[EmulatorServer]:
    config = EmulatorConfig(api_keys=[API_KEY], step_duration=0.01, v2_max_streams=8)
    with EmulatorServer(config) as emu:
        yield emu


async def test_200_concurrent_waits_through_at_most_8_streams(capped: EmulatorServer):
    async with V2Backend(capped.v2_url, API_KEY) as backend:
        jobs = await asyncio.gather(
            *(backend.submit(slow_workflow(4) if i % 2 else tiny_workflow()) for i in range(200))
        )
        ends = await asyncio.wait_for(
            asyncio.gather(*(wait_for(backend, "job", job.id, timeout=120) for job in jobs)), 150
        )
    assert [e.event for e in ends] == ["job.completed"] * 200
    stats = capped.v2_stats()
    assert 1 <= stats["streams_peak"] <= 8
