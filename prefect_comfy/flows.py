"""The library flow: submit a workflow, wait for it on the event stream, download its outputs.

How cancellation reaches Comfy. A Comfy job keeps running whatever happens to the Prefect run that
started it, so :func:`run_comfy_workflow` cancels it explicitly, in two places:

1. In the flow process, a ``finally`` cancels the job when the flow leaves before the job ended: a
   Prefect ``timeout_seconds``, a cancelled flow run (the process gets a termination signal) or any
   error. A wait that times out is the sensor's business: it cancels the job when
   ``cancel_on_timeout`` (the default) and leaves it running otherwise.
2. :func:`cancel_comfy_job_hook`, an ``on_cancellation`` (and ``on_crashed``) hook. Under ``serve`` or
   a worker it runs in the runner process, which may kill the flow process before its ``finally``
   has run. It knows only the flow run: it reads the job id from the flow-run label
   ``comfy.job-id`` (set by :func:`~prefect_comfy.tasks.submit_comfy_job`) and rebuilds the
   credentials from the flow run's ``credentials`` parameter (see
   :func:`credentials_from_parameter`).

Cancelling twice is harmless: cancelling a job that already ended returns it unchanged.
"""

# No ``from __future__ import annotations`` here: Prefect validates flow parameters with a model
# built from the annotations, and a deployment may load this file by path, where string annotations
# cannot be resolved.
import concurrent.futures
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.blocks.core import Block
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_comfy import events
from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
from prefect_comfy.backends.comfyui.block import ComfyUIServer
from prefect_comfy.exceptions import InvalidWorkflow, OutcomeError
from prefect_comfy.job_steps import (
    COMFY_JOB_ID_LABEL,
    ComfyCredentials,
    ComfyJobResult,
    cancel_job,
    cancel_jobs_quietly,
    load_credentials,
    load_workflow,
    output_file,
    run_logger,
    to_download,
    unfinished_jobs_of,
)
from prefect_comfy.models import Job
from prefect_comfy.tasks import (
    download_comfy_outputs,
    get_comfy_job,
    submit_comfy_job,
    wait_for_comfy_job,
)

__all__ = [
    "cancel_comfy_job_hook",
    "credentials_from_parameter",
    "run_comfy_workflow",
]

WAIT_SLICE = 0.5
"""Seconds of one wait for a task's future in the flow (see :func:`_result_of`)."""

LATE_RESULT_WAIT = 10.0
"""Seconds a stopping flow waits for a submit in flight to learn the id of the job to cancel."""

CREDENTIALS_PARAMETER = "credentials"
"""The flow parameter :func:`cancel_comfy_job_hook` rebuilds the credentials from."""


async def credentials_from_parameter(value: Any) -> ComfyCredentials:
    """Credentials rebuilt from what a flow run's ``parameters`` hold for them.

    - ``{"$ref": {"block_document_id": ...}}``: a saved block passed to a deployment (what the UI
      and ``serve(parameters=...)`` store): loaded from the Prefect API, key included;
    - a block's fields (a flow called directly with a block): the API key is stored masked, so it
      comes from ``COMFY_API_KEY`` in the process that runs the hook; the rest from the fields
      (fields with a ``url`` and no ``base_url`` are a :class:`ComfyUIServer`);
    - a string: the name of a saved block: ``"<block type slug>/<name>"``, or a bare name tried as
      a :class:`ComfyCloudCredentials`, then as a :class:`ComfyUIServer`;
    - nothing: the ``COMFY_*`` environment.
    """
    if isinstance(value, Block):
        return value  # type: ignore[return-value]
    if isinstance(value, dict) and "$ref" in value:
        return await Block.aload_from_ref(value["$ref"])  # type: ignore[return-value]
    if isinstance(value, dict):
        kind = (
            ComfyUIServer if "url" in value and "base_url" not in value else ComfyCloudCredentials
        )
        fields = {k: v for k, v in value.items() if k in kind.model_fields}
        return kind.model_validate(fields)
    if isinstance(value, str) and value:
        return await load_credentials(value)
    return ComfyCloudCredentials()


async def cancel_comfy_job_hook(flow: Any, flow_run: FlowRun, state: State) -> None:
    """Cancel the Comfy job of a flow run that is being cancelled (or crashed).

    Finds the job through the flow-run label ``comfy.job-id`` (read again from the API, since the
    runner's copy of the flow run may predate it) and the credentials through the flow run's
    ``credentials`` parameter. Logs instead of raising.
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
        if not job_ids:
            log.info("No Comfy job to cancel for flow run %s", flow_run.id)
        for one in job_ids:
            job = await cancel_job(credentials, one)
            log.info(
                "Asked Comfy to cancel job %s of flow run %s (now %s)", one, flow_run.id, job.status
            )
    except Exception as exc:
        log.error("Could not cancel the Comfy job of flow run %s: %r", flow_run.id, exc)


@flow(
    name="run-comfy-workflow",
    on_cancellation=[cancel_comfy_job_hook],
    on_crashed=[cancel_comfy_job_hook],
)
def run_comfy_workflow(
    credentials: ComfyCredentials,
    workflow: dict[str, Any] | str,
    *,
    tags: Sequence[str] = (),
    output_dir: str | None = None,
    timeout: float | None = None,
    cancel_on_timeout: bool = True,
    emit_events: bool = True,
    progress_artifact: bool = True,
    outputs_artifact: bool = True,
) -> ComfyJobResult:
    """Run a Comfy workflow: submit it, wait for it on the event stream, download its outputs.

    Args:
        credentials: the credentials block.
        workflow: an API-format graph, or the path of a JSON file holding one.
        tags: tags for the Comfy job (the flow run's own tag is added).
        output_dir: where the outputs are saved; a new temporary folder if unset.
        timeout: seconds to wait for the job; ``None`` waits for ever.
        cancel_on_timeout: whether a wait that times out cancels the Comfy job.
        emit_events: whether to emit ``comfy.job.*`` Prefect events.
        progress_artifact: whether to keep a progress artifact up to date while waiting.
        outputs_artifact: whether to publish a markdown artifact of the outputs, with previews.

    Returns:
        The job's id, status and output files (name, type, redacted URL, local path).

    Raises:
        InvalidWorkflow: the workflow is not an API-format graph, or the server refused it.
        JobFailed: the job failed; it carries Comfy's error code, message and node.
        JobCancelled: the job was cancelled.
        JobTimedOut: ``timeout`` passed first.
    """
    graph = load_workflow(workflow)
    flow_run_id = str(FlowRunContext.get().flow_run.id)
    job: Job | None = None
    submitted: PrefectFuture[Job] | None = None
    settled = False
    try:
        submitted = submit_comfy_job.submit(
            credentials, graph, tags=list(tags), emit_events=emit_events
        )
        job = _result_of(submitted)
        job = _result_of(
            wait_for_comfy_job.submit(
                credentials,
                job.id,
                timeout=timeout,
                cancel_on_timeout=cancel_on_timeout,
                emit_events=emit_events,
                progress_artifact=progress_artifact,
                outputs_artifact=outputs_artifact,
            )
        )
        settled = True
    except (InvalidWorkflow, OutcomeError):  # no job, or it ended (a timed-out wait: the sensor's)
        settled = True
        raise
    finally:
        if not settled:
            run_logger().warning("The flow run stopped before its Comfy job ended: cancelling it")
            if job is None and submitted is not None:
                job = _late_result(submitted)  # the submit may be answered yet
            job_id = job.id if job is not None else None
            run_coro_as_sync(cancel_jobs_quietly(credentials, job_id, flow_run_id=flow_run_id))
    if not job.outputs:
        job = _result_of(get_comfy_job.submit(credentials, job.id))
    dest = output_dir or tempfile.mkdtemp(prefix="comfy-outputs-")
    paths = _result_of(download_comfy_outputs.submit(credentials, job, dest))
    return _result(job, paths)


def _result_of(future: PrefectFuture[Any]) -> Any:
    """A task's result, waiting in short slices: a Prefect timeout of a flow that runs outside the
    main thread is an exception raised between two Python instructions, never inside one long wait.
    """
    wrapped = getattr(future, "wrapped_future", None)
    if isinstance(wrapped, concurrent.futures.Future):
        while not wrapped.done():
            concurrent.futures.wait([wrapped], timeout=WAIT_SLICE)
    return future.result()


def _late_result(future: PrefectFuture[Any]) -> Any:
    """The result of a task still running, if it comes within :data:`LATE_RESULT_WAIT`."""
    try:
        result = future.result(timeout=LATE_RESULT_WAIT, raise_on_failure=False)
    except Exception:
        return None
    return result if isinstance(result, Job) else None


def _result(job: Job, paths: list[Path]) -> ComfyJobResult:
    """The result model; ``paths`` are the downloads of the saved outputs (previews are listed with
    no path: the download leaves them out), in the same order."""
    downloaded = dict(zip([o.id for o in to_download(job.outputs)], paths, strict=False))
    files = [output_file(output, downloaded.get(output.id)) for output in job.outputs]
    user_tags = [t for t in job.tags if not t.startswith(events.FLOW_RUN_TAG_PREFIX)]
    return ComfyJobResult(job_id=job.id, status=job.status, outputs=files, tags=user_tags)
