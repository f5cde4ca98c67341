"""An automation that marks the submitting flow run failed when its Comfy job fails.

Every job that ``submit_comfy_job`` submits carries the tag ``prefect.flow-run.<id>``, so the
``comfy.job.failed`` event (from the listener or the sensor) is related to that flow run; the
``ChangeFlowRunState`` action acts on the first related flow run. This matters when a flow submits
a job and does not wait for it (fire and forget), or when the waiting flow run has died.

A flow run that is still running when its job fails would end COMPLETED all the same: Prefect lets
the engine's final state replace the FAILED state the automation set. Give such a flow the hook
:func:`keep_comfy_failure` (``@flow(on_completion=[keep_comfy_failure])``): when the run completes
after the automation failed it, the hook sets it FAILED again. A run that completed before its job
failed needs nothing: the automation's FAILED state then stays.

    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python flows/failure_automation.py            # creates (or replaces) the automation

Swap the action for ``SendNotification(block_document_id=...)`` to be told instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from prefect.automations import Automation, ChangeFlowRunState, EventTrigger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Failed, State

AUTOMATION_NAME = "comfy-job-failed-fails-its-flow-run"

FAILURE_MESSAGE = "The Comfy job this flow run submitted failed (comfy.job.failed)."
"""The message of the FAILED state the automation sets (what :func:`keep_comfy_failure` looks for)."""


def failure_automation(
    name: str = AUTOMATION_NAME, tags: Iterable[str] | None = None
) -> Automation:
    """The automation (not yet saved); ``tags`` narrows it to jobs carrying every Comfy tag given."""
    match = {"prefect.resource.id": "comfy.job.*"}
    for tag in tags or ():
        match[f"comfy.tag.{tag}"] = "true"
    return Automation(
        name=name,
        description="When a Comfy job fails, mark the flow run that submitted it as failed.",
        trigger=EventTrigger(
            expect={"comfy.job.failed"},
            match=match,
            match_related={"prefect.resource.role": "flow-run"},
            posture="Reactive",
            threshold=1,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.FAILED,
                message=FAILURE_MESSAGE,
            )
        ],
    )


async def create_failure_automation(
    name: str = AUTOMATION_NAME, tags: Iterable[str] | None = None
) -> Automation:
    """Save the automation with the Prefect client, replacing one of the same name."""
    async with get_client() as client:
        for existing in await client.read_automations_by_name(name):
            await client.delete_automation(existing.id)
    return await failure_automation(name, tags).acreate()


async def keep_comfy_failure(flow: Any, flow_run: FlowRun, state: State) -> None:
    """An ``on_completion`` hook: a run the automation failed while it ran ends FAILED, not COMPLETED.

    Reads the run's states; if the automation's FAILED state is among them, sets FAILED again
    (forced: the run is COMPLETED by then).
    """
    async with get_client() as client:
        states = await client.read_flow_run_states(flow_run.id)
        if any(s.is_failed() and s.message == FAILURE_MESSAGE for s in states):
            await client.set_flow_run_state(
                flow_run.id, Failed(message=FAILURE_MESSAGE), force=True
            )


if __name__ == "__main__":
    automation = asyncio.run(create_failure_automation())
    print(f"created automation {automation.name} ({automation.id})")
