"""Prefect tasks for Comfy: submit, read, cancel, download, upload, and (from the sensor) wait.

Each task is thin: it makes a backend from the credentials block (any registered kind, see
`prefect_comfy.backends.registry`), does one thing and closes it.
Creating tasks (submit, uploads) are idempotent across Prefect retries: the ``Idempotency-Key`` is
derived from the task run's id, which a retry keeps, so a retried submit gets the first job back
instead of starting a second one. They retry only what
`is_retryable` calls retryable (transport errors, 429, 5xx).

Example:
    ```python
    from prefect import flow
    from prefect_comfy import ComfyCloudCredentials
    from prefect_comfy.orchestration.tasks import download_comfy_outputs, submit_comfy_job, wait_for_comfy_job

    @flow
    async def make_images(workflow: dict):
        credentials = await ComfyCloudCredentials.load("BLOCK_NAME")
        job = await submit_comfy_job(credentials, workflow, tags=["demo"])
        job = await wait_for_comfy_job(credentials, job.id, timeout=600)
        return await download_comfy_outputs(credentials, job, "out")
    ```

    The tasks are async: in a sync flow run them with ``.submit(...).result()``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.context import FlowRunContext, TaskRunContext
from prefect.states import State

from prefect_comfy.backends.registry import ComfyCredentials, backend_of
from prefect_comfy.exceptions import is_retryable
from prefect_comfy.models import Input, Job, Model
from prefect_comfy.orchestration.artifacts import artifact_key
from prefect_comfy.orchestration.events import names as events
from prefect_comfy.orchestration.events.emitter import DEFAULT_PROGRESS_INTERVAL
from prefect_comfy.orchestration.job_steps import download_outputs, submit_job
from prefect_comfy.orchestration.runs import run_logger
from prefect_comfy.orchestration.sensor import watch_comfy_job, watch_comfy_upload
from prefect_comfy.orchestration.suspend import (
    remember_submission,
    resumed_job,
    root_flow_run,
    submission_key,
    suspend_unless_ended,
)
from prefect_comfy.orchestration.writes import flush_artifact_writes

__all__ = [
    "cancel_comfy_job",
    "download_comfy_outputs",
    "get_comfy_job",
    "retry_if_retryable",
    "submit_comfy_job",
    "task_run_idempotency_key",
    "upload_comfy_input",
    "upload_comfy_model",
    "wait_for_comfy_input",
    "wait_for_comfy_job",
    "wait_for_comfy_model",
]

RETRIES = 3
"""Prefect retries of a creating task after a retryable error (after the client's own retries)."""
RETRY_DELAYS = [2, 10, 30]
"""Seconds before each Prefect retry."""


def retry_if_retryable(task: Any, task_run: TaskRun, state: State) -> bool:
    """A ``retry_condition_fn``: retry only if `is_retryable` agrees."""
    exc = state.data
    if not isinstance(exc, BaseException):
        exc = state.result(raise_on_failure=False, _sync=True)
    return isinstance(exc, BaseException) and is_retryable(exc)


def task_run_idempotency_key(purpose: str) -> str | None:
    """A key unique to this task run and ``purpose`` and equal across its retries; ``None`` outside one."""
    ctx = TaskRunContext.get()
    if ctx is None:
        return None
    return str(uuid.uuid5(events.NAMESPACE, f"{purpose}|{ctx.task_run.id}"))


def _job_id(job: Job | str) -> str:
    return job.id if isinstance(job, Job) else str(job)


@task(
    name="submit-comfy-job",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_retryable,
    cache_policy=NO_CACHE,
)
async def submit_comfy_job(
    credentials: ComfyCredentials,
    workflow: Mapping[str, Any] | str | os.PathLike[str],
    *,
    inputs: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    idempotency_key: str | None = None,
    emit_events: bool = True,
) -> Job:
    """Submit a workflow; returns the new job (``pending``), with the ``seeds`` it runs with.

    The job is tagged ``prefect.flow-run.<id>`` with the submitting flow run, the flow run gets the
    label ``comfy.job-id``, and ``comfy.job.submitted`` is emitted. In the rerun of a flow run that
    a suspending wait suspended, it returns the job it submitted before instead of submitting again
    (see `prefect_comfy.orchestration.suspend`).

    Args:
        credentials: the credentials block.
        workflow: a graph in API format or in the editor's save format (converted with the
            server's node catalog), JSON text, or the path of a JSON file or of a PNG ComfyUI
            saved.
        inputs: values to set by name, ``{"Positive Prompt.text": "a fox", "KSampler.seed": 7,
            "3.steps": 20}``: a node by id, title or unique class type, checked against the
            catalog before anything is sent (see `prefect_comfy.workflows.inputs`).
        tags: tags for the Comfy job.
        idempotency_key: overrides the key derived from the task run.
        emit_events: whether to emit ``comfy.job.submitted``.

    Raises:
        InvalidWorkflow: the workflow is not a workflow, does not convert, or an input does not
            fit (checked before any request), or the server refused it.
        CatalogUnavailable: a save-format workflow needs a catalog and none can be had.
    """
    resume_key = await submission_key()
    resumed = await resumed_job(credentials, resume_key)  # the rerun of a resumed run: same job
    if resumed is not None:
        return resumed
    key = idempotency_key or task_run_idempotency_key("submit")
    root = await root_flow_run()
    flow_ctx = FlowRunContext.get()
    if root is not None and flow_ctx is not None and flow_ctx.flow_run.id != root.id:
        # a subflow's job names the deployment's root run first: its events then resume that run
        tags = [events.FLOW_RUN_TAG_PREFIX + str(root.id), *tags]
    async with backend_of(credentials) as backend:
        job = await submit_job(
            backend,
            workflow,
            inputs=inputs,
            tags=tags,
            idempotency_key=key,
            emit_events=emit_events,
        )
    remember_submission(job.id, resume_key)
    return job


@task(name="get-comfy-job", cache_policy=NO_CACHE)
async def get_comfy_job(credentials: ComfyCredentials, job_id: str) -> Job:
    """Read a job's current state (never cached)."""
    async with backend_of(credentials) as backend:
        return await backend.get_job(job_id)


@task(name="cancel-comfy-job", cache_policy=NO_CACHE)
async def cancel_comfy_job(credentials: ComfyCredentials, job: Job | str) -> Job:
    """Ask Comfy to cancel a job; returns it as it is then.

    A pending job ends at once, a running one at its next checkpoint; a job that already ended is
    returned unchanged (not an error).
    """
    job_id = _job_id(job)
    async with backend_of(credentials) as backend:
        result = await backend.cancel(job_id)
    run_logger().info("Asked Comfy to cancel job %s (now %s)", job_id, result.status)
    return result


@task(name="download-comfy-outputs", cache_policy=NO_CACHE)
async def download_comfy_outputs(
    credentials: ComfyCredentials,
    job: Job | str,
    dest_dir: str | os.PathLike[str],
    *,
    outputs_artifact: bool = False,
    include_temporary: bool = False,
) -> list[Path]:
    """Download the saved outputs of a completed job into ``dest_dir``; returns the files' paths.

    Args:
        credentials: the credentials block.
        job: the job (as the wait returned it) or its id.
        dest_dir: the folder (created if missing).
        outputs_artifact: also publish a markdown artifact listing the outputs with previews
            (the wait already publishes one by default).
        include_temporary: also download previews the server did not save (ComfyUI
            ``PreviewImage``, ``Output.temporary``); left out by default.
    """
    from prefect_comfy.orchestration.artifacts import create_outputs_artifact

    async with backend_of(credentials) as backend:
        if not isinstance(job, Job) or not job.outputs:
            job = await backend.get_job(_job_id(job))
        files = await download_outputs(backend, job, dest_dir, include_temporary=include_temporary)
        if outputs_artifact:
            paths = {f.id: f.path for f in files if f.path is not None}
            await create_outputs_artifact(job, backend=backend, paths=paths)
    run_logger().info("Downloaded %d output(s) of Comfy job %s", len(files), job.id)
    return [f.path for f in files if f.path is not None]


@task(
    name="upload-comfy-input",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_retryable,
    cache_policy=NO_CACHE,
)
async def upload_comfy_input(
    credentials: ComfyCredentials,
    path: str | os.PathLike[str],
    name: str | None = None,
    tags: Sequence[str] = (),
) -> Input:
    """Upload a file for workflows to use by ``name``; returns it, perhaps not ready yet.

    Pair it with `wait_for_comfy_input`. A Prefect retry returns the same input.
    """
    key = task_run_idempotency_key("input")
    async with backend_of(credentials) as backend:
        uploaded = await backend.upload_input(path, name=name, tags=tags, idempotency_key=key)
    run_logger().info("Uploaded Comfy input %s (%s)", uploaded.name, uploaded.status)
    return uploaded


@task(
    name="upload-comfy-model",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_retryable,
    cache_policy=NO_CACHE,
)
async def upload_comfy_model(
    credentials: ComfyCredentials,
    path: str | os.PathLike[str],
    type: str,
    name: str | None = None,
    tags: Sequence[str] = (),
) -> Model:
    """Upload a model file of a ``type`` (checkpoint, lora ...); returns it, perhaps not ready yet.

    Pair it with `wait_for_comfy_model`. A Prefect retry returns the same model.
    """
    key = task_run_idempotency_key("model")
    async with backend_of(credentials) as backend:
        uploaded = await backend.upload_model(
            path, type=type, name=name, tags=tags, idempotency_key=key
        )
    run_logger().info("Uploaded Comfy model %s (%s)", uploaded.name, uploaded.status)
    return uploaded


@task(
    name="wait_for_comfy_job",
    task_run_name="wait-for-comfy-job-{job_id}",
    cache_policy=NO_CACHE,
    retries=0,
)
async def wait_for_comfy_job(
    credentials: Any,
    job_id: str,
    *,
    timeout: float | None = None,
    cancel_on_timeout: bool = True,
    emit_events: bool = True,
    progress_artifact: bool = True,
    outputs_artifact: bool = True,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
    suspend: bool = False,
) -> Job:
    """Wait for a Comfy job, event-driven, with Prefect events, a progress artifact and outputs.

    See `watch_comfy_job` for the arguments, the return value and the errors. With
    ``suspend=True`` (flow runs of deployments only) a job that still runs suspends the root flow
    run instead, for at most ``timeout`` seconds, and the flow's process exits; the resume
    automation (`create_resume_automation`) resumes it when the job
    ends, and this wait then returns what the ordinary wait returns (see
    `prefect_comfy.orchestration.suspend`).

    Example:
        ```python
        from prefect import flow
        from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
        from prefect_comfy.orchestration.tasks import wait_for_comfy_job

        @flow
        async def render(job_id: str):
            creds = await ComfyCloudCredentials.load("BLOCK_NAME")
            job = await wait_for_comfy_job(creds, job_id, timeout=600)
            return [o.name for o in job.outputs]
        ```
    """
    if suspend:
        await suspend_unless_ended(
            credentials, str(job_id), timeout=timeout, cancel_on_timeout=cancel_on_timeout
        )
    try:
        return await watch_comfy_job(
            credentials,
            job_id,
            timeout=timeout,
            cancel_on_timeout=cancel_on_timeout,
            emit_events=emit_events,
            progress_artifact=progress_artifact,
            outputs_artifact=outputs_artifact,
            progress_interval=progress_interval,
        )
    finally:
        # The wait returned before its last artifact writes; the task ends when they are done
        # (bounded), so none is lost when its event loop or the run ends.
        await flush_artifact_writes(
            [artifact_key("job", str(job_id)), artifact_key("job", str(job_id), "outputs")]
        )


@task(
    name="wait_for_comfy_input",
    task_run_name="wait-for-comfy-input-{input_id}",
    cache_policy=NO_CACHE,
    retries=0,
)
async def wait_for_comfy_input(
    credentials: Any, input_id: str, *, timeout: float | None = None, emit_events: bool = True
) -> Input:
    """Wait until an uploaded input is ready; emits ``comfy.input.ready`` or ``comfy.input.failed``.

    Args:
        credentials: a block with ``get_backend()`` or a backend.
        input_id: the input.
        timeout: seconds to wait; ``None`` waits for ever.
        emit_events: emit the outcome as a Prefect event.

    Returns:
        The ready input.

    Raises:
        UploadFailed: the upload ended ``failed``.
        WaitTimedOut: ``timeout`` passed first.
    """
    return await watch_comfy_upload(credentials, "input", input_id, timeout, emit_events)  # type: ignore[return-value]


@task(
    name="wait_for_comfy_model",
    task_run_name="wait-for-comfy-model-{model_id}",
    cache_policy=NO_CACHE,
    retries=0,
)
async def wait_for_comfy_model(
    credentials: Any, model_id: str, *, timeout: float | None = None, emit_events: bool = True
) -> Model:
    """Wait until an uploaded model is ready; emits ``comfy.model.ready`` or ``comfy.model.failed``.

    Args:
        credentials: a block with ``get_backend()`` or a backend.
        model_id: the model.
        timeout: seconds to wait; ``None`` waits for ever.
        emit_events: emit the outcome as a Prefect event.

    Returns:
        The ready model.

    Raises:
        UploadFailed: the upload ended ``failed``.
        WaitTimedOut: ``timeout`` passed first.
    """
    return await watch_comfy_upload(credentials, "model", model_id, timeout, emit_events)  # type: ignore[return-value]
