"""Unit tests of prefect_comfy.orchestration.suspend: Prefect's contexts, client and suspension are mocked.

The end-to-end behaviour (a real server, worker, listener and emulator) is in
tests/integration/test_suspend_prefect.py; here each decision of the module is pinned alone.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.exceptions import Pause

from prefect_comfy.orchestration import suspend
from tests.support.memory import MemoryBackend, MemoryServer


def run(*, parent_task: Any = None, deployment: bool = True, run_count: int = 1, labels=None):
    return SimpleNamespace(
        id=uuid.uuid4(),
        parent_task_run_id=parent_task,
        deployment_id=uuid.uuid4() if deployment else None,
        run_count=run_count,
        labels=dict(labels or {}),
    )


class FakeClient:
    """The few PrefectClient calls the module makes, recorded."""

    def __init__(self, runs: dict[Any, Any] | None = None, tasks: dict[Any, Any] | None = None):
        self.runs = runs or {}
        self.tasks = tasks or {}
        self.labels: list[tuple[Any, dict[str, str]]] = []
        resume = SimpleNamespace(type="resume-flow-run")
        self.automations = [SimpleNamespace(enabled=True, actions=[resume])]

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read_flow_run(self, flow_run_id: Any) -> Any:
        return self.runs[flow_run_id]

    async def read_task_run(self, task_run_id: Any) -> Any:
        return self.tasks[task_run_id]

    async def read_automations(self) -> list[Any]:
        return self.automations

    async def update_flow_run_labels(self, flow_run_id: Any, labels: dict[str, str]) -> None:
        self.labels.append((flow_run_id, labels))
        self.runs.setdefault(flow_run_id, SimpleNamespace(labels={})).labels.update(labels)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Patch the module's view of Prefect: contexts, client, suspend and resume; the job is on a
    memory server."""
    suspend._lineages.clear()
    suspend._counts.clear()
    suspend._submissions.clear()
    w = SimpleNamespace(
        flow_ctx=None,
        task_ctx=None,
        client=FakeClient(),
        server=MemoryServer(),
        on_suspend=None,
        suspended=[],
        resumed=[],
        resume_error=None,
    )

    monkeypatch.setattr(suspend.FlowRunContext, "get", classmethod(lambda cls: w.flow_ctx))
    monkeypatch.setattr(suspend.TaskRunContext, "get", classmethod(lambda cls: w.task_ctx))
    monkeypatch.setattr(suspend, "get_client", lambda: w.client)
    monkeypatch.setattr(suspend, "run_logger", lambda: logging.getLogger("test-suspend"))
    # Rewriting Prefect's log record is runs.py's concern (tests/integration/test_suspend_logs.py).
    monkeypatch.setattr(suspend, "quiet_suspended_task_finish", lambda: None)

    w.server.add_job("job-1", "running")
    w.server.add_job("job-7", "running")

    @asynccontextmanager
    async def backend_of(credentials: Any):
        yield MemoryBackend(w.server)

    monkeypatch.setattr(suspend, "backend_of", backend_of)

    async def asuspend_flow_run(**kwargs: Any) -> None:
        w.suspended.append(kwargs)
        if w.on_suspend is not None:
            w.on_suspend()

    async def aresume_flow_run(flow_run_id: Any) -> None:
        w.resumed.append(flow_run_id)
        if w.resume_error is not None:
            raise w.resume_error

    import prefect._flow_run_suspension
    import prefect.flow_runs

    monkeypatch.setattr(prefect.flow_runs, "asuspend_flow_run", asuspend_flow_run)
    monkeypatch.setattr(prefect.flow_runs, "aresume_flow_run", aresume_flow_run)
    monkeypatch.setattr(
        prefect._flow_run_suspension, "raise_if_flow_run_suspension_requested", lambda: None
    )
    return w


def in_flow(world: SimpleNamespace, flow_run: Any, *, task: bool = True) -> None:
    world.flow_ctx = SimpleNamespace(flow_run=flow_run)
    world.task_ctx = SimpleNamespace() if task else None
    world.client.runs[flow_run.id] = flow_run


# lineage and the submission key


async def test_no_flow_run_has_no_lineage(world) -> None:
    assert await suspend.lineage() is None
    assert await suspend.root_flow_run() is None
    assert await suspend.submission_key() is None


async def test_a_top_level_run_is_its_own_root_with_an_empty_path(world) -> None:
    root = run()
    in_flow(world, root)
    assert await suspend.lineage() == (root, "")


async def test_a_subflow_finds_its_root_through_the_parent_tasks_keys(world) -> None:
    root = run()
    outer_task = SimpleNamespace(task_key="outer-key", flow_run_id=root.id)
    middle = run(parent_task=uuid.uuid4())
    inner_task = SimpleNamespace(task_key="inner-key", flow_run_id=middle.id)
    leaf = run(parent_task=uuid.uuid4())
    world.client.tasks = {
        middle.parent_task_run_id: outer_task,
        leaf.parent_task_run_id: inner_task,
    }
    world.client.runs.update({root.id: root, middle.id: middle})
    in_flow(world, leaf)

    assert await suspend.lineage() == (root, "outer-key/inner-key")
    world.client.tasks.clear()  # remembered: no second walk up the API
    assert await suspend.lineage() == (root, "outer-key/inner-key")


async def test_a_submit_outside_a_task_run_has_no_key(world) -> None:
    in_flow(world, run(), task=False)
    assert await suspend.submission_key() is None


async def test_the_rerun_after_a_resume_repeats_the_same_keys_in_order(world) -> None:
    root = run()
    in_flow(world, root)
    first = [await suspend.submission_key() for _ in range(3)]
    assert len(set(first)) == 3, "each submit of a run has its own key"
    suspend._counts.clear()  # the rerun is a new process
    assert [await suspend.submission_key() for _ in range(3)] == first


async def test_a_retry_of_the_flow_run_submits_anew(world) -> None:
    root = run(run_count=1)
    in_flow(world, root)
    before = await suspend.submission_key()
    suspend._counts.clear()
    root.run_count = 2  # a Prefect retry raises run_count, a resume keeps it
    assert await suspend.submission_key() != before


# resumed_job


async def test_no_key_or_no_label_means_submit(world) -> None:
    in_flow(world, run())
    assert await suspend.resumed_job(object(), None) is None
    assert await suspend.resumed_job(object(), "k") is None
    assert world.server.reads == []


async def test_the_label_written_before_the_suspension_returns_that_job(world) -> None:
    root = run()
    in_flow(world, root)
    # the context's copy predates the label: it is read again from the API
    world.client.runs[root.id] = run(labels={suspend.RESUME_LABEL_PREFIX + "k": "job-1"})
    job = await suspend.resumed_job(object(), "k")
    assert job is not None and job.id == "job-1"
    assert world.server.reads == [("job", "job-1")]
    assert suspend._submissions["job-1"] == "k"


# suspend_unless_ended


async def test_outside_a_deployment_it_refuses_before_suspending(world) -> None:
    in_flow(world, run(deployment=False))
    with pytest.raises(suspend.SuspendNotPossible, match="deploy the flow, or wait without"):
        await suspend.suspend_unless_ended(object(), "job-1", timeout=10)
    assert world.suspended == [] and world.server.reads == []


async def test_no_flow_run_at_all_is_refused_too(world) -> None:
    with pytest.raises(suspend.SuspendNotPossible):
        await suspend.suspend_unless_ended(object(), "job-1", timeout=10)


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
async def test_a_job_that_ended_is_returned_without_suspending(world, status: str) -> None:
    in_flow(world, run())
    world.server.finish("job-1", status)
    job = await suspend.suspend_unless_ended(object(), "job-1", timeout=10)
    assert job.status == status
    assert world.suspended == [] and world.client.labels == []


async def test_a_running_job_labels_the_root_then_suspends_it(world, caplog) -> None:
    caplog.set_level(logging.INFO, "test-suspend")
    root = run()
    in_flow(world, root)
    suspend.remember_submission("job-1", "k")
    with pytest.raises(Pause, match="job-1"):
        await suspend.suspend_unless_ended(object(), "job-1", timeout=42.9)
    assert world.client.labels == [
        (
            root.id,
            {
                suspend.RESUME_LABEL_PREFIX + "k": "job-1",
                suspend.SUSPENDED_JOB_LABEL: "job-1",
                suspend.CANCEL_ON_TIMEOUT_LABEL: "true",
            },
        )
    ]
    [call] = world.suspended
    assert call["flow_run_id"] == root.id and call["timeout"] == 42
    assert world.resumed == [], "still running after the suspension: nothing to resume"
    said = caplog.text
    assert "prefect-comfy listen" in said and "42 s" in said and "never resumed" in said, said


async def test_without_a_timeout_the_suspension_lasts_the_default(world) -> None:
    in_flow(world, run())
    with pytest.raises(Pause):
        await suspend.suspend_unless_ended(object(), "job-1", timeout=None)
    assert world.suspended[0]["timeout"] == suspend.DEFAULT_SUSPEND_TIMEOUT


async def test_a_job_from_elsewhere_gets_no_resume_label_and_may_be_kept_on_timeout(world):
    root = run()
    in_flow(world, root)
    with pytest.raises(Pause):
        await suspend.suspend_unless_ended(object(), "job-7", timeout=5, cancel_on_timeout=False)
    assert world.client.labels == [
        (root.id, {suspend.SUSPENDED_JOB_LABEL: "job-7", suspend.CANCEL_ON_TIMEOUT_LABEL: "false"})
    ]


async def test_each_suspension_has_its_own_key(world) -> None:
    """Prefect refuses a second suspension with a key it has seen: a run suspends again after a
    resume by hand, so every suspension needs a fresh key."""
    in_flow(world, run())
    for _ in range(2):
        with pytest.raises(Pause):
            await suspend.suspend_unless_ended(object(), "job-1", timeout=5)
    assert world.suspended[0]["key"] != world.suspended[1]["key"]


async def test_a_job_that_ends_while_suspending_resumes_the_run_itself(world) -> None:
    root = run()
    in_flow(world, root)
    world.on_suspend = lambda: world.server.finish("job-1", "completed")  # ends meanwhile
    with pytest.raises(Pause):
        await suspend.suspend_unless_ended(object(), "job-1", timeout=5)
    assert world.resumed == [root.id]


async def test_a_resume_refused_because_the_automation_was_first_is_not_an_error(world) -> None:
    root = run()
    in_flow(world, root)
    world.on_suspend = lambda: world.server.finish("job-1", "completed")  # ends meanwhile
    world.resume_error = RuntimeError("Cannot resume a flow run that is not paused")
    with pytest.raises(Pause):
        await suspend.suspend_unless_ended(object(), "job-1", timeout=5)
    assert world.resumed == [root.id]


def test_remember_submission_ignores_a_submit_without_a_key() -> None:
    suspend._submissions.clear()
    suspend.remember_submission("job-9", None)
    assert "job-9" not in suspend._submissions


@pytest.mark.parametrize("automations", ["none", "disabled", "another action"])
async def test_suspending_without_the_resume_automation_warns_in_the_runs_log(
    world, caplog, automations
) -> None:
    """The run would stay Suspended until its timeout with no word (issue 20, #8)."""
    caplog.set_level(logging.INFO, "test-suspend")
    world.client.automations = {
        "none": [],
        "disabled": [
            SimpleNamespace(enabled=False, actions=[SimpleNamespace(type="resume-flow-run")])
        ],
        "another action": [
            SimpleNamespace(enabled=True, actions=[SimpleNamespace(type="run-deployment")])
        ],
    }[automations]
    in_flow(world, run())
    with pytest.raises(Pause):
        await suspend.suspend_unless_ended(object(), "job-1", timeout=30)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "prefect-comfy automations create-resume" in warnings[0].getMessage()


async def test_with_the_resume_automation_there_is_no_warning(world, caplog) -> None:
    caplog.set_level(logging.INFO, "test-suspend")
    in_flow(world, run())
    with pytest.raises(Pause):
        await suspend.suspend_unless_ended(object(), "job-1", timeout=30)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
