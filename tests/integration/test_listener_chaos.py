"""The listener duplicates no flow run under chaos (issue 11's suite).

A listener forwards an emulator of its own into a real Prefect server (the test harness), where
two deployments wait on triggers: one on ``comfy.job.completed``, one on ``comfy.input.ready``
(no worker: the runs stay Scheduled, which is what is counted). For 12 s the emulator drops the
WebSocket, closes connections during the handshake (after ``connected``), pauses and duplicates
events while 20 jobs and 5 inputs are made; then it behaves, and a marker job and input are made.
Once the markers' runs exist, and every job and input has a run (Prefect's actions service does not
create runs in the order of their events: one whose creation it retries comes later, seen in CI),
each has exactly one flow run: none lost, none twice.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Collection
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.listener.forwarder import ComfyListener
from prefect_comfy.orchestration.triggers import on_input_ready, on_job_completed
from prefect_comfy.settings import ComfySettings
from prefect_comfy_emulator import EmulatorConfig, EmulatorServer
from tests.support.keys import API_KEY
from tests.support.listener_prefect import apply, upload
from tests.support.listener_v2 import Counting
from tests.support.triggers import is_probe
from tests.support.waiting import eventually, scaled
from tests.support.workflows import slow_workflow

pytestmark = pytest.mark.prefect

JOBS = 20
INPUTS = 5
STORM_SECONDS = 12.0
SEED = 20261203


@flow
def on_done(job_id: str, outputs: Any = None) -> str:
    return job_id


@flow
def on_input(input_id: str, input_name: str | None = None) -> str:
    return input_id


async def runs_with(
    deployment_id: uuid.UUID,
    parameter: str,
    marker: str,
    every: Collection[str] = (),
) -> list[Any]:
    """The deployment's flow runs, once the marker's run exists and every id in ``every`` has one
    (after 60 s, what there is: the caller's assertions say what is missing)."""

    async def probe() -> list[Any] | None:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                limit=200,
            )
        runs = [r for r in runs if not is_probe(r)]
        return runs if any(r.parameters.get(parameter) == marker for r in runs) else None

    runs = await eventually(probe, timeout=60, interval=0.3, message=f"the run of {marker}")

    async def all_there() -> list[Any] | None:
        now = await probe() or []
        return now if set(every) <= {r.parameters.get(parameter) for r in now} else None

    try:
        return await eventually(all_there, timeout=60, interval=0.5, message="a run for each")
    except AssertionError:
        return await probe() or runs


async def automation_actions() -> list[tuple[str, Any]]:
    """Prefect's automation action events (``triggered``, ``executed``, ``failed``) so far."""
    from prefect.events.filters import EventFilter, EventNameFilter

    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(event=EventNameFilter(prefix=["prefect.automation.action"])),
            limit=50,
        )
    return [(e.event, e.payload) for e in page.events if e.event.endswith("failed")]


async def prefect_knows(resource_ids: set[str]) -> list[tuple[str, Any, list[str]]]:
    """The events Prefect stored about these resources, and the automation events about those."""
    from prefect.events.filters import EventFilter, EventRelatedFilter, EventResourceFilter

    found = []
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(resource=EventResourceFilter(id=sorted(resource_ids))), limit=50
        )
        for event in page.events:
            about = await client.read_events(
                filter=EventFilter(related=EventRelatedFilter(id=[f"prefect.event.{event.id}"])),
                limit=50,
            )
            found.append((event.event, event.id, [e.event for e in about.events]))
    return found


async def storm(emulator: EmulatorServer, rnd: random.Random, done: Counter[str]) -> None:
    call = asyncio.to_thread
    deadline = time.monotonic() + STORM_SECONDS
    while time.monotonic() < deadline:
        await asyncio.sleep(rnd.uniform(0.2, 0.6))  # the storm's pace, not a synchronisation
        action = rnd.choice(["drop", "handshake-close", "pause", "duplicates"])
        if action == "drop":
            await call(emulator.drop_connections)
        elif action == "handshake-close":
            await call(emulator.close_after_connected, rnd.randint(1, 3))
            await call(emulator.drop_connections)
        elif action == "pause":
            await call(emulator.pause_events)
            await asyncio.sleep(rnd.uniform(0.2, 1.0))  # how long the server holds events
            await call(emulator.resume_events)
        else:
            await call(emulator.duplicate_events, done["duplicates"] % 2 == 0)
        done[action] += 1
    await call(emulator.duplicate_events, False)
    await call(emulator.close_after_connected, 0)
    await call(emulator.reset_faults)


async def test_the_listener_duplicates_no_flow_run_under_chaos(prefect_api_url) -> None:
    t = f"c{uuid.uuid4().hex[:10]}"
    jobs_deployment = await apply(on_done, on_job_completed(tags=[t]), "job.completed", t)
    inputs_deployment = await apply(on_input, on_input_ready(tags=[t]), "input.ready", t)
    config = EmulatorConfig(
        api_keys=[API_KEY], seed=SEED, step_duration=0.01, upload_duration=0.05, concurrency=8
    )
    settings = ComfySettings(
        api_key=API_KEY,
        reconnect_delay=0.05,
        max_reconnect_delay=0.5,
        max_reconnect_attempts=1000,
    )
    done: Counter[str] = Counter()
    with EmulatorServer(config) as emulator:
        settings = settings.model_copy(update={"base_url": emulator.url})
        listener_backend = CloudBackend(settings=settings)
        counting = Counting()
        listener = ComfyListener(
            listener_backend,
            listener_id="chaos-listener",
            heartbeat_interval=None,
            events_client=counting,
        )
        running = asyncio.create_task(listener.run())
        try:
            await eventually(lambda: listener.stats.connects >= 1, message="listener connected")
            async with CloudBackend(settings=settings) as maker:
                # Before the storm: a job and an input whose runs show both triggers are live in
                # Prefect's trigger service (an event sent before that creates no run).
                warm_job = (await maker.submit(slow_workflow(2), tags=[t])).id
                warm_input = (await upload(emulator, "input", "warm.png", [t]))["id"]
                await runs_with(jobs_deployment, "job_id", warm_job)
                await runs_with(inputs_deployment, "input_id", warm_input)
                driver = asyncio.create_task(storm(emulator, random.Random(SEED), done))
                job_ids: list[str] = []
                input_ids: list[str] = []
                for n in range(JOBS):
                    job = await maker.submit(slow_workflow(10, step_seconds=0.1), tags=[t])
                    job_ids.append(job.id)
                    if n % (JOBS // INPUTS) == 0:
                        input_ids.append((await upload(emulator, "input", f"c{n}.png", [t]))["id"])
                    await asyncio.sleep(0.4)  # spread the work over the storm, not a sync
                await driver

                async def all_ended() -> bool:
                    for job_id in job_ids:
                        if (await maker.get_job(job_id)).status != "completed":
                            return False
                    return True

                await eventually(all_ended, timeout=60, interval=0.5, message="jobs completed")
                marker_job = (await maker.submit(slow_workflow(2), tags=[t])).id
                marker_input = (await upload(emulator, "input", "marker.png", [t]))["id"]
                job_runs = await runs_with(jobs_deployment, "job_id", marker_job, {*job_ids})
                input_runs = await runs_with(
                    inputs_deployment, "input_id", marker_input, {*input_ids}
                )
        finally:
            listener.stop()
            await asyncio.wait_for(running, scaled(30))
            await listener_backend.aclose()
    print(f"\nlistener chaos: {dict(done)}; listener {listener.stats}")
    unsent = [j for j in job_ids if not counting.terminal(j)]
    assert not unsent, f"the listener sent no outcome for {unsent}"
    per_job = Counter(run.parameters["job_id"] for run in job_runs)
    per_input = Counter(run.parameters["input_id"] for run in input_runs)
    missing = {*job_ids, marker_job, warm_job} - set(per_job)
    if missing:  # what the listener sent for them, and what Prefect's automations did
        sent = [
            (e.event, dict(e.resource), e.id)
            for e in counting.sent
            for j in missing
            if j in e.resource.id
        ]
        actions = await automation_actions()
        stored = await prefect_knows({f"comfy.job.{j}" for j in missing})
        raise AssertionError(
            f"{len(missing)} jobs without a run: sent {sent}; failed actions {actions}; "
            f"in Prefect {stored}"
        )
    assert set(per_job.values()) == {1}, per_job
    inputs = {*input_ids, marker_input, warm_input}
    assert set(per_input) == inputs and set(per_input.values()) == {1}, per_input
    assert {"drop", "handshake-close"} <= set(done), done
    print(
        f"\nlistener chaos: {dict(done)}; {len(job_runs)} job runs, {len(input_runs)} input runs; "
        f"listener {listener.stats}"
    )
