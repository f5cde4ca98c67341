"""The suspending wait, end to end: no flow process exists while the Comfy job runs.

A real ``prefect server start`` (SQLite, a free loopback port, its own ``PREFECT_HOME``), a process
work pool with ``prefect worker start``, two ``prefect-comfy listen`` processes (so every Comfy
event reaches Prefect twice) and the session's emulator. The resume automation is made by
``prefect-comfy automations create-resume``. Three deployments use ``suspend=True`` the three ways
users call it: ``run_comfy_workflow`` as the deployment's flow, as a subflow, and
``wait_for_comfy_job`` as a task of the user's flow. The module's runs start together, so the
whole module costs about one job's length plus two flow starts.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun

from tests.conftest import API_KEY
from tests.support.prefect_stack import ROOT, Stack, prefect_stack
from tests.waiting import eventually
from tests.workflows import slow_workflow, tiny_workflow

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(400)]

JOB_SECONDS = 12.0
BLOCK = "suspend-creds"
POOL = "suspend-pool"

FLOWS = textwrap.dedent(
    """
    from prefect import flow
    from prefect_comfy import ComfyCloudCredentials
    from prefect_comfy.flows import run_comfy_workflow
    from prefect_comfy.tasks import download_comfy_outputs, submit_comfy_job, wait_for_comfy_job


    @flow
    async def tasks_flow(block: str, workflow: dict, output_dir: str) -> list[str]:
        creds = await ComfyCloudCredentials.load(block)
        job = await submit_comfy_job(creds, workflow)
        job = await wait_for_comfy_job(creds, job.id, suspend=True, timeout=300)
        return [str(p) for p in await download_comfy_outputs(creds, job, output_dir)]


    @flow
    def subflow_flow(block: str, workflow: dict, output_dir: str) -> list[str]:
        creds = ComfyCloudCredentials.load(block)
        result = run_comfy_workflow(
            creds, workflow, output_dir=output_dir, suspend=True, timeout=300
        )
        return [str(p) for p in result.paths]
    """
)

DEPLOY = textwrap.dedent(
    """
    import sys
    from prefect import flow
    from prefect_comfy import ComfyCloudCredentials

    block, pool, flows_dir, root, key, url = sys.argv[1:7]
    ComfyCloudCredentials(api_key=key, base_url=url).save(block, overwrite=True)
    creds = ComfyCloudCredentials.load(block)
    for name in ("tasks_flow", "subflow_flow"):
        flow.from_source(flows_dir, f"suspend_flows.py:{name}").deploy(
            name="suspend", work_pool_name=pool, print_next_steps=False
        )
    flow.from_source(root, "prefect_comfy/flows.py:run_comfy_workflow").deploy(
        name="suspend",
        work_pool_name=pool,
        parameters={"credentials": creds, "suspend": True, "timeout": 300},
        print_next_steps=False,
    )
    """
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, _emulator_server) -> Any:
    home = tmp_path_factory.mktemp("suspend-prefect")
    with prefect_stack(home) as running:
        flows_dir = home / "flows"
        (flows_dir / "suspend_flows.py").write_text(FLOWS)
        running.run([sys.executable, "-m", "prefect", "work-pool", "create", POOL, "-t", "process"])
        running.run(
            [sys.executable, "-c", DEPLOY, BLOCK, POOL, str(flows_dir), str(ROOT), API_KEY]
            + [_emulator_server.url]
        )
        out = running.run(
            [sys.executable, "-m", "prefect_comfy.cli", "automations", "create-resume"]
        )
        assert "is up to date" in out
        # twice: the command is idempotent, one automation remains
        running.run([sys.executable, "-m", "prefect_comfy.cli", "automations", "create-resume"])
        running.spawn(
            "worker", [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL]
        )
        for name in ("one", "two"):
            running.listener(_emulator_server.url, API_KEY, name)
        try:
            yield running
        finally:
            print(running.logs())  # shown when a test fails


def client(stack: Stack) -> PrefectClient:
    return PrefectClient(stack.api_url)


async def start(stack: Stack, deployment: str, parameters: dict[str, Any]) -> uuid.UUID:
    async with client(stack) as c:
        dep = await c.read_deployment_by_name(deployment)
        run = await c.create_flow_run_from_deployment(dep.id, parameters=parameters)
    return run.id


async def flow_run(stack: Stack, flow_run_id: uuid.UUID) -> FlowRun:
    async with client(stack) as c:
        return await c.read_flow_run(flow_run_id)


async def state_names(stack: Stack, flow_run_id: uuid.UUID) -> list[str]:
    async with client(stack) as c:
        states = await c.read_flow_run_states(flow_run_id)
    return [s.name for s in sorted(states, key=lambda s: s.timestamp)]


def pid_alive(infrastructure_pid: str) -> bool:
    pid = int(infrastructure_pid.rsplit(":", 1)[-1])
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return False
    return "\nState:\tZ" not in status.read_text()


def jobs_of(emulator: Any, flow_run_id: uuid.UUID) -> list[Any]:
    tag = f"prefect.flow-run.{flow_run_id}"
    return [job for job in list(emulator.state.jobs.values()) if tag in job.tags]


async def suspended_without_a_process(stack: Stack, emulator: Any, run_id: uuid.UUID) -> None:
    async def suspended() -> FlowRun | None:
        run = await flow_run(stack, run_id)
        return run if run.state and run.state.name == "Suspended" else None

    run = await eventually(suspended, timeout=90, interval=0.2, message=f"{run_id} suspended")
    assert run.infrastructure_pid, "the worker recorded the flow's process"
    await eventually(
        lambda: not pid_alive(run.infrastructure_pid),  # type: ignore[arg-type]
        timeout=20,
        message="the suspended run's process gone",
    )
    [job] = jobs_of(emulator, run_id)
    assert job.status in ("pending", "running"), "the job runs while no flow process exists"


async def completed(stack: Stack, run_id: uuid.UUID, timeout: float = 120) -> FlowRun:
    async def done() -> FlowRun | None:
        run = await flow_run(stack, run_id)
        assert run.state is not None
        assert not run.state.is_failed() and not run.state.is_crashed(), run.state
        return run if run.state.is_completed() else None

    try:
        return await eventually(done, timeout=timeout, interval=0.3, message=f"{run_id} completed")
    except AssertionError:
        print(await diagnosis(stack, run_id))
        raise


async def diagnosis(stack: Stack, run_id: uuid.UUID) -> str:
    """What Prefect holds about a run that did not finish: its states and its related events."""
    from prefect.events.filters import EventFilter, EventRelatedFilter

    async with client(stack) as c:
        page = await c.read_events(
            filter=EventFilter(related=EventRelatedFilter(id=[f"prefect.flow-run.{run_id}"])),
            limit=50,
        )
        automations = await c.read_automations()
    run = await flow_run(stack, run_id)
    lines = [
        f"states: {await state_names(stack, run_id)}",
        f"labels: {run.labels} run_count: {run.run_count}",
    ]
    lines += [f"event {e.event} {e.resource.id} {[r.id for r in e.related]}" for e in page.events]
    lines += [f"automation {a.name} {a.trigger}" for a in automations]
    return "\n".join(lines)


async def test_each_way_to_call_it_suspends_then_resumes_and_downloads(stack, emulator, tmp_path):
    workflow = slow_workflow(steps=int(JOB_SECONDS / 0.05))
    runs: dict[str, tuple[uuid.UUID, Path]] = {}
    for name, deployment in [
        ("direct", "run-comfy-workflow/suspend"),
        ("subflow", "subflow-flow/suspend"),
        ("task", "tasks-flow/suspend"),
    ]:
        out = tmp_path / name
        params: dict[str, Any] = {"workflow": workflow, "output_dir": str(out)}
        if name != "direct":
            params["block"] = BLOCK
        runs[name] = (await start(stack, deployment, params), out)

    await asyncio.gather(
        *(suspended_without_a_process(stack, emulator, run_id) for run_id, _ in runs.values())
    )
    for name, (run_id, out) in runs.items():
        await completed(stack, run_id)
        names = await state_names(stack, run_id)
        assert names.count("Suspended") == 1, (name, names)  # two listeners: resumed once
        assert len(jobs_of(emulator, run_id)) == 1, f"{name}: exactly one Comfy job"
        [job] = jobs_of(emulator, run_id)
        assert job.status == "completed"
        files = sorted(out.iterdir())
        assert files and all(f.stat().st_size > 0 for f in files), f"{name}: outputs downloaded"


async def test_a_job_that_ends_before_the_check_never_suspends(stack, emulator, tmp_path):
    out = tmp_path / "quick"
    run_id = await start(
        stack,
        "tasks-flow/suspend",
        {"block": BLOCK, "workflow": tiny_workflow("quick"), "output_dir": str(out)},
    )
    await completed(stack, run_id)
    assert "Suspended" not in await state_names(stack, run_id)
    assert len(jobs_of(emulator, run_id)) == 1
    assert list(out.iterdir())
