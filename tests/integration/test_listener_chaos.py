"""The listener duplicates no flow run under chaos (issue 11's suite).

A listener forwards an emulator of its own into a real Prefect server (the test harness), where
two deployments wait on triggers: one on ``comfy.job.completed``, one on ``comfy.input.ready``
(no worker: the runs stay Scheduled, which is what is counted). For 12 s the emulator drops the
WebSocket, closes connections during the handshake (after ``connected``), pauses and duplicates
events while 20 jobs and 5 inputs are made; then it behaves, and a marker job and input are made.
Once the markers' runs exist, every job and input has exactly one flow run: none lost, none twice.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.emulator import EmulatorConfig, EmulatorServer
from prefect_comfy.listener.forwarder import ComfyListener
from prefect_comfy.settings import ComfySettings
from prefect_comfy.triggers import on_input_ready, on_job_completed
from tests.conftest import API_KEY
from tests.integration.test_listener_prefect import apply, upload
from tests.waiting import eventually
from tests.workflows import slow_workflow

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


async def runs_with(deployment_id: uuid.UUID, parameter: str, marker: str) -> list[Any]:
    """The deployment's flow runs, once the marker's run exists (a run made after every other)."""

    async def probe() -> list[Any] | None:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                limit=200,
            )
        return runs if any(r.parameters.get(parameter) == marker for r in runs) else None

    return await eventually(probe, timeout=60, interval=0.3, message=f"the run of {marker}")


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
    jobs_deployment = await apply(on_done, on_job_completed(tags=[t]))
    inputs_deployment = await apply(on_input, on_input_ready(tags=[t]))
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
        listener = ComfyListener(
            listener_backend, listener_id="chaos-listener", heartbeat_interval=None
        )
        running = asyncio.create_task(listener.run())
        try:
            await eventually(lambda: listener.stats.connects >= 1, message="listener connected")
            async with CloudBackend(settings=settings) as maker:
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
                job_runs = await runs_with(jobs_deployment, "job_id", marker_job)
                input_runs = await runs_with(inputs_deployment, "input_id", marker_input)
        finally:
            listener.stop()
            await asyncio.wait_for(running, 30)
            await listener_backend.aclose()
    print(f"\nlistener chaos: {dict(done)}; listener {listener.stats}")
    per_job = Counter(run.parameters["job_id"] for run in job_runs)
    per_input = Counter(run.parameters["input_id"] for run in input_runs)
    missing = {*job_ids, marker_job} - set(per_job)
    assert not missing, f"{len(missing)} jobs without a run; runs per job {per_job}"
    assert set(per_job.values()) == {1}, per_job
    assert set(per_input) == {*input_ids, marker_input} and set(per_input.values()) == {1}
    assert {"drop", "handshake-close"} <= set(done), done
    print(
        f"\nlistener chaos: {dict(done)}; {len(job_runs)} job runs, {len(input_runs)} input runs; "
        f"listener {listener.stats}"
    )
