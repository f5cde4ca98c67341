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
import contextlib
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun

from tests.support.keys import API_KEY
from tests.support.prefect_stack import ROOT, Stack, prefect_stack
from tests.support.waiting import eventually
from tests.support.workflows import slow_workflow, tiny_workflow

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(900)]

JOB_SECONDS = 12.0
BLOCK = "suspend-creds"
POOL = "suspend-pool"

FLOWS = textwrap.dedent(
    """
    from prefect import flow
    from prefect_comfy import ComfyCloudCredentials
    from prefect_comfy.orchestration.flows import run_comfy_workflow
    from prefect_comfy.orchestration.tasks import download_comfy_outputs, submit_comfy_job, wait_for_comfy_job


    @flow
    async def tasks_flow(
        block: str, workflow: dict, output_dir: str, timeout: float = 300
    ) -> list[str]:
        creds = await ComfyCloudCredentials.load(block)
        job = await submit_comfy_job(creds, workflow)
        job = await wait_for_comfy_job(creds, job.id, suspend=True, timeout=timeout)
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
    flow.from_source(root, "prefect_comfy/orchestration/flows.py:run_comfy_workflow").deploy(
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
        start_listeners(running, _emulator_server.url)
        try:
            yield running
        finally:
            print(running.logs())  # shown when a test fails


LISTENERS = ("one", "two")
_listeners: dict[str, Any] = {}


def start_listeners(stack: Stack, emulator_url: str) -> None:
    """The two listeners (the same names: the same cursor files, so a restart catches up)."""
    for name in LISTENERS:
        _listeners[name] = stack.listener(emulator_url, API_KEY, name)


@contextmanager
def listeners_down(stack: Stack, emulator_url: str) -> Iterator[None]:
    """SIGKILL both listeners (no clean stop, no drain); start them again on leaving."""
    for proc in _listeners.values():
        proc.kill()
        proc.wait(10)
    try:
        yield
    finally:
        start_listeners(stack, emulator_url)


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

    try:
        # Three flow processes starting at once take 40-50 s on an idle 2-core machine; a full
        # suite's load has taken this past 90 s (CI).
        run = await eventually(suspended, timeout=240, interval=0.2, message=f"{run_id} suspended")
    except AssertionError:
        print(await diagnosis(stack, run_id))
        print(stack.logs()[-20_000:])
        raise
    assert run.infrastructure_pid, "the worker recorded the flow's process"
    await eventually(
        lambda: not pid_alive(run.infrastructure_pid),  # type: ignore[arg-type]
        timeout=20,
        message="the suspended run's process gone",
    )
    [job] = jobs_of(emulator, run_id)
    assert job.status in ("pending", "running"), "the job runs while no flow process exists"


async def completed(stack: Stack, run_id: uuid.UUID, timeout: float = 240) -> FlowRun:
    async def done() -> FlowRun | None:
        run = await flow_run(stack, run_id)
        assert run.state is not None
        assert not run.state.is_failed() and not run.state.is_crashed(), run.state
        return run if run.state.is_completed() else None

    try:
        return await eventually(done, timeout=timeout, interval=0.3, message=f"{run_id} completed")
    except AssertionError:
        print(await diagnosis(stack, run_id))
        print(stack.logs()[-20_000:])
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


@contextlib.asynccontextmanager
async def server_busy(emulator: Any) -> AsyncIterator[None]:
    """Every running slot of the emulator taken by a job nobody waits for: the jobs submitted
    meanwhile stay ``pending`` until the block ends (it cancels the blockers), however long the
    flows take to suspend. The job's own length cannot promise that on a loaded machine: a 20-s job
    once completed before three flow processes had suspended and exited."""
    from prefect_comfy.backends.cloud.backend import CloudBackend

    async with CloudBackend(API_KEY, emulator.url) as backend:
        blockers = [
            await backend.submit(slow_workflow(steps=20_000), tags=["blocker"])
            for _ in range(emulator.config.concurrency)
        ]
        try:
            yield
        finally:
            for job in blockers:
                await backend.cancel(job.id)


async def test_each_way_to_call_it_suspends_then_resumes_and_downloads(stack, emulator, tmp_path):
    workflow = slow_workflow(steps=int(JOB_SECONDS / 0.05))
    runs: dict[str, tuple[uuid.UUID, Path]] = {}
    async with server_busy(emulator):
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


async def cancel(stack: Stack, run_id: uuid.UUID) -> None:
    """What ``prefect flow-run cancel`` does: propose Cancelling (Prefect makes it Cancelled)."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import State

    async with client(stack) as c:
        await c.set_flow_run_state(run_id, State(type=StateType.CANCELLING, name="Cancelling"))


async def events_about(stack: Stack, run_id: uuid.UUID, names: list[str]) -> list[Any]:
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    async with client(stack) as c:
        page = await c.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=names),
                related=EventRelatedFilter(id=[f"prefect.flow-run.{run_id}"]),
            ),
            limit=50,
        )
    return page.events


async def actions_on(stack: Stack, event_id: uuid.UUID, name: str) -> list[Any]:
    """The automation-action events of ``name`` that the event ``event_id`` triggered."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    async with client(stack) as c:
        page = await c.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=[name]),
                related=EventRelatedFilter(id=[f"prefect.event.{event_id}"]),
            ),
            limit=50,
        )
    return page.events


async def state_of(stack: Stack, run_id: uuid.UUID) -> Any:
    return (await flow_run(stack, run_id)).state


async def test_cancelling_a_suspended_run_cancels_its_comfy_job(stack, emulator, tmp_path):
    """No process of a suspended run exists to run a hook: the listener cancels the job."""
    workflow = slow_workflow(steps=int(120 / 0.05))  # far longer than the test
    run_id = await start(
        stack,
        "tasks-flow/suspend",
        {"block": BLOCK, "workflow": workflow, "output_dir": str(tmp_path / "x")},
    )
    await suspended_without_a_process(stack, emulator, run_id)
    await cancel(stack, run_id)
    assert (await state_of(stack, run_id)).name == "Cancelled"  # straight, no process to stop

    def job_cancelled() -> bool:
        [job] = jobs_of(emulator, run_id)
        return job.status == "cancelled"

    await eventually(job_cancelled, timeout=30, interval=0.2, message="the Comfy job cancelled")
    assert len(jobs_of(emulator, run_id)) == 1
    # the job's comfy.job.cancelled event reaches Prefect; the automation cannot resume the run
    await eventually(
        lambda: events_about(stack, run_id, ["comfy.job.cancelled"]),
        timeout=30,
        interval=0.3,
        message="comfy.job.cancelled in Prefect",
    )
    assert (await state_of(stack, run_id)).name == "Cancelled"
    assert "Resuming" not in await state_names(stack, run_id)


async def test_a_repeated_outcome_event_resumes_the_run_once(stack, emulator, tmp_path):
    """Two listeners forward every event; a third copy with a new id fires the automation again."""
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    out = tmp_path / "twice"
    run_id = await start(
        stack,
        "tasks-flow/suspend",
        {
            "block": BLOCK,
            "workflow": slow_workflow(steps=int(JOB_SECONDS / 0.05)),
            "output_dir": str(out),
        },
    )
    await suspended_without_a_process(stack, emulator, run_id)
    done = await completed(stack, run_id)
    [job] = jobs_of(emulator, run_id)
    files = sorted(out.iterdir())
    event_id = uuid.uuid4()
    async with PrefectEventsClient(stack.api_url) as events:
        await events.emit(
            Event(
                id=event_id,
                event="comfy.job.completed",
                resource={"prefect.resource.id": f"comfy.job.{job.id}"},
                related=[
                    {
                        "prefect.resource.id": f"prefect.flow-run.{run_id}",
                        "prefect.resource.role": "flow-run",
                    }
                ],
                payload={"id": job.id, "status": "completed"},
            )
        )
    # the automation fired on it, and the server refused to resume a run that is not suspended
    [failed] = await eventually(
        lambda: actions_on(stack, event_id, "prefect.automation.action.failed"),
        timeout=30,
        interval=0.3,
        message="the resume automation fired on the repeated event",
    )
    assert "resume" in failed.payload.get("reason", "").lower(), failed.payload
    again = await flow_run(stack, run_id)
    assert again.state is not None and again.state.is_completed()
    assert again.run_count == done.run_count
    assert (await state_names(stack, run_id)).count("Suspended") == 1
    assert len(jobs_of(emulator, run_id)) == 1
    assert sorted(out.iterdir()) == files, "the outputs were downloaded once"


async def test_a_listener_restarted_during_the_suspension_catches_up_and_resumes(
    stack, emulator, _emulator_server, tmp_path
):
    """Both listeners are killed while the run is suspended; the job completes while they are
    down; started again, their catch-up forwards the outcome and the run resumes."""
    out = tmp_path / "restart"
    run_id = await start(
        stack,
        "tasks-flow/suspend",
        {
            "block": BLOCK,
            "workflow": slow_workflow(steps=int(JOB_SECONDS / 0.05)),
            "output_dir": str(out),
        },
    )
    await suspended_without_a_process(stack, emulator, run_id)
    with listeners_down(stack, _emulator_server.url):

        def job_completed() -> bool:
            [job] = jobs_of(emulator, run_id)
            return job.status == "completed"

        await eventually(job_completed, timeout=60, interval=0.2, message="the job completed")
        assert (await state_of(stack, run_id)).name == "Suspended", "nothing else resumes it"
    await completed(stack, run_id)
    assert (await state_names(stack, run_id)).count("Suspended") == 1
    assert len(jobs_of(emulator, run_id)) == 1
    assert list(out.iterdir())


async def test_without_a_listener_the_suspension_timeout_fails_the_run(
    stack, emulator, _emulator_server, tmp_path
):
    """Nothing brings the outcome event: when the suspension's timeout passes, Prefect fails the
    run with a message that says so, and the wait's log line said what would resume it. The
    listener, once back, cancels the job as an ordinary wait's timeout does."""
    with listeners_down(stack, _emulator_server.url):
        run_id = await start(
            stack,
            "tasks-flow/suspend",
            {
                "block": BLOCK,
                "workflow": slow_workflow(steps=int(40 / 0.05)),
                "output_dir": str(tmp_path / "never"),
                "timeout": 3,
            },
        )

        async def failed() -> Any:
            state = await state_of(stack, run_id)
            return state if state is not None and state.is_failed() else None

        state = await eventually(failed, timeout=180, interval=0.3, message="the run failed")
    assert "never resumed" in (state.message or ""), state.message
    assert (await state_names(stack, run_id))[-2:] == ["Suspended", "Failed"]
    [job] = jobs_of(emulator, run_id)
    assert job.status in ("pending", "running"), "nothing of ours ran while the listeners were down"
    async with client(stack) as c:
        logs = await c.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
        )
    said = "\n".join(log.message for log in logs)
    assert "prefect-comfy listen" in said and "3 s" in said, said

    # the listeners are back: their catch-up sees the timed-out suspension and, as the ordinary
    # wait's timeout does (cancel_on_timeout), cancels the job
    def job_cancelled() -> bool:
        return jobs_of(emulator, run_id)[0].status == "cancelled"

    await eventually(job_cancelled, timeout=30, interval=0.2, message="the Comfy job cancelled")
    assert (await state_of(stack, run_id)).is_failed()


async def test_a_run_resumed_while_its_job_runs_suspends_again(stack, emulator, tmp_path):
    """Resumed by hand while the job still runs: the rerun reads the job, sees it running and
    suspends again; the real outcome event resumes it to completion, one job."""
    out = tmp_path / "by-hand"
    run_id = await start(
        stack,
        "tasks-flow/suspend",
        {"block": BLOCK, "workflow": slow_workflow(steps=int(45 / 0.05)), "output_dir": str(out)},
    )
    await suspended_without_a_process(stack, emulator, run_id)
    async with client(stack) as c:
        await c.resume_flow_run(run_id)

    async def suspended_twice() -> bool:
        return (await state_names(stack, run_id)).count("Suspended") == 2

    await eventually(suspended_twice, timeout=180, interval=0.3, message="suspended again")
    # (it suspends only a job it read as not ended: the rerun saw it running)
    await completed(stack, run_id, timeout=180)
    assert (await state_names(stack, run_id)).count("Suspended") == 2
    assert len(jobs_of(emulator, run_id)) == 1
    assert list(out.iterdir())
