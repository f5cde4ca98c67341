"""The library flow: submit a workflow, wait for it on the event stream, download its outputs.

`run_comfy_workflow` is the job block's three steps, ``ComfyWorkflow.trigger()`` →
``wait_for_completion()`` → ``fetch_result()`` (the shape of prefect-dbt's ``run_dbt_cloud_job``),
each a task run of its own, plus what only a flow can do: cancel the Comfy job when the flow run
stops first.

How cancellation reaches Comfy. A Comfy job keeps running whatever happens to the Prefect run that
started it, so `run_comfy_workflow` cancels it explicitly, in two places:

1. In the flow process, the flow cancels the job when it leaves before the job ended: a Prefect
   ``timeout_seconds``, a cancelled flow run (the process gets a termination signal) or any error.
   Stopped while the submit is answered, ``trigger()`` itself cancels what it started. A wait that
   times out is the sensor's business: it cancels the job when ``cancel_on_timeout`` (the default)
   and leaves it running otherwise. A submit that failed started no job: nothing is cancelled.
2. `cancel_comfy_job_hook`, an ``on_cancellation`` (and ``on_crashed``) hook. Under ``serve`` or
   a worker it runs in the runner process, which may kill the flow process before its ``finally``
   has run. It knows only the flow run: it reads the job id from the flow-run label
   ``comfy.job-id`` (set by `submit_comfy_job`) and rebuilds the
   credentials from the flow run's ``credentials`` parameter (see
   `credentials_from_parameter`).

Ctrl-C where the flow runs in the calling process (``prefect-comfy run``, a script) cancels the job
once: the sensor's cleanup, the flow's and the hook claim the cancel of a flow run's job in
`CANCEL_ASKED`, and only the first sends it. Cancelling twice is
harmless anyway: cancelling a job that already ended returns it unchanged, and a job the server no
longer has (ComfyUI forgets a prompt deleted from its queue) is logged at INFO.
"""

# No ``from __future__ import annotations`` here: Prefect validates flow parameters with a model
# built from the annotations, and a deployment may load this file by path, where string annotations
# cannot be resolved.
import tempfile
from collections.abc import Sequence
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.exceptions import Pause
from prefect.states import Cancelled, State
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_comfy.backends.registry import ComfyCredentials, credentials_from_parameter
from prefect_comfy.exceptions import InvalidWorkflow, JobCancelled, NotFound, OutcomeError
from prefect_comfy.orchestration.job_steps import (
    cancel_job,
    cancel_jobs_quietly,
    unfinished_jobs_of,
)
from prefect_comfy.orchestration.jobs import ComfyJobRun, ComfyWorkflow
from prefect_comfy.orchestration.results import ComfyJobResult
from prefect_comfy.orchestration.runs import CANCEL_ASKED, COMFY_JOB_ID_LABEL, run_logger
from prefect_comfy.orchestration.twins import STOPPED_MESSAGE

__all__ = [
    "cancel_comfy_job_hook",
    "credentials_from_parameter",
    "run_comfy_workflow",
]

CREDENTIALS_PARAMETER = "credentials"
"""The flow parameter `cancel_comfy_job_hook` rebuilds the credentials from."""


async def cancel_comfy_job_hook(flow: Any, flow_run: FlowRun, state: State) -> None:
    """Cancel the Comfy job of a flow run that is being cancelled (or crashed).

    Finds the job through the flow-run label ``comfy.job-id`` (read again from the API, since the
    runner's copy of the flow run may predate it) and the credentials through the flow run's
    ``credentials`` parameter. Logs instead of raising; a job that already ended, or that the
    server no longer has (the flow's own cleanup got there first), is logged at INFO.
    """
    from prefect.client.orchestration import get_client
    from prefect.logging.loggers import flow_run_logger

    log = flow_run_logger(flow_run)
    labels = dict(flow_run.labels or {})
    try:
        async with get_client() as client:
            labels.update((await client.read_flow_run(flow_run.id)).labels or {})
    except Exception as exc:
        log.warning("Could not read flow run %s again: %r", flow_run.id, exc)
    job_id = labels.get(COMFY_JOB_ID_LABEL)
    try:
        credentials = await credentials_from_parameter(
            (flow_run.parameters or {}).get(CREDENTIALS_PARAMETER)
        )
        # No label (stopped while the submit was being answered): look for the flow run's tag.
        job_ids = (
            [str(job_id)] if job_id else await unfinished_jobs_of(credentials, str(flow_run.id))
        )
    except Exception as exc:
        log.error("Could not find the Comfy job of flow run %s to cancel: %r", flow_run.id, exc)
        return
    if not job_ids:
        log.info("No Comfy job to cancel for flow run %s", flow_run.id)
    for one in job_ids:
        if (str(flow_run.id), one) in CANCEL_ASKED:  # the flow, in this process, cancelled it
            log.info(
                "Comfy job %s of flow run %s: its cancel was asked for already", one, flow_run.id
            )
            continue
        try:
            job = await cancel_job(credentials, one)
        except NotFound:
            log.info(
                "Comfy job %s of flow run %s is gone already: nothing to cancel", one, flow_run.id
            )
            continue
        except Exception as exc:
            log.error("Could not cancel Comfy job %s of flow run %s: %r", one, flow_run.id, exc)
            continue
        log.info(
            "Asked Comfy to cancel job %s of flow run %s (now %s)", one, flow_run.id, job.status
        )


@flow(
    name="run-comfy-workflow",
    on_cancellation=[cancel_comfy_job_hook],
    on_crashed=[cancel_comfy_job_hook],
)
def run_comfy_workflow(
    credentials: ComfyCredentials,
    workflow: dict[str, Any] | str,
    *,
    inputs: dict[str, Any] | None = None,
    tags: Sequence[str] = (),
    output_dir: str | None = None,
    timeout: float | None = None,
    cancel_on_timeout: bool = True,
    emit_events: bool = True,
    progress_artifact: bool = True,
    outputs_artifact: bool = True,
    suspend: bool = False,
) -> ComfyJobResult | State:
    """Run a Comfy workflow: submit it, wait for it on the event stream, download its outputs.

    The job block's steps (`ComfyWorkflow`): ``trigger()`` (the task
    ``submit_comfy_job``), ``wait_for_completion()`` (the sensor ``wait_for_comfy_job``) and
    ``fetch_result()`` (``download_comfy_outputs``).

    Args:
        credentials: the credentials block (any registered kind of server).
        workflow: a graph in API format or in the editor's save format (converted with the
            server's node catalog), JSON text, or the path of a JSON file or of a PNG ComfyUI
            saved.
        inputs: values to set by name, ``{"Positive Prompt.text": "a fox", "KSampler.seed": 7,
            "3.steps": 20}``; checked against the catalog before anything is submitted. A seed
            marked randomize in the save format gets a fresh value unless given here.
        tags: tags for the Comfy job (the flow run's own tag is added).
        output_dir: where the outputs are saved; a new temporary folder if unset.
        timeout: seconds to wait for the job; ``None`` waits for ever.
        cancel_on_timeout: whether a wait that times out cancels the Comfy job.
        emit_events: whether to emit ``comfy.job.*`` Prefect events.
        progress_artifact: whether to keep a progress artifact up to date while waiting.
        outputs_artifact: whether to publish a markdown artifact of the outputs, with previews.
        suspend: while the job runs, suspend the deployment's root flow run instead of waiting in
            a process (``timeout`` then bounds the suspension); see
            `prefect_comfy.orchestration.suspend` and docs/how-to/long-jobs.md.

    Returns:
        The job's id, status, output files (name, type, redacted URL, local path) and the seeds
        it ran with. A job
        cancelled on the Comfy side (ComfyUI's own interrupt or queue delete, the Comfy API,
        another client) ends the flow run ``Cancelled``, as a cancel from Prefect does: the flow
        returns a ``Cancelled`` state whose message names the job and says it was cancelled on
        the server, not by Prefect (a parent flow calling it gets
        ``prefect.exceptions.CancelledRun``, or the state with ``return_state=True``).

    Raises:
        InvalidWorkflow: not a workflow, it does not convert, an input does not fit, or the
            server refused it (nothing is submitted in the first three cases).
        CatalogUnavailable: a save-format workflow needs the server's node catalog and none can
            be had.
        JobFailed: the job failed; it carries Comfy's error code, message and node.
        JobTimedOut: ``timeout`` passed first.
    """
    block = ComfyWorkflow(
        credentials=credentials,
        workflow=workflow,
        inputs=dict(inputs or {}),
        tags=list(tags),
        timeout=timeout,
        cancel_on_timeout=cancel_on_timeout,
        emit_events=emit_events,
        progress_artifact=progress_artifact,
        outputs_artifact=outputs_artifact,
        suspend=suspend,
        output_dir=output_dir or tempfile.mkdtemp(prefix="comfy-outputs-"),
    )
    run = block.trigger()
    try:
        run.wait_for_completion()
        return run.fetch_result()
    except JobCancelled as exc:  # cancelled on the Comfy side: the run ends Cancelled, not Failed
        return cancelled_on_server(exc)
    except (InvalidWorkflow, OutcomeError):  # it ended (a timed-out wait: the sensor's business)
        raise
    except Pause:  # suspended while the job runs: the job must go on
        raise
    except BaseException:
        _cancel_unless_ended(run)
        raise


def cancelled_on_server(exc: JobCancelled) -> State:
    """The ``Cancelled`` state of a flow run whose Comfy job was cancelled on the Comfy side."""
    message = (
        f"Comfy job {exc.job_id} was cancelled on the Comfy server (ComfyUI's interrupt or "
        "queue, the Comfy API or another client), not by Prefect"
    )
    run_logger().warning("%s: the flow run ends Cancelled", message)
    return Cancelled(message=message)


def _cancel_unless_ended(run: ComfyJobRun) -> None:
    """The flow run stopped first (a Prefect timeout, a cancellation, an error): cancel its job."""
    if run.job.is_terminal:
        return
    run_logger().warning(STOPPED_MESSAGE)
    flow_run_id = str(FlowRunContext.get().flow_run.id)  # type: ignore[union-attr]
    run_coro_as_sync(
        cancel_jobs_quietly(run.block.credentials, run.job_id, flow_run_id=flow_run_id)
    )
