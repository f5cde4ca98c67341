"""Where the Prefect layer runs: the run logger, and the label that ties a flow run to its job."""

from __future__ import annotations

import logging
import uuid

from prefect_comfy.bounded import Bounded

__all__ = [
    "CANCEL_ASKED",
    "COMFY_JOB_ID_LABEL",
    "label_flow_run",
    "quiet_suspended_task_finish",
    "run_logger",
]

COMFY_JOB_ID_LABEL = "comfy.job-id"
"""The flow-run label that names the Comfy job a flow run submitted (what cancellation reads)."""

CANCEL_ASKED = Bounded()
"""``(flow run id, Comfy job id)`` of the cancels this process has sent for a flow run: a later
cleanup of the same run in the same process (the flow's, after the sensor's; the cancel hook,
after the flow's) sends no second one. See `claim_cancel`."""


def current_flow_run_id() -> str | None:
    """The id of the flow run this code runs in (directly or in one of its task runs), if any."""
    from prefect.context import FlowRunContext, TaskRunContext

    task = TaskRunContext.get()
    if task is not None and task.task_run.flow_run_id is not None:
        return str(task.task_run.flow_run_id)
    flow = FlowRunContext.get()
    return str(flow.flow_run.id) if flow is not None and flow.flow_run is not None else None


def claim_cancel(job_id: str, flow_run_id: str | None = None) -> bool:
    """Whether to send the cancel of ``job_id`` now: ``False`` when this process has sent (or is
    sending) it for the same flow run. Outside a flow run, always ``True``.

    Args:
        job_id: the Comfy job.
        flow_run_id: the flow run; default: the one this code runs in.
    """
    run = flow_run_id or current_flow_run_id()
    return run is None or not CANCEL_ASKED.seen((run, job_id))


def release_cancel(job_id: str, flow_run_id: str | None = None) -> None:
    """The claimed cancel of ``job_id`` was not sent: a later cleanup may send it."""
    run = flow_run_id or current_flow_run_id()
    if run is not None:
        CANCEL_ASKED.take((run, job_id))


def run_logger(
    name: str = "prefect_comfy",
) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a flow or task run; outside one, the logger ``name``."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)


async def label_flow_run(flow_run_id: str, job_id: str) -> None:
    """Set the ``comfy.job-id`` label on a flow run, so that a cancellation hook can find the job.

    Logs a warning instead of raising: the job runs either way, only remote cancellation loses its
    handle.
    """
    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            await client.update_flow_run_labels(
                uuid.UUID(flow_run_id), {COMFY_JOB_ID_LABEL: job_id}
            )
    except Exception as exc:
        run_logger().warning("Could not label flow run %s with the Comfy job: %r", flow_run_id, exc)


SUSPENDED_TASK_MESSAGE = (
    "Left in state Running(): its flow run is suspended while the Comfy job runs"
)


class _SuspendedTaskFinish(logging.Filter):
    """Turns one task run's ERROR ``Finished in state Running()`` into an INFO that says why."""

    def __init__(self, task_run_id: str) -> None:
        super().__init__()
        self.task_run_id = task_run_id

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "task_run_id", None) == self.task_run_id and str(record.msg).startswith(
            "Finished in state Running"
        ):
            record.msg, record.args = SUSPENDED_TASK_MESSAGE, ()
            record.levelno, record.levelname = logging.INFO, "INFO"
            logging.getLogger("prefect.task_runs").removeFilter(self)
        return True


def quiet_suspended_task_finish() -> None:
    """Call in a task run that is about to raise Prefect's ``Pause``.

    Prefect's task engine logs ``Finished in state Running()`` at ERROR for a task run that a
    ``Pause`` leaves (its state is still Running, and only Completed is logged at INFO). For a
    suspending wait that is the expected way out, so the record becomes an INFO that says so.
    """
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    if ctx is not None and ctx.task_run is not None:
        logging.getLogger("prefect.task_runs").addFilter(_SuspendedTaskFinish(str(ctx.task_run.id)))
