"""Cancelling a Prefect flow run cancels its Comfy job.

A deployment of ``run_comfy_workflow`` is served in a subprocess (the runner, as in production)
against the session's Prefect server; the test cancels a running flow run through the Prefect API
and waits for the emulator to report the Comfy job ``cancelled``. The hook is also tested on its
own, for each form the credentials take in a flow run's parameters.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.deployments import run_deployment
from prefect.states import Cancelling

from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
from prefect_comfy.orchestration.flows import cancel_comfy_job_hook, run_comfy_workflow
from prefect_comfy.orchestration.jobs import COMFY_JOB_ID_LABEL
from tests.support.keys import API_KEY
from tests.support.waiting import eventually
from tests.support.workflows import slow_workflow

pytestmark = pytest.mark.prefect

ROOT = Path(__file__).resolve().parents[2]

SERVE = textwrap.dedent(
    """
    import sys
    from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
    from prefect_comfy.orchestration.flows import run_comfy_workflow

    credentials = ComfyCloudCredentials.load(sys.argv[1])
    run_comfy_workflow.serve(name=sys.argv[2], parameters={"credentials": credentials})
    """
)


async def job_status(creds: ComfyCloudCredentials, job_id: str) -> str:
    async with creds.get_client() as client:
        return (await client.get_job(job_id)).status


async def label_of(flow_run_id: uuid.UUID) -> str | None:
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
    return flow_run.labels.get(COMFY_JOB_ID_LABEL)


@pytest.fixture
async def saved_creds(prefect_api_url, emulator) -> tuple[str, ComfyCloudCredentials]:
    name = f"cancel-{uuid.uuid4().hex[:8]}"
    creds = ComfyCloudCredentials(api_key=API_KEY, base_url=emulator.url)
    await creds.save(name)
    return name, await ComfyCloudCredentials.load(name)


@pytest.fixture
def served(prefect_api_url, saved_creds, tmp_path):
    """``run_comfy_workflow`` served in a subprocess; yields the deployment's full name."""
    block_name, _ = saved_creds
    deployment = f"cancel-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api_url,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("COMFY_API_KEY", None)  # the key comes from the saved block only
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, block_name, deployment],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"run-comfy-workflow/{deployment}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        print((tmp_path / "serve.log").read_text()[-8000:])  # shown when the test fails


async def test_cancelling_a_served_flow_run_cancels_the_comfy_job(served, saved_creds):
    _, creds = saved_creds

    async def deployment_ready() -> bool:
        async with get_client() as client:
            try:
                await client.read_deployment_by_name(served)
            except Exception:
                return False
        return True

    await eventually(deployment_ready, timeout=60, interval=0.2, message="the served deployment")
    flow_run = await run_deployment(
        served, parameters={"workflow": slow_workflow(steps=2400)}, timeout=0
    )
    job_id = await eventually(
        lambda: label_of(flow_run.id), timeout=60, interval=0.2, message="the comfy.job-id label"
    )
    await eventually(
        lambda: _is(creds, job_id, "running"), timeout=20, message="the Comfy job running"
    )

    async with get_client() as client:
        await client.set_flow_run_state(flow_run.id, Cancelling(), force=True)

    await eventually(lambda: _is(creds, job_id, "cancelled"), timeout=45, message="job cancelled")

    async def flow_run_cancelled() -> bool:
        async with get_client() as client:
            state = (await client.read_flow_run(flow_run.id)).state
        return state is not None and state.is_cancelled()

    await eventually(flow_run_cancelled, timeout=45, interval=0.2, message="flow run cancelled")


async def _is(creds: ComfyCloudCredentials, job_id: str, status: str) -> bool:
    return await job_status(creds, job_id) == status


# -- the hook alone -------------------------------------------------------------------------------
async def _labelled_flow_run(credentials_parameter, job_id: str):
    async with get_client() as client:
        flow_run = await client.create_flow_run(
            run_comfy_workflow, parameters={"credentials": credentials_parameter, "workflow": {}}
        )
        await client.update_flow_run_labels(flow_run.id, {COMFY_JOB_ID_LABEL: job_id})
        return await client.read_flow_run(flow_run.id)


async def _slow_job(creds: ComfyCloudCredentials) -> str:
    async with creds.get_backend() as backend:
        return (await backend.submit(slow_workflow(steps=2400))).id


@pytest.mark.parametrize("form", ["ref", "fields", "name"])
async def test_the_hook_rebuilds_credentials_and_cancels(saved_creds, emulator, monkeypatch, form):
    name, creds = saved_creds
    parameter = {
        "ref": {"$ref": {"block_document_id": str(creds._block_document_id)}},
        # a flow called directly stores the block's fields, the key masked: it comes from the env
        "fields": {"api_key": "**********", "base_url": emulator.url, "ws_auth": None},
        "name": name,
    }[form]
    if form == "fields":
        monkeypatch.setenv("COMFY_API_KEY", API_KEY)
    job_id = await _slow_job(creds)
    flow_run = await _labelled_flow_run(parameter, job_id)
    await cancel_comfy_job_hook(run_comfy_workflow, flow_run, Cancelling())
    await eventually(lambda: _is(creds, job_id, "cancelled"), timeout=15, message="job cancelled")


async def test_the_hook_without_a_label_does_nothing(saved_creds):
    _, creds = saved_creds
    async with get_client() as client:
        flow_run = await client.create_flow_run(run_comfy_workflow, parameters={})
    await cancel_comfy_job_hook(run_comfy_workflow, flow_run, Cancelling())  # no error
    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]))
        )
    assert API_KEY not in " ".join(log.message for log in logs)


async def _logs_of(flow_run_id: uuid.UUID) -> list:
    async with get_client() as client:
        return await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )


async def test_the_hook_logs_no_error_for_a_job_the_server_no_longer_has(saved_creds):
    # The flow's own cleanup got there first: ComfyUI forgets a prompt deleted from its queue, so
    # the hook (another process) finds no such job. That is nothing to cancel, not an ERROR.
    _, creds = saved_creds
    gone = f"job_gone_{uuid.uuid4().hex[:8]}"
    flow_run = await _labelled_flow_run(
        {"$ref": {"block_document_id": str(creds._block_document_id)}}, gone
    )
    await cancel_comfy_job_hook(run_comfy_workflow, flow_run, Cancelling())

    async def said_gone() -> list:
        logs = await _logs_of(flow_run.id)
        return logs if any("nothing to cancel" in log.message for log in logs) else []

    logs = await eventually(said_gone, timeout=20, message="the hook's 'nothing to cancel' line")
    assert [log.message for log in logs if log.level >= 40] == []
