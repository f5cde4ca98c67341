"""Ready-made deployment triggers for Comfy events.

Each helper returns a `prefect.events.DeploymentEventTrigger` that runs a deployment when a
Comfy event arrives in Prefect (from the listener or the sensor), with the flow's parameters filled
from the event:

==================  ======================  ==============================================================
helper              event                   parameters
==================  ======================  ==============================================================
on_input_ready      ``comfy.input.ready``   ``input_id``, ``input_name``
on_model_ready      ``comfy.model.ready``   ``model_id``, ``model_name``, ``model_type``
on_job_completed    ``comfy.job.completed`` ``job_id``, ``outputs`` (a list of dicts)
on_job_failed       ``comfy.job.failed``    ``job_id``, ``error`` (a dict), ``error_code``, ``error_message``
==================  ======================  ==============================================================

Only template forms that survive Prefect's rendering are used (a template that fails to render makes
the server create no run and only log a warning): a single ``{{ expr }}`` keeps its JSON type, and
every value that an event may lack goes through ``| default(none)``. The integration tests render
every template here through a real Prefect server.

``tags`` narrows a trigger to resources carrying every given Comfy tag (the resource label
``comfy.tag.<tag>`` = ``"true"``). ``parameters`` adds or overrides parameters (templates allowed);
a parameter set to ``None`` in it is left out, so a flow that lacks it still runs.

Example:
    >>> from prefect_comfy.orchestration.triggers import on_input_ready
    >>> trigger = on_input_ready(tags=["portraits"])
    >>> sorted(trigger.expect), trigger.match["comfy.tag.portraits"]
    (['comfy.input.ready'], ['true'])
    >>> trigger.parameters["input_name"]
    '{{ event.payload.name | default(none) }}'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prefect.events import DeploymentEventTrigger

from prefect_comfy.orchestration.events import names as comfy_events

__all__ = [
    "INPUT_READY_PARAMETERS",
    "JOB_COMPLETED_PARAMETERS",
    "JOB_FAILED_PARAMETERS",
    "MODEL_READY_PARAMETERS",
    "RESUME_AUTOMATION_NAME",
    "RESUME_EVENTS",
    "comfy_trigger",
    "create_resume_automation",
    "on_input_ready",
    "on_job_completed",
    "on_job_failed",
    "on_model_ready",
    "resume_automation",
]

INPUT_READY_PARAMETERS: dict[str, str] = {
    "input_id": "{{ event.payload.id }}",
    "input_name": "{{ event.payload.name | default(none) }}",
}
"""Parameters of `on_input_ready`, rendered from a ``comfy.input.ready`` event."""

MODEL_READY_PARAMETERS: dict[str, str] = {
    "model_id": "{{ event.payload.id }}",
    "model_name": "{{ event.payload.name | default(none) }}",
    "model_type": "{{ event.payload.type | default(none) }}",
}
"""Parameters of `on_model_ready`, rendered from a ``comfy.model.ready`` event."""

JOB_COMPLETED_PARAMETERS: dict[str, str] = {
    "job_id": "{{ event.payload.id }}",
    "outputs": "{{ event.payload.outputs | default([]) }}",
}
"""Parameters of `on_job_completed`: ``outputs`` is the list of output dicts of the event."""

JOB_FAILED_PARAMETERS: dict[str, str] = {
    "job_id": "{{ event.payload.id }}",
    "error": "{{ event.payload.error | default(none) }}",
    "error_code": "{{ (event.payload.error or {}).code | default(none) }}",
    "error_message": "{{ (event.payload.error or {}).message | default(none) }}",
}
"""Parameters of `on_job_failed`: ``error`` is the Comfy error dict (``code``, ``message``,
``node_id``), also given flat as ``error_code`` and ``error_message``."""


def comfy_trigger(
    event: str,
    kind: str,
    default_parameters: Mapping[str, Any],
    *,
    tags: Iterable[str] | None = None,
    name: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    **trigger_options: Any,
) -> DeploymentEventTrigger:
    """A deployment trigger on one Comfy event about a ``kind`` of resource.

    Args:
        event: the Prefect event name, such as ``comfy.input.ready``.
        kind: ``job``, ``input`` or ``model`` (matches ``comfy.<kind>.*`` resources).
        default_parameters: the parameters filled from the event.
        tags: Comfy tags every matching resource must carry.
        name: the automation's name (default: ``<event> → deployment``).
        parameters: extra parameters, or overrides; ``None`` as a value drops a default one.
        **trigger_options: any other `DeploymentEventTrigger` field (``enabled``,
            ``match_related``, ``within`` …).
    """
    if isinstance(tags, str):
        tags = [tags]
    match: dict[str, Any] = {"prefect.resource.id": f"{comfy_events.PREFIX}.{kind}.*"}
    for tag in tags or ():
        match[f"comfy.tag.{tag}"] = "true"
    merged: dict[str, Any] = dict(default_parameters)
    for key, value in (parameters or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return DeploymentEventTrigger(
        name=name or f"{event} → deployment",
        expect={event},
        match=match,
        parameters=merged,
        **trigger_options,
    )


def on_input_ready(
    tags: Iterable[str] | None = None,
    name: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    **trigger_options: Any,
) -> DeploymentEventTrigger:
    """Run the deployment when an input is ready, with ``input_id`` and ``input_name``.

    Example:
        >>> on_input_ready(tags=["batch-7"]).match["comfy.tag.batch-7"]
        ['true']
    """
    return comfy_trigger(
        comfy_events.INPUT_READY,
        "input",
        INPUT_READY_PARAMETERS,
        tags=tags,
        name=name,
        parameters=parameters,
        **trigger_options,
    )


def on_model_ready(
    tags: Iterable[str] | None = None,
    name: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    **trigger_options: Any,
) -> DeploymentEventTrigger:
    """Run the deployment when a model is ready, with ``model_id``, ``model_name``, ``model_type``.

    Example:
        >>> sorted(on_model_ready().parameters)
        ['model_id', 'model_name', 'model_type']
    """
    return comfy_trigger(
        comfy_events.MODEL_READY,
        "model",
        MODEL_READY_PARAMETERS,
        tags=tags,
        name=name,
        parameters=parameters,
        **trigger_options,
    )


def on_job_completed(
    tags: Iterable[str] | None = None,
    name: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    **trigger_options: Any,
) -> DeploymentEventTrigger:
    """Run the deployment when a job completes, with ``job_id`` and ``outputs``.

    Example:
        >>> sorted(on_job_completed(parameters={"outputs": None}).parameters)
        ['job_id']
    """
    return comfy_trigger(
        comfy_events.JOB_COMPLETED,
        "job",
        JOB_COMPLETED_PARAMETERS,
        tags=tags,
        name=name,
        parameters=parameters,
        **trigger_options,
    )


def on_job_failed(
    tags: Iterable[str] | None = None,
    name: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    **trigger_options: Any,
) -> DeploymentEventTrigger:
    """Run the deployment when a job fails, with ``job_id``, ``error``, ``error_code``, ``error_message``.

    Example:
        >>> sorted(on_job_failed().expect)
        ['comfy.job.failed']
    """
    return comfy_trigger(
        comfy_events.JOB_FAILED,
        "job",
        JOB_FAILED_PARAMETERS,
        tags=tags,
        name=name,
        parameters=parameters,
        **trigger_options,
    )


RESUME_AUTOMATION_NAME = "comfy: resume flow runs suspended on a Comfy job"
"""The name `create_resume_automation` creates (and finds again) its automation by."""
RESUME_EVENTS = (
    comfy_events.JOB_COMPLETED,
    comfy_events.JOB_FAILED,
    comfy_events.JOB_CANCELLED,
    comfy_events.JOB_LOST,
)
"""The job outcomes that resume the flow run a job's events are related to."""


def resume_automation(name: str = RESUME_AUTOMATION_NAME) -> Any:
    """The automation that resumes a suspended flow run when its Comfy job ends (not saved).

    It fires on each of `RESUME_EVENTS` about a ``comfy.job.*`` resource related to a flow
    run, and resumes the first related ``prefect.flow-run.<id>`` (the submitting flow run, or the
    deployment's root run for a job submitted in a subflow). Resuming a run that is not suspended
    is refused by the server and changes nothing, so a repeated event is harmless.

    Example:
        >>> automation = resume_automation()
        >>> sorted(automation.trigger.expect)[0], automation.actions[0].type
        ('comfy.job.cancelled', 'resume-flow-run')
    """
    from prefect.events.actions import ResumeFlowRun
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=name,
        description="Resumes the flow run a Comfy job's outcome event is related to "
        "(prefect_comfy suspending waits). Needs `prefect-comfy listen` running.",
        trigger=EventTrigger(
            expect=set(RESUME_EVENTS),
            match={"prefect.resource.id": f"{comfy_events.PREFIX}.job.*"},
            match_related={"prefect.resource.role": "flow-run"},
            posture=Posture.Reactive,
            threshold=1,
            within=0,
        ),
        actions=[ResumeFlowRun()],
    )


async def create_resume_automation(name: str = RESUME_AUTOMATION_NAME) -> Any:
    """Create the resume automation, or bring the one of that ``name`` up to date; returns its id.

    Idempotent: run it at every deploy. An automation of that name that differs (an older
    version, or one changed by hand) is replaced, and so are duplicates of that name.

    Example:
        ```python
        import asyncio
        from prefect_comfy.orchestration.triggers import create_resume_automation

        automation_id = asyncio.run(create_resume_automation())
        ```
    """
    from prefect.client.orchestration import get_client

    automation = resume_automation(name)
    async with get_client() as client:
        existing = await client.read_automations_by_name(name)
        if len(existing) == 1 and _same(existing[0], automation):
            return existing[0].id
        # Replaced, not updated: in Prefect 3.9.1 an automation updated in place stopped firing
        # (the server's trigger cache kept the old trigger), measured in the integration test.
        for one in existing:
            await client.delete_automation(one.id)
        return await client.create_automation(automation)


def _same(existing: Any, wanted: Any) -> bool:
    """Whether a saved automation already is ``wanted`` (ids aside)."""

    def shape(automation: Any) -> Any:
        trigger = automation.trigger
        return (
            automation.description,
            automation.enabled,
            type(trigger).__name__,
            sorted(trigger.expect),
            trigger.match.model_dump(),
            trigger.match_related.model_dump()
            if not isinstance(trigger.match_related, list)
            else [m.model_dump() for m in trigger.match_related],
            str(trigger.posture),
            trigger.threshold,
            trigger.within.total_seconds(),
            [action.type for action in automation.actions],
        )

    return shape(existing) == shape(wanted)
