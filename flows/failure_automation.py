"""An automation that marks the submitting flow run failed when its Comfy job fails.

Every job that ``submit_comfy_job`` submits carries the tag ``prefect.flow-run.<id>``, so the
``comfy.job.failed`` event (from the listener or the sensor) is related to that flow run; the
``ChangeFlowRunState`` action acts on the first related flow run. This matters when a flow submits
a job and does not wait for it (fire and forget), or when the waiting flow run has died.

    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python flows/failure_automation.py            # creates (or replaces) the automation

Swap the action for ``SendNotification(block_document_id=...)`` to be told instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from prefect.automations import Automation, ChangeFlowRunState, EventTrigger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

AUTOMATION_NAME = "comfy-job-failed-fails-its-flow-run"


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
                message="The Comfy job this flow run submitted failed (comfy.job.failed).",
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


if __name__ == "__main__":
    automation = asyncio.run(create_failure_automation())
    print(f"created automation {automation.name} ({automation.id})")
