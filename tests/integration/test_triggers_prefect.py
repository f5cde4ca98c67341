"""Every template of prefect_comfy.orchestration.triggers, rendered by a real Prefect server (the test harness).

Each test applies a deployment with one shipped trigger narrowed to a tag of its own, emits the
matching Prefect event the way the listener does (``from_comfy_event`` through an explicit events
client), and reads back the flow run the trigger created, with its parameters.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prefect import flow

from prefect_comfy.models import ComfyEvent
from prefect_comfy.orchestration.triggers import (
    on_input_ready,
    on_job_completed,
    on_job_failed,
    on_model_ready,
)
from tests.support.triggers import apply_live, runs_of, send

pytestmark = pytest.mark.prefect

ADDRESS = "http://triggers.test"


@flow
def input_flow(input_id: str, input_name: str | None = None) -> str:
    return f"{input_id}:{input_name}"


@flow
def model_flow(model_id: str, model_name: str | None = None, model_type: str | None = None) -> str:
    return model_id


@flow
def completed_flow(job_id: str, outputs: list[dict[str, Any]] | None = None) -> str:
    return job_id


@flow
def failed_flow(
    job_id: str,
    error: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> str:
    return job_id


PROBES = {
    "input": lambda pid, t: ComfyEvent(event="input.ready", payload={"id": pid, "tags": [t]}),
    "model": lambda pid, t: ComfyEvent(event="model.ready", payload={"id": pid, "tags": [t]}),
    "completed": lambda pid, t: ComfyEvent(event="job.completed", payload={"id": pid, "tags": [t]}),
    "failed": lambda pid, t: ComfyEvent(event="job.failed", payload={"id": pid, "tags": [t]}),
}


async def apply(flow_obj: Any, trigger: Any, kind: str, t: str) -> uuid.UUID:
    """The deployment, once its trigger is live (a probe event of ``kind`` made a run)."""
    return await apply_live(flow_obj, trigger, lambda pid: PROBES[kind](pid, t), address=ADDRESS)


async def emit(*comfy_events: ComfyEvent) -> list[Any]:
    return await send(*comfy_events, address=ADDRESS)


def tag() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def test_on_input_ready_passes_id_and_name(prefect_api_url):
    t = tag()
    deployment_id = await apply(input_flow, on_input_ready(tags=[t]), "input", t)
    await emit(
        # The wrong tag does not match; the right one does.
        ComfyEvent(
            event="input.ready",
            payload={"id": "inp_other", "name": "x.png", "status": "ready", "tags": ["other"]},
        ),
        ComfyEvent(
            event="input.ready",
            payload={"id": "inp_1", "name": "cat.png", "status": "ready", "tags": [t]},
        ),
    )
    (run,) = await runs_of(deployment_id)
    assert run.parameters == {"input_id": "inp_1", "input_name": "cat.png"}


async def test_on_model_ready_passes_id_name_and_type(prefect_api_url):
    t = tag()
    deployment_id = await apply(model_flow, on_model_ready(tags=[t]), "model", t)
    await emit(
        ComfyEvent(
            event="model.ready",
            payload={"id": "mod_1", "name": "style.safetensors", "type": "lora", "tags": [t]},
        )
    )
    (run,) = await runs_of(deployment_id)
    assert run.parameters == {
        "model_id": "mod_1",
        "model_name": "style.safetensors",
        "model_type": "lora",
    }


async def test_on_model_ready_survives_a_missing_type_and_name(prefect_api_url):
    t = tag()
    deployment_id = await apply(model_flow, on_model_ready(tags=[t]), "model", t)
    await emit(ComfyEvent(event="model.ready", payload={"id": "mod_2", "tags": [t]}))
    (run,) = await runs_of(deployment_id)
    assert run.parameters == {"model_id": "mod_2", "model_name": None, "model_type": None}


async def test_on_job_completed_passes_id_and_outputs_as_a_list(prefect_api_url):
    t = tag()
    deployment_id = await apply(completed_flow, on_job_completed(tags=[t]), "completed", t)
    outputs = [
        {"id": "out_1", "type": "image", "download_url": "http://x/1.png", "size": 12},
        {"id": "out_2", "type": "image", "download_url": "http://x/2.png", "size": 13},
    ]
    await emit(
        ComfyEvent(
            event="job.completed",
            payload={"id": "job_1", "status": "completed", "outputs": outputs, "tags": [t]},
        )
    )
    (run,) = await runs_of(deployment_id)
    assert run.parameters == {"job_id": "job_1", "outputs": outputs}


async def test_on_job_completed_without_outputs_gives_an_empty_list(prefect_api_url):
    t = tag()
    deployment_id = await apply(completed_flow, on_job_completed(tags=[t]), "completed", t)
    await emit(ComfyEvent(event="job.completed", payload={"id": "job_2", "tags": [t]}))
    (run,) = await runs_of(deployment_id)
    assert run.parameters == {"job_id": "job_2", "outputs": []}


async def test_on_job_failed_passes_the_error(prefect_api_url):
    t = tag()
    deployment_id = await apply(failed_flow, on_job_failed(tags=[t]), "failed", t)
    error = {"code": "node_error", "message": "KSampler ran out of memory", "node_id": "3"}
    await emit(
        ComfyEvent(
            event="job.failed",
            payload={"id": "job_3", "status": "failed", "error": error, "tags": [t]},
        )
    )
    (run,) = await runs_of(deployment_id)
    assert run.parameters == {
        "job_id": "job_3",
        "error": error,
        "error_code": "node_error",
        "error_message": "KSampler ran out of memory",
    }


async def test_on_job_failed_survives_a_missing_error(prefect_api_url):
    t = tag()
    deployment_id = await apply(failed_flow, on_job_failed(tags=[t]), "failed", t)
    await emit(ComfyEvent(event="job.failed", payload={"id": "job_4", "tags": [t]}))
    (run,) = await runs_of(deployment_id)
    assert run.parameters == {
        "job_id": "job_4",
        "error": None,
        "error_code": None,
        "error_message": None,
    }


async def test_extra_parameters_are_templated_and_none_drops_a_default(prefect_api_url):
    t = tag()
    trigger = on_input_ready(
        tags=[t], parameters={"input_name": None, "input_id": "{{ event.resource.id }}"}
    )
    deployment_id = await apply(input_flow, trigger, "input", t)
    await emit(ComfyEvent(event="input.ready", payload={"id": "inp_9", "name": "n", "tags": [t]}))
    (run,) = await runs_of(deployment_id)
    assert run.parameters == {"input_id": "comfy.input.inp_9"}


async def test_the_same_event_twice_creates_one_run(prefect_api_url):
    t = tag()
    deployment_id = await apply(input_flow, on_input_ready(tags=[t]), "input", t)
    event = ComfyEvent(event="input.ready", payload={"id": "inp_dup", "name": "d", "tags": [t]})
    await emit(event)
    await emit(event)
    # A later, distinct event is the marker: once its run exists, the duplicate had its chance.
    await emit(
        ComfyEvent(event="input.ready", payload={"id": "inp_next", "name": "e", "tags": [t]})
    )
    runs = await runs_of(deployment_id, count=2)
    assert sorted(r.parameters["input_id"] for r in runs) == ["inp_dup", "inp_next"]
