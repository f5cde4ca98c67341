"""The one "trigger is live" helper of every trigger test.

Prefect's trigger service loads a new automation a moment after it is created; an event sent before
that creates no run (seen in CI on a loaded machine). Users create deployments long before their
events, so this is a race of the tests, not of the product. :func:`apply_live` creates the
deployment, then sends a *probe* event the trigger matches, again under a new id every few seconds,
until a run of the deployment exists: from then on the trigger is live. Probe runs carry an id that
starts with :data:`PROBE`; :func:`runs_of` leaves them out.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.events.clients import get_events_client

from prefect_comfy.models import ComfyEvent
from prefect_comfy.orchestration.events.names import from_comfy_event
from tests.support.waiting import eventually, scaled

PROBE = "probe-"
"""How the resource id of a probe event starts."""
PROBE_AGAIN_AFTER = 3.0
"""Seconds without a probe run before the probe is sent again, under a new id."""


async def send(*comfy_events: ComfyEvent, address: str, backend_kind: str = "cloud") -> list[Any]:
    """Send Comfy events as the listener does (``from_comfy_event`` through an events client)."""
    sent = [from_comfy_event(e, address=address, backend_kind=backend_kind) for e in comfy_events]
    async with get_events_client() as client:
        for event in sent:
            await client.emit(event)
    return sent


async def _runs(deployment_id: uuid.UUID) -> list[Any]:
    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


def is_probe(run: Any) -> bool:
    """Whether a flow run was started by a probe event (one of its parameters is a probe id)."""
    return any(isinstance(v, str) and PROBE in v for v in run.parameters.values())


async def probe_run(
    deployment_id: uuid.UUID,
    probe: Callable[[str], ComfyEvent],
    *,
    address: str,
    backend_kind: str = "cloud",
    timeout: float = 60.0,
) -> None:
    """Send one more probe event and return once the trigger has made its run.

    A bounded settle condition: Prefect's trigger service has then acted on the events sent to the
    server before this probe (a test that must show that no *further* run appears waits for this
    instead of sleeping). Also shows that a restarted server's trigger service is live again.
    """
    before = {run.id for run in await _runs(deployment_id) if is_probe(run)}
    sent_at: list[float] = []

    async def processed() -> bool:
        import time

        if not sent_at or time.monotonic() - sent_at[-1] > scaled(PROBE_AGAIN_AFTER):
            event = probe(f"{PROBE}{uuid.uuid4().hex[:12]}")
            await send(event, address=address, backend_kind=backend_kind)
            sent_at.append(time.monotonic())
        runs = await _runs(deployment_id)
        return any(is_probe(run) and run.id not in before for run in runs)

    await eventually(processed, timeout=timeout, interval=0.2, message="a new probe run")


async def trigger_is_live(
    deployment_id: uuid.UUID,
    probe: Callable[[str], ComfyEvent],
    *,
    address: str,
    backend_kind: str = "cloud",
    timeout: float = 60.0,
) -> None:
    """Return once the deployment's trigger has made a run from a probe event (`probe_run`).

    Args:
        deployment_id: the deployment whose trigger is waited for.
        probe: makes the probe event from a fresh resource id (it must match the trigger).
        address, backend_kind: as the listener would send it.
        timeout: longest wait, scaled by the suite's factor.
    """
    await probe_run(
        deployment_id, probe, address=address, backend_kind=backend_kind, timeout=timeout
    )


async def apply_live(
    flow_obj: Any,
    trigger: Any,
    probe: Callable[[str], ComfyEvent],
    *,
    address: str,
    backend_kind: str = "cloud",
) -> uuid.UUID:
    """Create a deployment of ``flow_obj`` with ``trigger``, and wait until the trigger is live."""
    deployment = await flow_obj.to_deployment(name=f"t-{uuid.uuid4().hex[:8]}", triggers=[trigger])
    deployment_id = await deployment.aapply()
    await trigger_is_live(deployment_id, probe, address=address, backend_kind=backend_kind)
    return deployment_id


async def runs_of(deployment_id: uuid.UUID, count: int = 1, timeout: float = 30.0) -> list[Any]:
    """The deployment's runs that no probe made, once there are ``count`` of them."""

    async def probe() -> list[Any]:
        runs = [run for run in await _runs(deployment_id) if not is_probe(run)]
        return runs if len(runs) >= count else []

    return await eventually(probe, timeout=timeout, interval=0.2, message="a triggered flow run")
