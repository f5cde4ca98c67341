"""An HA pair of listeners across a Prefect restart: each job's deployment runs once (issue 20, 7).

Two ``prefect-comfy listen`` processes (A and B, each with its cursor) on one emulator and one real
``prefect server start`` (SQLite in a temporary folder). B stops while jobs run; A forwards their
outcomes and those of jobs submitted while B is down, and a deployment with ``on_job_completed``
runs once for each. The Prefect server restarts (same database): its trigger service forgets the
event ids it acted on. B starts again and recovers the same outcomes (its cursor's jobs through REST,
the others by its catch-up by time). Prefect stores each event once, but a trigger fires again for
an event id it has forgotten: B must ask Prefect what it already stores and not send those again.
Before the fix every job's deployment ran twice.
"""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_comfy.models import ComfyEvent
from prefect_comfy.orchestration.events import names as comfy_events
from prefect_comfy.orchestration.triggers import on_job_completed
from prefect_comfy_emulator import EmulatorConfig, EmulatorServer
from tests.support.keys import API_KEY
from tests.support.listener_process import ListenerProcess, cursor_ids
from tests.support.prefect_stack import prefect_stack
from tests.support.triggers import apply_live, is_probe, probe_run, runs_of
from tests.support.waiting import eventually, scaled
from tests.support.workflows import slow_workflow, tiny_workflow

pytestmark = pytest.mark.prefect


@flow
def completed_flow(job_id: str, outputs: list[dict[str, Any]] | None = None) -> str:
    return job_id


@pytest.fixture(scope="module")
def ha_emulator():
    config = EmulatorConfig(api_keys=[API_KEY], seed=7, step_duration=0.01, concurrency=8)
    with EmulatorServer(config) as server:
        yield server


async def completed_events(job_id: str) -> list[Any]:
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=[comfy_events.JOB_COMPLETED]),
                resource=EventResourceFilter(id=[comfy_events.resource_id("job", job_id)]),
            ),
            limit=50,
        )
    return page.events


async def test_an_ha_pair_runs_each_deployment_once_across_a_prefect_restart(ha_emulator, tmp_path):
    emulator = ha_emulator
    tag = f"ha{uuid.uuid4().hex[:8]}"

    def probe(pid: str) -> ComfyEvent:
        return ComfyEvent(event="job.completed", payload={"id": pid, "tags": [tag]})

    with prefect_stack(tmp_path / "prefect", start_timeout=scaled(90)) as stack:
        listeners = []
        for name in ("a", "b"):
            listener = ListenerProcess(emulator, tmp_path / f"{name}.json", f"ha-{name}")
            listener.env.update(
                PREFECT_API_URL=stack.api_url,
                PREFECT_HOME=str(stack.home),
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
            )
            listeners.append(listener)
        first, second = listeners
        restarted = ListenerProcess(emulator, tmp_path / "b.json", "ha-b")  # B again
        restarted.env = second.env
        try:
            with temporary_settings({PREFECT_API_URL: stack.api_url}):
                deployment_id = await apply_live(
                    completed_flow, on_job_completed(tags=[tag]), probe, address=emulator.url
                )
                await first.start()
                await second.start()
                async with httpx.AsyncClient(
                    base_url=emulator.api_url,
                    headers={"Authorization": f"Bearer {API_KEY}"},
                    timeout=10,
                ) as http:

                    async def submit(workflow: dict[str, Any]) -> str:
                        response = await http.post(
                            "/jobs", json={"workflow": workflow, "tags": [tag]}
                        )
                        assert response.status_code == 202, response.text
                        return response.json()["id"]

                    # Seen in flight by both; B stops before they end.
                    running = [
                        await submit(slow_workflow(200, step_seconds=0.05)) for _ in range(3)
                    ]
                    await eventually(
                        lambda: set(running) <= cursor_ids(tmp_path / "b.json"),
                        timeout=30,
                        message="B has the running jobs in its cursor",
                    )
                    assert await second.end(signal.SIGTERM) == 0, second.text[-3000:]
                    # Submitted and ended while B is down: B's catch-up by time finds them.
                    unseen = [await submit(tiny_workflow(f"{tag}{i}")) for i in range(2)]
                jobs = running + unseen

                # A forwards every outcome, and the deployment runs once for each.
                runs = await runs_of(deployment_id, count=len(jobs), timeout=60)
                assert sorted(r.parameters["job_id"] for r in runs) == sorted(jobs)
                for job_id in jobs:
                    await eventually(
                        lambda j=job_id: completed_events(j), timeout=30, message="stored"
                    )

            # The Prefect server restarts on the same database: its triggers forget event ids.
            await asyncio.to_thread(stack.restart_server, scaled(90))  # A's output still read
            with temporary_settings({PREFECT_API_URL: stack.api_url}):
                await probe_run(deployment_id, probe, address=emulator.url)  # triggers are live

                await restarted.start()  # B: reconciles its cursor, then catches up by time
                await eventually(
                    lambda: "caught up since" in restarted.text,
                    timeout=60,
                    message="B caught up",
                )
                # A clean stop sends what B queued and has Prefect confirm it; a probe sent after
                # that has its run once the trigger service has acted on B's events.
                assert await restarted.end(signal.SIGTERM) == 0, restarted.text[-3000:]
                await probe_run(deployment_id, probe, address=emulator.url)

                async with get_client() as client:
                    from prefect.client.schemas.filters import (
                        DeploymentFilter,
                        DeploymentFilterId,
                    )

                    every_run = await client.read_flow_runs(
                        deployment_filter=DeploymentFilter(
                            id=DeploymentFilterId(any_=[deployment_id])
                        )
                    )
                triggered = Counter(r.parameters["job_id"] for r in every_run if not is_probe(r))
                assert triggered == Counter(jobs), (triggered, restarted.text[-4000:])
                for job_id in jobs:
                    assert len(await completed_events(job_id)) == 1
            assert await first.end(signal.SIGTERM) == 0, first.text[-3000:]
        finally:
            for listener in (first, second, restarted):
                if listener.process is not None and listener.process.returncode is None:
                    listener.process.kill()
                    await listener.process.wait()

    summary = re.search(r"caught_up=(\d+) already_stored=(\d+)", restarted.text)
    assert summary, restarted.text[-3000:]
    caught_up, already_stored = map(int, summary.groups())
    # B recovered every outcome (3 from its cursor, 2 by time) and sent none of them again.
    assert already_stored == len(jobs) and caught_up == 0, restarted.text[-3000:]
    assert API_KEY not in first.text + restarted.text
