"""Every template of prefect_comfy.orchestration.triggers, rendered by a real Prefect server (the test harness).

Each test applies a deployment with one shipped trigger narrowed to a tag of its own, emits the
matching Prefect event the way the listener does (``from_comfy_event`` through an explicit events
client), and reads back the flow run the trigger created, with its parameters.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.events.clients import get_events_client

from prefect_comfy.models import ComfyEvent
from prefect_comfy.orchestration.events.names import from_comfy_event
from prefect_comfy.orchestration.triggers import (
    on_input_ready,
    on_job_completed,
    on_job_failed,
    on_model_ready,
)
from tests.support.waiting import eventually

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


async def apply(flow_obj: Any, trigger: Any) -> uuid.UUID:
    deployment = await flow_obj.to_deployment(name=f"t-{uuid.uuid4().hex[:8]}", triggers=[trigger])
    _sent_since_apply.clear()
    return await deployment.aapply()


_sent_since_apply: list[Any] = []
"""The Prefect events emitted since the last :func:`apply`, for :func:`runs_of` to resend if lost."""


async def emit(*comfy_events: ComfyEvent) -> list[Any]:
    sent = [from_comfy_event(e, address=ADDRESS, backend_kind="cloud") for e in comfy_events]
    await _send(sent)
    _sent_since_apply.extend(sent)
    return sent


async def _send(events: list[Any]) -> None:
    async with get_events_client() as client:
        for event in events:
            await client.emit(event)


LOST_EVENT_AFTER = 10.0
"""Seconds after which a trigger that has not fired is taken to have missed its event."""


async def runs_of(deployment_id: uuid.UUID, count: int = 1, timeout: float = 30.0) -> list[Any]:
    """The runs of a deployment, once there are ``count`` of them.

    Prefect's SQLite server loads a new automation into its trigger cache in a task scheduled after
    the commit, so an event emitted right after ``apply`` can, on a loaded machine, be evaluated
    before the automation is there, and is lost to it (seen once in CI). After
    :data:`LOST_EVENT_AFTER` seconds without a run the events are sent once more under new ids,
    each distinct event once (the same payloads, so the templates render the same parameters).
    Users create deployments long before their events: this is a race of the test, not the product.
    """
    started = time.monotonic()
    resent = False

    async def probe() -> list[Any]:
        nonlocal resent
        async with get_client() as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
        if not runs and not resent and time.monotonic() - started > LOST_EVENT_AFTER:
            resent = True
            distinct = {e.id: e for e in _sent_since_apply}.values()
            await _send([e.model_copy(update={"id": uuid.uuid4()}) for e in distinct])
        return runs if len(runs) >= count else []

    return await eventually(probe, timeout=timeout, interval=0.2, message="a triggered flow run")


def tag() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def test_on_input_ready_passes_id_and_name(prefect_api_url):
    t = tag()
    deployment_id = await apply(input_flow, on_input_ready(tags=[t]))
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
    deployment_id = await apply(model_flow, on_model_ready(tags=[t]))
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
    deployment_id = await apply(model_flow, on_model_ready(tags=[t]))
    await emit(ComfyEvent(event="model.ready", payload={"id": "mod_2", "tags": [t]}))
    (run,) = await runs_of(deployment_id)
    assert run.parameters == {"model_id": "mod_2", "model_name": None, "model_type": None}


async def test_on_job_completed_passes_id_and_outputs_as_a_list(prefect_api_url):
    t = tag()
    deployment_id = await apply(completed_flow, on_job_completed(tags=[t]))
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
    deployment_id = await apply(completed_flow, on_job_completed(tags=[t]))
    await emit(ComfyEvent(event="job.completed", payload={"id": "job_2", "tags": [t]}))
    (run,) = await runs_of(deployment_id)
    assert run.parameters == {"job_id": "job_2", "outputs": []}


async def test_on_job_failed_passes_the_error(prefect_api_url):
    t = tag()
    deployment_id = await apply(failed_flow, on_job_failed(tags=[t]))
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
    deployment_id = await apply(failed_flow, on_job_failed(tags=[t]))
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
    deployment_id = await apply(input_flow, trigger)
    await emit(ComfyEvent(event="input.ready", payload={"id": "inp_9", "name": "n", "tags": [t]}))
    (run,) = await runs_of(deployment_id)
    assert run.parameters == {"input_id": "comfy.input.inp_9"}


async def test_the_same_event_twice_creates_one_run(prefect_api_url):
    t = tag()
    deployment_id = await apply(input_flow, on_input_ready(tags=[t]))
    # First a run that shows the trigger is live: Prefect's trigger service loads a new automation
    # a moment after it is created, and an event sent before that creates no run (seen in CI).
    await emit(
        ComfyEvent(event="input.ready", payload={"id": "inp_warm", "name": "w", "tags": [t]})
    )
    await runs_of(deployment_id, count=1, timeout=60)
    event = ComfyEvent(event="input.ready", payload={"id": "inp_dup", "name": "d", "tags": [t]})
    await emit(event)
    await emit(event)
    # A later, distinct event is the marker: once its run exists, the duplicate had its chance.
    await emit(
        ComfyEvent(event="input.ready", payload={"id": "inp_next", "name": "e", "tags": [t]})
    )
    runs = await runs_of(deployment_id, count=3)
    assert sorted(r.parameters["input_id"] for r in runs) == ["inp_dup", "inp_next", "inp_warm"]
