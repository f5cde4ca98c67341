"""The Prefect layer under a real Prefect server (the test harness) against the emulator.

Blocks are saved and loaded through the server; ``run_comfy_workflow`` and the tasks run as real
flow runs over real sockets; what they leave (labels, events, the Comfy job's state) is read back.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)

from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
from prefect_comfy.exceptions import AuthenticationError, InvalidWorkflow, JobFailed, JobTimedOut
from prefect_comfy.orchestration.artifacts import artifact_key
from prefect_comfy.orchestration.events import names as events
from prefect_comfy.orchestration.flows import run_comfy_workflow
from prefect_comfy.orchestration.jobs import COMFY_JOB_ID_LABEL, ComfyJobResult, ComfyWorkflow
from prefect_comfy.orchestration.tasks import submit_comfy_job
from tests.support.keys import API_KEY, WRONG_KEY
from tests.support.waiting import eventually
from tests.support.workflows import failing_workflow, slow_workflow, tiny_workflow

pytestmark = pytest.mark.prefect

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def creds(emulator) -> ComfyCloudCredentials:
    return ComfyCloudCredentials(api_key=API_KEY, base_url=emulator.url)


async def job_status(creds: ComfyCloudCredentials, job_id: str) -> str:
    async with creds.get_client() as client:
        return (await client.get_job(job_id)).status


async def read_submitted(job_id: str) -> list:
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(
                occurred=EventOccurredFilter(since=datetime.now(UTC) - timedelta(minutes=10)),
                event=EventNameFilter(name=[events.JOB_SUBMITTED]),
                resource=EventResourceFilter(id=[f"comfy.job.{job_id}"]),
            ),
            limit=50,
        )
    return page.events


# -- blocks -------------------------------------------------------------------------------------
async def test_credentials_round_trip_hides_the_key(prefect_api_url, emulator) -> None:
    name = f"creds-{uuid.uuid4().hex[:8]}"
    block = ComfyCloudCredentials(api_key=API_KEY, base_url=emulator.url, ws_auth="query")
    await block.save(name)
    loaded = await ComfyCloudCredentials.load(name)
    assert loaded.api_key.get_secret_value() == API_KEY
    assert (loaded.base_url, loaded.ws_auth) == (emulator.url, "query")
    for text in (repr(loaded), str(loaded), loaded.model_dump_json()):
        assert API_KEY not in text
    async with get_client() as client:
        doc = await client.read_block_document_by_name(
            name, block_type_slug="comfy-cloud-credentials", include_secrets=False
        )
    assert doc.data["api_key"] == "********"
    assert API_KEY not in repr(doc) and API_KEY not in str(doc.data)
    async with loaded.get_client() as client:  # the loaded block works
        assert (await client.list_jobs(limit=1)).total >= 0


async def test_workflow_block_round_trip(prefect_api_url, creds) -> None:
    name = f"wf-{uuid.uuid4().hex[:8]}"
    await ComfyWorkflow(credentials=creds, workflow=tiny_workflow(), tags=["rt"], timeout=5).save(
        name
    )
    loaded = await ComfyWorkflow.load(name)
    assert loaded.workflow == tiny_workflow() and loaded.tags == ["rt"] and loaded.timeout == 5
    assert loaded.credentials.api_key.get_secret_value() == API_KEY


async def test_workflow_block_round_trip_keeps_the_kind_of_server(prefect_api_url) -> None:
    from prefect_comfy.backends.comfyui.block import ComfyUIServer

    name = f"wf-ui-{uuid.uuid4().hex[:8]}"
    server = ComfyUIServer(url="http://127.0.0.1:8188")
    await ComfyWorkflow(credentials=server, workflow=tiny_workflow()).save(name)
    loaded = await ComfyWorkflow.load(name)
    assert isinstance(loaded.credentials, ComfyUIServer)
    assert loaded.credentials.url == "http://127.0.0.1:8188"


async def test_blocks_are_found_by_register(prefect_api_url) -> None:
    from prefect.cli.block import _register_blocks_in_module  # `prefect block register -m`

    import prefect_comfy

    registered = await _register_blocks_in_module(prefect_comfy)
    assert {b.__name__ for b in registered} >= {"ComfyCloudCredentials", "ComfyWorkflow"}
    # exactly the package's four blocks: no stray JobBlock[ComfyJobResult] in the catalog
    assert sorted(b.get_block_type_slug() for b in registered) == [
        "comfy-cloud-credentials",
        "comfy-v2-credentials",
        "comfy-workflow",
        "comfyui-server",
    ]
    async with get_client() as client:
        block_type = await client.read_block_type_by_slug("comfy-cloud-credentials")
    assert block_type.name == "Comfy Cloud Credentials"


def test_a_prefect_server_registers_the_blocks_of_the_entry_point(tmp_path) -> None:
    """``prefect server start`` registers the blocks of the module that pyproject.toml's
    ``prefect.collections`` entry point names (``import prefect_comfy`` alone defines none: its
    names are imported on first use); ``prefect block register -m prefect_comfy`` registers them
    too. The entry point is read from this checkout's pyproject.toml, through a distribution's
    metadata found first on the server's path (the installed one may be older)."""
    import sys
    import tomllib

    import httpx

    from tests.support.prefect_stack import ROOT, prefect_stack
    from tests.support.waiting import scaled

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    points = project["entry-points"]["prefect.collections"]
    metadata = tmp_path / "path" / f"prefect_comfy-{project['version']}.dist-info"
    metadata.mkdir(parents=True)
    (metadata / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: prefect-comfy\nVersion: {project['version']}\n"
    )
    (metadata / "entry_points.txt").write_text(
        "[prefect.collections]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
    )
    slugs = ["comfy-cloud-credentials", "comfy-v2-credentials", "comfy-workflow", "comfyui-server"]
    with prefect_stack(
        tmp_path / "home", start_timeout=scaled(90), pythonpath=(tmp_path / "path",)
    ) as stack:
        for slug in slugs:
            answer = httpx.get(f"{stack.api_url}/block_types/slug/{slug}", timeout=30)
            assert answer.status_code == 200, (slug, answer.text, stack.logs()[-3000:])
        out = stack.run(
            [sys.executable, "-m", "prefect", "block", "register", "-m", "prefect_comfy"]
        )
    assert "Successfully registered 4 blocks" in out, out


# -- the flow -----------------------------------------------------------------------------------
async def test_flow_completes_with_local_pngs_label_and_event(prefect_api_url, creds, tmp_path):
    state = await asyncio.to_thread(
        run_comfy_workflow,
        creds,
        tiny_workflow("flow"),
        tags=["flow-test"],
        output_dir=str(tmp_path),
        return_state=True,
    )
    assert state.is_completed(), state
    result = await state.result()
    assert isinstance(result, ComfyJobResult) and result.status == "completed"
    assert result.tags == ["flow-test"] and result.outputs
    for output in result.outputs:
        assert output.path.parent == tmp_path
        assert output.path.read_bytes().startswith(b"\x89PNG")
        assert output.type == "image" and output.name and output.url
        assert API_KEY not in output.url

    flow_run_id = state.state_details.flow_run_id
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
    assert flow_run.labels[COMFY_JOB_ID_LABEL] == result.job_id
    async with creds.get_client() as client:
        job = await client.get_job(result.job_id)
    assert events.FLOW_RUN_TAG_PREFIX + str(flow_run_id) in job.tags

    (submitted,) = await eventually(
        lambda: read_submitted(result.job_id), timeout=20, message="comfy.job.submitted"
    )
    related = {r.id for r in submitted.related}
    assert f"prefect.flow-run.{flow_run_id}" in related
    assert API_KEY not in submitted.model_dump_json()


async def read_run_artifacts(flow_run_id: uuid.UUID) -> list:
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


async def test_the_flow_run_has_its_own_progress_and_milestones(prefect_api_url, creds, tmp_path):
    # Issue 19, item 8: the progress was only a task run's artifact (key 'comfy-job-job-…', the
    # description starting with 'Progress of'), and the flow run's log never said how far it was.
    state = await asyncio.to_thread(
        run_comfy_workflow,
        creds,
        # 5 s: the tenths are logged as the progress is written (at most once a second), so a
        # job of 1 s could say only 0 and 100 (seen on a quick run).
        slow_workflow(steps=50, step_seconds=0.1),
        output_dir=str(tmp_path),
        return_state=True,
    )
    assert state.is_completed(), state
    result = await state.result()
    flow_run_id = state.state_details.flow_run_id

    async def progress_artifacts() -> list:
        found = await read_run_artifacts(flow_run_id)
        return [a for a in found if a.type == "progress" and a.data == 100]

    (artifact,) = await eventually(progress_artifacts, timeout=30, message="progress artifact")
    assert artifact.task_run_id is None  # the flow run's own, shown on its page
    assert artifact.key == artifact_key("job", result.job_id)
    assert "job-job" not in artifact.key
    assert artifact.description.startswith("100% · completed · job ")
    assert len(artifact.description) <= 40

    async def milestone_logs() -> list[int]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        found = [MILESTONE.match(log.message) for log in logs]
        tenths = [int(m.group(2)) for m in found if m and m.group(1) == result.job_id]
        return tenths if tenths and tenths[-1] == 100 else []

    tenths = await eventually(milestone_logs, timeout=30, message="milestone log lines")
    assert tenths[0] == 0 and tenths[-1] == 100
    assert tenths == sorted(set(tenths)), tenths  # in order, each at most once
    assert all(t % 10 == 0 for t in tenths)
    assert len(tenths) >= 3, tenths  # 20 steps: some tenths between the start and the end


MILESTONE = re.compile(r"^Comfy job (\S+): (\d+)%")


async def test_a_failed_job_fails_the_flow_with_the_comfy_error(prefect_api_url, creds):
    state = await asyncio.to_thread(
        run_comfy_workflow, creds, failing_workflow("kaboom", code="E42"), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(JobFailed) as info:
        await state.result()
    assert info.value.error_code == "E42" and "kaboom" in (info.value.error_message or "")


async def test_a_timed_out_wait_cancels_the_comfy_job(prefect_api_url, creds):
    state = await asyncio.to_thread(
        run_comfy_workflow, creds, slow_workflow(steps=600), timeout=0.5, return_state=True
    )
    with pytest.raises(JobTimedOut) as info:
        await state.result()
    job_id = info.value.job_id
    await eventually(lambda: _is(creds, job_id, "cancelled"), timeout=15, message="job cancelled")


PREFECT_TIMEOUT_SCRIPT = """
import os, sys
from prefect_comfy import ComfyCloudCredentials, run_comfy_workflow
from tests.support.workflows import slow_workflow

creds = ComfyCloudCredentials(api_key=os.environ["TEST_COMFY_KEY"], base_url=sys.argv[1])
run_comfy_workflow.with_options(timeout_seconds=2)(creds, slow_workflow(steps=600), tags=[sys.argv[2]])
"""


async def test_a_prefect_timeout_cancels_the_comfy_job(prefect_api_url, creds, emulator):
    # In a process of its own, as under a worker: the flow runs in the main thread, and a wait
    # task that outlives the flow (seen in-process, see the report) cannot hang the test session.
    tag = f"ptimeout-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TEST_COMFY_KEY": API_KEY, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", PREFECT_TIMEOUT_SCRIPT, emulator.url, tag],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        async def cancelled_job() -> str | None:
            async with creds.get_client() as client:
                page = await client.list_jobs(tags=[tag])
            return next((j.id for j in page.items if j.status == "cancelled"), None)

        job_id = await eventually(cancelled_job, timeout=60, interval=0.2, message="job cancelled")
        flow_run_id = tag_of(job_id, await job_tags(creds, job_id))
        async with get_client() as client:
            flow_run = await client.read_flow_run(uuid.UUID(flow_run_id))
        assert flow_run.labels[COMFY_JOB_ID_LABEL] == job_id

        async def finally_logged() -> bool:
            async with get_client() as client:
                logs = await client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]))
                )
            return any("stopped before its Comfy job ended" in log.message for log in logs)

        await eventually(
            finally_logged, timeout=30, message="the flow's finally cancelling the job"
        )
    finally:
        proc.kill()
        proc.wait(10)


IN_THREAD_TIMEOUT_SCRIPT = """
import os, sys, threading
from prefect_comfy import ComfyCloudCredentials, run_comfy_workflow
from tests.support.workflows import slow_workflow

creds = ComfyCloudCredentials(api_key=os.environ["TEST_COMFY_KEY"], base_url=sys.argv[1])
timed = run_comfy_workflow.with_options(timeout_seconds=2)
for i in range(int(sys.argv[2])):
    states = []
    worker = threading.Thread(
        target=lambda: states.append(
            timed(creds, slow_workflow(steps=600), timeout=15, return_state=True)
        )
    )
    worker.start()
    worker.join(40)
    if worker.is_alive():
        print("hung", i, flush=True)
        os._exit(3)
    print("ended", i, states[0].type.value, flush=True)
"""


async def test_a_prefect_timeout_in_a_worker_thread_does_not_hang_the_flow_run(
    prefect_api_url, emulator
):
    # In-process, from a worker thread: the flow's finally cancels the job, the wait task sees
    # `job.cancelled` while a progress event is still waking its reporter, and the task runner's
    # shutdown waits for that task's thread. Its reporter used to lose the cancellation
    # (asyncio.wait_for on 3.11) and the flow run hung in about 1 run of 3. In a subprocess with a
    # deadline, so that a hang fails the test instead of the session.
    runs = 3
    env = {**os.environ, "TEST_COMFY_KEY": API_KEY, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", IN_THREAD_TIMEOUT_SCRIPT, emulator.url, str(runs)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        out, _ = await asyncio.to_thread(proc.communicate, timeout=40 * runs + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the subprocess did not exit (a wait task's thread hung): {out!r}")
    assert proc.returncode == 0, out
    ended = [line.split() for line in out.splitlines() if line.startswith("ended")]
    assert len(ended) == runs and all(state == "FAILED" for _, _, state in ended), out


async def job_tags(creds: ComfyCloudCredentials, job_id: str) -> list[str]:
    async with creds.get_client() as client:
        return (await client.get_job(job_id)).tags


def tag_of(job_id: str, tags: list[str]) -> str:
    flow_run_id = events.flow_run_id_from_tags(tags)
    assert flow_run_id, f"job {job_id} has no flow-run tag: {tags}"
    return flow_run_id


async def test_an_invalid_workflow_fails_before_any_request(prefect_api_url, creds):
    state = await asyncio.to_thread(
        run_comfy_workflow, creds, {"1": {"inputs": {}}}, return_state=True
    )
    with pytest.raises(InvalidWorkflow):
        await state.result()


async def test_no_job_created_means_nothing_to_cancel_and_no_flow_run_id_as_job(
    prefect_api_url, emulator
):
    # The submit fails (here the key is refused; an unreachable server fails the same way, after
    # its retries): no Comfy job exists, so the flow must not try to cancel one, let alone log
    # "Could not cancel Comfy job <the flow run's id>".
    creds = ComfyCloudCredentials(api_key=WRONG_KEY, base_url=emulator.url)
    state = await asyncio.to_thread(
        run_comfy_workflow, creds, tiny_workflow("no-job"), return_state=True
    )
    with pytest.raises(AuthenticationError):
        await state.result()
    flow_run_id = state.state_details.flow_run_id

    async def final_logs() -> list:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        return logs if any("Finished in state" in log.message for log in logs) else []

    logs = await eventually(final_logs, timeout=30, message="the flow run's last log line")
    for log in logs:
        assert "cancel" not in log.message.lower(), log.message
        assert not (str(flow_run_id) in log.message and "Comfy job" in log.message), log.message


async def _is(creds: ComfyCloudCredentials, job_id: str, status: str) -> bool:
    return await job_status(creds, job_id) == status


# -- the submit task and Prefect retries ----------------------------------------------------------
@flow
async def submit_once(creds: ComfyCloudCredentials, workflow: dict[str, Any], tag: str):
    quick = submit_comfy_job.with_options(retry_delay_seconds=0)
    return await quick(creds, workflow, tags=[tag], return_state=True)


async def test_a_retried_submit_creates_one_job(prefect_api_url, creds, emulator, monkeypatch):
    monkeypatch.setenv("COMFY_MAX_RETRIES", "0")  # the Prefect retry, not the client's, retries
    emulator.inject_faults(status=500, count=1, path="/developer/api/v1/jobs", when="after")
    tag = f"retry-{uuid.uuid4().hex[:8]}"
    task_state = await submit_once(creds, tiny_workflow("retry"), tag)
    job = await task_state.result()
    async with get_client() as client:
        task_run = await client.read_task_run(task_state.state_details.task_run_id)
    assert task_run.run_count == 2  # the first attempt got the injected 500
    async with creds.get_client() as client:
        page = await client.list_jobs(tags=[tag])
    assert page.total == 1 and page.items[0].id == job.id


# -- the job block --------------------------------------------------------------------------------
def test_job_block_sync_twins_in_a_plain_thread(prefect_api_url, creds, tmp_path) -> None:
    block = ComfyWorkflow(
        credentials=creds, workflow=tiny_workflow("block"), tags=["block"], output_dir=str(tmp_path)
    )
    box: dict[str, Any] = {}

    def script() -> None:
        try:
            run = block.trigger()
            run.wait_for_completion()
            box["result"] = run.fetch_result()
        except BaseException as exc:  # pragma: no cover - reported below
            box["error"] = exc

    thread = threading.Thread(target=script)
    thread.start()
    thread.join(60)
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert result.status == "completed" and result.tags == ["block"]
    assert result.paths and result.paths[0].read_bytes().startswith(b"\x89PNG")


async def test_job_block_failed_and_timed_out(prefect_api_url, creds) -> None:
    failing = ComfyWorkflow(credentials=creds, workflow=failing_workflow("bad", code="E7"))
    run = await failing.atrigger()
    await run.await_for_completion()
    with pytest.raises(JobFailed) as info:
        await run.afetch_result()
    assert info.value.error_code == "E7"

    slow = ComfyWorkflow(credentials=creds, workflow=slow_workflow(steps=600), timeout=0.3)
    run = await slow.atrigger()
    with pytest.raises(JobTimedOut):
        await run.await_for_completion()
    await eventually(lambda: _is(creds, run.job_id, "cancelled"), timeout=15, message="cancelled")


@flow
def trigger_in_a_flow(block: ComfyWorkflow) -> list[str]:
    run = block.trigger()
    run.wait_for_completion()
    return run.job.tags


async def test_job_block_inside_a_sync_flow_tags_and_labels(prefect_api_url, creds) -> None:
    block = ComfyWorkflow(credentials=creds, workflow=tiny_workflow("in-flow"), tags=["in-flow"])
    state = await asyncio.to_thread(trigger_in_a_flow, block, return_state=True)
    tags = await state.result()
    flow_run_id = state.state_details.flow_run_id
    assert events.FLOW_RUN_TAG_PREFIX + str(flow_run_id) in tags and "in-flow" in tags
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
    job_id = flow_run.labels.get(COMFY_JOB_ID_LABEL)
    assert job_id
    # The job block's run gives the flow run its own progress too (issue 19, item 8).

    async def progress_artifacts() -> list:
        found = await read_run_artifacts(flow_run_id)
        return [a for a in found if a.type == "progress" and a.data == 100]

    (artifact,) = await eventually(progress_artifacts, timeout=30, message="progress artifact")
    assert artifact.task_run_id is None and artifact.key == artifact_key("job", job_id)
