"""The sensor under a real Prefect server (the test harness) against the emulator on real sockets.

A flow submits a job with the backend directly, then waits with the sensor; the test reads back from
the Prefect API what the sensor left: events, artifacts, logs, and the flow run's state.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.events.filters import EventFilter, EventOccurredFilter, EventResourceFilter

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.exceptions import JobFailed, JobTimedOut
from prefect_comfy.models import Job
from prefect_comfy.orchestration.artifacts import artifact_key, short_id
from prefect_comfy.orchestration.tasks import (
    wait_for_comfy_input,
    wait_for_comfy_job,
    wait_for_comfy_model,
)
from tests.support.keys import API_KEY
from tests.support.waiting import eventually
from tests.support.workflows import failing_workflow, slow_workflow, tiny_workflow

pytestmark = pytest.mark.prefect

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


class Credentials:
    """The smallest credentials "block": anything with get_backend() works."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get_backend(self) -> CloudBackend:
        return CloudBackend(api_key=API_KEY, base_url=self.url)

    def __repr__(self) -> str:
        return f"Credentials({self.url!r})"


@flow
async def submit_and_wait(
    url: str, workflow: dict[str, Any], timeout: float | None = None
) -> dict[str, Any]:
    async with CloudBackend(api_key=API_KEY, base_url=url) as backend:
        job = await backend.submit(workflow, tags=["sensor-test"])
    done = await wait_for_comfy_job(
        Credentials(url), job.id, timeout=timeout, progress_interval=0.2
    )
    return {"job": done.model_dump(mode="json")}


@flow
def sync_submit_and_wait(url: str) -> str:
    import asyncio

    async def submit() -> str:
        async with CloudBackend(api_key=API_KEY, base_url=url) as backend:
            return (await backend.submit(tiny_workflow("sync"))).id

    job_id = asyncio.run(submit())
    return wait_for_comfy_job.submit(Credentials(url), job_id).result().status


async def read_events(job_id: str, *names: str) -> list:
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(
                occurred=EventOccurredFilter(since=datetime.now(UTC) - timedelta(minutes=10)),
                resource=EventResourceFilter(id=[f"comfy.job.{job_id}"]),
            ),
            limit=50,
        )
    found = [e for e in page.events if not names or e.event in names]
    return found if {e.event for e in found} >= set(names) else []


async def read_artifacts(key: str) -> list:
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.UPDATED_DESC,
        )


async def read_logs(flow_run_id: uuid.UUID) -> list:
    async with get_client() as client:
        return await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )


def assert_no_key(*things: Any) -> None:
    for thing in things:
        text = thing if isinstance(thing, str) else json.dumps(thing, default=str)
        assert API_KEY not in text


@pytest.fixture(autouse=True)
def _capture(caplog):
    caplog.set_level(logging.DEBUG, logger="prefect_comfy")
    caplog.set_level(logging.INFO, logger="prefect")
    yield
    assert API_KEY not in caplog.text


async def test_completed_job_events_artifacts_and_logs(prefect_api_url, emulator):
    state = await submit_and_wait(
        emulator.url, slow_workflow(steps=20, step_seconds=0.05), return_state=True
    )
    assert state.is_completed(), state
    result = await state.result()
    job = Job.model_validate(result["job"])
    assert job.status == "completed" and job.outputs
    flow_run_id = state.state_details.flow_run_id

    async def progress_and_completed() -> list:
        found = await read_events(job.id, "comfy.job.progress", "comfy.job.completed")
        names = {e.event for e in found}
        return found if names == {"comfy.job.progress", "comfy.job.completed"} else []

    events = await eventually(
        progress_and_completed, timeout=30, message="progress and completed events"
    )
    progress = [e for e in events if e.event == "comfy.job.progress"]
    (completed,) = [e for e in events if e.event == "comfy.job.completed"]
    # coalesced: 20+ updates in about 1 s at one per 0.2 s; the outcome says 100 %, so no
    # progress event of 100 % precedes it
    assert 1 <= len(progress) <= 12
    assert max(e.payload["progress"] for e in progress) < 100
    assert completed.payload["progress"] == 100
    assert completed.resource["comfy.progress"] == "100"
    assert completed.resource.id == f"comfy.job.{job.id}"
    assert completed.resource["comfy.backend"] == "cloud"
    assert completed.resource["comfy.status"] == "completed"
    assert completed.resource["comfy.tag.sensor-test"] == "true"
    assert completed.resource["prefect.resource.name"] == f"{job.id} · completed · 100%"
    related = {r.id: r.role for r in completed.related}
    assert related[f"prefect.flow-run.{flow_run_id}"] == "flow-run"
    assert "task-run" in related.values()
    assert [o["id"] for o in completed.payload["outputs"]] == [o.id for o in job.outputs]

    key = artifact_key("job", job.id)
    artifacts = await eventually(lambda: read_artifacts(key), message="progress artifact")
    assert artifacts[0].type == "progress" and artifacts[0].data == 100
    assert artifacts[0].description == f"100% · completed · job {short_id(job.id)}"
    assert artifacts[0].flow_run_id == flow_run_id and artifacts[0].task_run_id is None
    outputs = await eventually(lambda: read_artifacts(artifact_key("job", job.id, "outputs")))
    assert outputs[0].type == "markdown"
    assert job.outputs[0].name in outputs[0].data
    assert "data:image/png;base64," in outputs[0].data  # a 64x64 PNG is well under the bound

    logs = await eventually(
        lambda: _logs_with(flow_run_id, "completed with"), timeout=20, message="run logs"
    )
    job_lines = [r.message for r in logs if "Comfy job" in r.message]
    assert all(job.id in line for line in job_lines)
    assert sum("is running" in line for line in job_lines) == 1  # state changes only
    assert_no_key(
        [e.model_dump(mode="json") for e in events],
        [a.data for a in artifacts + outputs],
        [r.message for r in logs],
    )


async def _logs_with(flow_run_id: uuid.UUID, text: str) -> list:
    logs = await read_logs(flow_run_id)
    return logs if any(text in r.message for r in logs) else []


async def test_failed_job_raises_job_failed_and_emits_the_error(prefect_api_url, emulator):
    state = await submit_and_wait(
        emulator.url, failing_workflow("kaput", code="oom"), return_state=True
    )
    assert state.is_failed()
    exc = await state.result(raise_on_failure=False)
    assert isinstance(exc, JobFailed)
    assert (exc.error_code, exc.error_message, exc.node_id) == ("oom", "kaput", "1")
    (failed,) = await eventually(
        lambda: read_events(exc.job_id, "comfy.job.failed"), timeout=30, message="failed event"
    )
    assert failed.payload["error"] == {"code": "oom", "message": "kaput", "node_id": "1"}
    assert failed.resource["comfy.status"] == "failed"
    assert f"prefect.flow-run.{state.state_details.flow_run_id}" in {r.id for r in failed.related}
    assert_no_key(failed.model_dump(mode="json"))


async def test_timeout_emits_timed_out_and_cancels_the_job(prefect_api_url, emulator):
    state = await submit_and_wait(
        emulator.url, slow_workflow(steps=200, step_seconds=0.05), timeout=0.5, return_state=True
    )
    assert state.is_failed()
    exc = await state.result(raise_on_failure=False)
    assert isinstance(exc, JobTimedOut)
    (timed_out,) = await eventually(
        lambda: read_events(exc.job_id, "comfy.job.timed-out"),
        timeout=30,
        message="timed-out event",
    )
    assert timed_out.payload["id"] == exc.job_id
    assert timed_out.payload["timeout"] == 0.5
    assert timed_out.payload["last_status"] in ("pending", "running")

    async with CloudBackend(api_key=API_KEY, base_url=emulator.url) as backend:

        async def cancelled() -> bool:
            return (await backend.get_job(exc.job_id)).status == "cancelled"

        await eventually(cancelled, timeout=10, message="the emulator reports the job cancelled")


def test_sync_flow_submits_the_async_sensor(prefect_api_url, emulator):
    assert sync_submit_and_wait(emulator.url) == "completed"


@flow
async def upload_and_wait(url: str, tag: str) -> dict[str, Any]:
    async with CloudBackend(api_key=API_KEY, base_url=url) as backend:
        inp = await backend.upload_input(PNG, name=f"{tag}.png")
        mod = await backend.upload_model(b"\0" * 64, type="lora", name=f"{tag}.safetensors")
    ready_input = await wait_for_comfy_input(Credentials(url), inp.id, timeout=30)
    ready_model = await wait_for_comfy_model(Credentials(url), mod.id, timeout=30)
    return {
        "input": ready_input.id,
        "model": ready_model.id,
        "status": [ready_input.status, ready_model.status],
    }


async def read_resource_events(resource_id: str, name: str) -> list:
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(
                occurred=EventOccurredFilter(since=datetime.now(UTC) - timedelta(minutes=10)),
                resource=EventResourceFilter(id=[resource_id]),
            ),
            limit=50,
        )
    return [e for e in page.events if e.event == name]


async def test_uploads_ready_emit_events(prefect_api_url, emulator):
    result = await upload_and_wait(emulator.url, f"sensor-{uuid.uuid4().hex[:8]}")
    assert result["status"] == ["ready", "ready"]
    (ready,) = await eventually(
        lambda: read_resource_events(f"comfy.input.{result['input']}", "comfy.input.ready"),
        timeout=30,
    )
    assert ready.resource["prefect.resource.name"].endswith(".png")
    assert ready.resource["comfy.status"] == "ready"
    (model,) = await eventually(
        lambda: read_resource_events(f"comfy.model.{result['model']}", "comfy.model.ready"),
        timeout=30,
    )
    assert model.resource["comfy.model-type"] == "lora"
    assert_no_key(ready.model_dump(mode="json"), model.model_dump(mode="json"))
