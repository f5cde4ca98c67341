"""The suspending wait: no process holds a flow run while its Comfy job runs.

``wait_for_comfy_job(..., suspend=True)`` and ``run_comfy_workflow(..., suspend=True)`` check the
job once; if it still runs they suspend the ROOT flow run of the deployment
(``suspend_flow_run(flow_run_id=<root>)``: Prefect refuses to suspend a subflow on its own, and a
task cannot suspend itself) and raise Prefect's ``Pause``, so the flow's process exits at once.
The automation made by `prefect_comfy.orchestration.triggers.create_resume_automation` resumes the run
when the listener forwards the job's outcome event (related to ``prefect.flow-run.<id>``); the
worker then runs the flow again from the start, and:

- the submit does not start a second job: before suspending, the wait writes the label
  ``comfy.resume.<key>`` = job id on the root flow run, where ``<key>`` names the submit call (its
  flow run, task key and dynamic key, which a rerun of the same flow repeats);
  `resumed_job` finds it and the submit returns that job instead;
- the wait reads the job once (the truth): ended, it returns exactly what the ordinary wait
  returns; still running (resumed by hand, or a duplicate event), it suspends again.

When nothing resumes the run (no listener), Prefect fails it once ``timeout`` passes ("The flow
was paused and never resumed."). The labels ``comfy.suspended-job`` and ``comfy.cancel-on-timeout``
let the listener cancel that job then, as the ordinary wait's ``cancel_on_timeout`` does, and cancel
it when the suspended run is cancelled (`prefect_comfy.listener.cancels`).

Only jobs submitted by ``submit_comfy_job`` in the same flow run are deduplicated this way; a job id
that came from elsewhere needs no deduplication.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import Pause

from prefect_comfy.backends.registry import backend_of
from prefect_comfy.exceptions import ComfyConfigError
from prefect_comfy.models import Job
from prefect_comfy.orchestration.runs import quiet_suspended_task_finish, run_logger

__all__ = [
    "CANCEL_ON_TIMEOUT_LABEL",
    "DEFAULT_SUSPEND_TIMEOUT",
    "RESUME_LABEL_PREFIX",
    "SUSPENDED_JOB_LABEL",
    "SuspendNotPossible",
    "remember_submission",
    "resumed_job",
    "submission_key",
    "suspend_unless_ended",
]

RESUME_LABEL_PREFIX = "comfy.resume."
"""Root flow-run labels ``comfy.resume.<key>`` = job id: the submits a resumed run must not repeat."""
SUSPENDED_JOB_LABEL = "comfy.suspended-job"
"""Root flow-run label: the job the run is (or was last) suspended on."""
CANCEL_ON_TIMEOUT_LABEL = "comfy.cancel-on-timeout"
"""Root flow-run label, ``"true"`` or ``"false"``: whether the listener cancels that job when the
suspension's timeout fails the run (the wait's ``cancel_on_timeout``)."""
DEFAULT_SUSPEND_TIMEOUT = 24 * 3600
"""Seconds a suspended run waits to be resumed when no ``timeout`` is given (then it fails)."""

# job id -> the resume key of the submit that made it, for the jobs submitted in this process
_submissions: dict[str, str] = {}
# (root flow run id, subflow path) -> submits made so far in this process
_counts: dict[tuple[Any, str], int] = {}


class SuspendNotPossible(ComfyConfigError):
    """A suspending wait was asked for where Prefect cannot suspend (no deployment, no flow run)."""


_lineages: dict[Any, tuple[FlowRun, str]] = {}


async def lineage() -> tuple[FlowRun, str] | None:
    """The root flow run of the current run, and the path of subflow calls that leads here.

    The path (each parent task's key: which subflow, not which call of it) is the same in the
    rerun after a resume, whether or not Prefect reattaches the same subflow run.
    """
    flow_ctx = FlowRunContext.get()
    if flow_ctx is None or flow_ctx.flow_run is None:
        return None
    flow_run = flow_ctx.flow_run
    if flow_run.parent_task_run_id is None:
        return flow_run, ""
    if flow_run.id in _lineages:
        return _lineages[flow_run.id]
    path: list[str] = []
    async with get_client() as client:
        while flow_run.parent_task_run_id is not None:
            parent_task = await client.read_task_run(flow_run.parent_task_run_id)
            path.append(parent_task.task_key)  # dynamic keys are random uuids in Prefect 3.9
            flow_run = await client.read_flow_run(parent_task.flow_run_id)  # type: ignore[arg-type]
    found = (flow_run, "/".join(reversed(path)))
    _lineages[flow_ctx.flow_run.id] = found
    return found


async def root_flow_run() -> FlowRun | None:
    """The top-level flow run of the current run (itself when it is not a subflow)."""
    found = await lineage()
    return found[0] if found else None


async def submission_key() -> str | None:
    """A key for the submit being made, equal for the same submit in the rerun after a resume.

    It counts the submits of this process under the same root run and subflow path (a rerun
    starts a new process and repeats them in order), and includes the root's ``run_count``, which
    a resume keeps and a Prefect retry of the flow run increases (a retry submits anew).
    """
    found = await lineage()
    if found is None or TaskRunContext.get() is None:
        return None
    root, path = found
    counter = (root.id, path)
    _counts[counter] = _counts.get(counter, 0) + 1
    raw = f"{root.id}|{root.run_count}|{path}|{_counts[counter]}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def remember_submission(job_id: str, key: str | None) -> None:
    """Note which submit made ``job_id``, for a suspending wait to persist before it suspends."""
    if key is not None:
        _submissions[job_id] = key


async def resumed_job(credentials: Any, key: str | None) -> Job | None:
    """The job the submit of ``key`` made before its flow run suspended, or ``None`` (submit)."""
    if key is None:
        return None
    root = await root_flow_run()
    if root is None:
        return None
    if root.parent_task_run_id is None:  # the context's copy may predate this run's labels
        async with get_client() as client:
            root = await client.read_flow_run(root.id)
    job_id = (root.labels or {}).get(RESUME_LABEL_PREFIX + key)
    if not job_id:
        return None
    async with backend_of(credentials) as backend:
        job = await backend.get_job(str(job_id))
    _submissions[job.id] = key
    run_logger().info(
        "Comfy job %s was submitted before this flow run suspended: not submitting again", job.id
    )
    return job


async def suspend_unless_ended(
    credentials: Any, job_id: str, *, timeout: float | None, cancel_on_timeout: bool = True
) -> Job:
    """Read the job once; return it if it ended, else suspend the root flow run (raises ``Pause``).

    Args:
        credentials: the credentials block (or a backend).
        job_id: the Comfy job.
        timeout: seconds the suspended run waits to be resumed before Prefect fails it
            (``None``: `DEFAULT_SUSPEND_TIMEOUT`).
        cancel_on_timeout: whether the listener cancels the job when that timeout fails the run
            (written as the label `CANCEL_ON_TIMEOUT_LABEL`; see
            `prefect_comfy.listener.cancels`).

    Raises:
        SuspendNotPossible: not inside a flow run of a deployment.
        Pause: the run is suspended; let it propagate (Prefect ends the flow's process).
    """
    root = await root_flow_run()
    if root is None or root.deployment_id is None:
        raise SuspendNotPossible(
            "suspend=True needs a flow run of a deployment (Prefect can only resume a deployed run)"
            ": deploy the flow, or wait without suspend=True"
        )
    async with backend_of(credentials) as backend:
        job = await backend.get_job(job_id)
    if job.is_terminal:
        return job
    key = _submissions.get(job.id)
    from prefect.flow_runs import asuspend_flow_run

    labels = {
        SUSPENDED_JOB_LABEL: job.id,
        CANCEL_ON_TIMEOUT_LABEL: "true" if cancel_on_timeout else "false",
    }
    if key is not None:
        labels[RESUME_LABEL_PREFIX + key] = job.id
    async with get_client() as client:
        await client.update_flow_run_labels(root.id, labels)
        resumable = await _resume_automation_exists(client)
    seconds = int(timeout if timeout is not None else DEFAULT_SUSPEND_TIMEOUT)
    if resumable is False:
        run_logger().warning(
            "No enabled Prefect automation resumes suspended flow runs: nothing will resume flow "
            "run %s when Comfy job %s ends, and Prefect fails it after %d s. Create it once with "
            "`prefect-comfy automations create-resume` (or "
            "prefect_comfy.orchestration.triggers.create_resume_automation()), and keep `prefect-comfy listen` "
            "running",
            root.id,
            job.id,
            seconds,
        )
    run_logger().info(
        "Comfy job %s is %s: suspending flow run %s for up to %d s. The job's outcome event "
        "resumes it (it needs `prefect-comfy listen` running and the resume automation); if "
        "nothing resumes it in %d s, Prefect fails the run ('never resumed')",
        job.id,
        job.status,
        root.id,
        seconds,
        seconds,
    )
    await asuspend_flow_run(flow_run_id=root.id, timeout=seconds, key=str(uuid.uuid4()))
    await _resume_if_ended_meanwhile(backend_of(credentials), job.id, root.id)
    from prefect._flow_run_suspension import raise_if_flow_run_suspension_requested

    quiet_suspended_task_finish()
    raise_if_flow_run_suspension_requested()
    raise Pause(f"Suspended while Comfy job {job.id} runs")


async def _resume_automation_exists(client: Any) -> bool | None:
    """Whether an enabled automation resumes flow runs (``None``: the automations cannot be read)."""
    try:
        automations = await client.read_automations()
    except Exception:  # an old server, or no rights: say nothing rather than a false warning
        return None
    return any(
        getattr(a, "enabled", True)
        and any(getattr(action, "type", None) == "resume-flow-run" for action in a.actions)
        for a in automations
    )


async def _resume_if_ended_meanwhile(backend_cm: Any, job_id: str, root_id: Any) -> None:
    """The job may have ended between the check and the suspension: its outcome event then found a
    run that was not suspended yet, and nothing would resume it. Read once more and resume it now.
    """
    from prefect.flow_runs import aresume_flow_run

    async with backend_cm as backend:
        job = await backend.get_job(job_id)
    if not job.is_terminal:
        return
    run_logger().info("Comfy job %s ended while the flow run suspended: resuming it", job_id)
    try:
        await aresume_flow_run(root_id)
    except Exception as exc:  # the automation got there first
        run_logger().info("Flow run %s was resumed already: %r", root_id, exc)
