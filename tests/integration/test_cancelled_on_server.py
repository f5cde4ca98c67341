"""A Comfy job cancelled on the Comfy side ends ``run_comfy_workflow``'s flow run Cancelled.

Issue 11 item 7: a cancel from Prefect ended the flow run Cancelled, a cancel on the server (the
Comfy API from another client, ComfyUI's own interrupt) ended it Failed with ``JobCancelled``. Both
now end Cancelled; the waiting tasks still raise ``JobCancelled``. Real Prefect (the test
harness), the emulator over real sockets; the cancel comes from another client.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.exceptions import CancelledRun

from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
from prefect_comfy.orchestration.flows import run_comfy_workflow
from tests.support.keys import API_KEY
from tests.support.waiting import eventually, scaled
from tests.support.workflows import slow_workflow

pytestmark = pytest.mark.prefect


@pytest.fixture
def creds(emulator) -> ComfyCloudCredentials:
    return ComfyCloudCredentials(api_key=API_KEY, base_url=emulator.url)


async def cancel_when_running(creds: ComfyCloudCredentials, tag: str) -> str:
    """Another client: find the tagged job once it runs and cancel it through the Comfy API."""

    async def running() -> str | None:
        async with creds.get_client() as client:
            page = await client.list_jobs(tags=[tag])
        return next((j.id for j in page.items if j.status == "running"), None)

    job_id = await eventually(running, timeout=60, interval=0.1, message="the job running")
    async with creds.get_client() as client:
        await client.cancel_job(job_id)
    return job_id


async def test_a_cancel_on_the_server_ends_the_flow_run_cancelled(prefect_api_url, creds):
    tag = f"srvcancel-{uuid.uuid4().hex[:8]}"
    run = asyncio.create_task(
        asyncio.to_thread(
            run_comfy_workflow,
            creds,
            slow_workflow(steps=600),
            tags=[tag],
            timeout=60,
            return_state=True,
        )
    )
    job_id = await cancel_when_running(creds, tag)
    state = await asyncio.wait_for(run, scaled(60))
    assert state.is_cancelled(), state
    assert job_id in state.message and "cancelled on the Comfy server" in state.message
    async with get_client() as client:
        stored = await client.read_flow_run(state.state_details.flow_run_id)
    assert stored.state is not None and stored.state.is_cancelled(), stored.state


async def test_a_parent_flow_sees_cancelled_run(prefect_api_url, creds):
    tag = f"srvcancel-parent-{uuid.uuid4().hex[:8]}"
    seen: list[BaseException] = []

    @flow
    def parent() -> str:
        try:
            run_comfy_workflow(creds, slow_workflow(steps=600), tags=[tag], timeout=60)
        except CancelledRun as exc:
            seen.append(exc)
            raise
        return "not reached"

    @flow
    def tolerant_parent() -> str:
        state = run_comfy_workflow(
            creds, slow_workflow(steps=600), tags=[tag + "-t"], timeout=60, return_state=True
        )
        return state.type.value

    run = asyncio.create_task(asyncio.to_thread(parent, return_state=True))
    await cancel_when_running(creds, tag)
    state = await asyncio.wait_for(run, scaled(60))
    # Calling the subflow raises CancelledRun; left uncaught, it fails the parent (Prefect's rule
    # for any exception of a subflow call), with the subflow's message.
    assert len(seen) == 1 and "cancelled on the Comfy server" in str(seen[0])
    assert state.is_failed() and "CancelledRun" in (state.message or ""), state

    run = asyncio.create_task(asyncio.to_thread(tolerant_parent, return_state=True))
    await cancel_when_running(creds, tag + "-t")
    state = await asyncio.wait_for(run, scaled(60))
    assert state.is_completed() and await state.result() == "CANCELLED"
