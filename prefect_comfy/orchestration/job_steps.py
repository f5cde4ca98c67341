"""The steps of running a Comfy job from Prefect: submit, cancel, find, download. Task-free.

The tasks in `prefect_comfy.orchestration.tasks` and the job block in `prefect_comfy.orchestration.jobs` are built
on these; each step takes a backend or a credentials block of any registered kind
(`prefect_comfy.backends.registry`) and sees the server only through
`ComfyBackend`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.backends.registry import backend_of
from prefect_comfy.exceptions import InvalidWorkflow, JobCancelled, JobFailed, NotFound
from prefect_comfy.models import Job, Output
from prefect_comfy.orchestration.events import names as events
from prefect_comfy.orchestration.events.emitter import emit_submitted, run_context_ids
from prefect_comfy.orchestration.prepare import PreparedWorkflow, prepare_workflow
from prefect_comfy.orchestration.results import (
    ComfyOutputFile,
    output_file,
    remember_seeds,
    to_download,
)
from prefect_comfy.orchestration.runs import (
    claim_cancel,
    label_flow_run,
    release_cancel,
    run_logger,
)
from prefect_comfy.waiting.waits import submit_connected

__all__ = [
    "SubmittedJob",
    "cancel_job",
    "cancel_jobs_quietly",
    "download_outputs",
    "raise_for_outcome",
    "submit_job",
    "unfinished_jobs_of",
]


class SubmittedJob(Job):
    """A job as this client submitted it: the server's answer plus the seeds it was given."""

    seeds: dict[str, int] = Field(
        default_factory=dict,
        description='The seeds the job runs with, {"<node id>.<input>": value}: pass them back '
        "as inputs to make the same picture again.",
    )


async def submit_job(
    backend: ComfyBackend,
    workflow: Mapping[str, Any] | str | os.PathLike[str],
    *,
    inputs: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    idempotency_key: str | None = None,
    emit_events: bool = True,
) -> SubmittedJob:
    """Prepare and submit a workflow the way the Prefect layer does.

    The workflow is read, converted from save format and given its inputs first
    (`prepare_workflow`: nothing is sent if that fails). Inside a
    flow run the job is tagged ``prefect.flow-run.<id>`` and the flow run gets the label
    ``comfy.job-id``; ``comfy.job.submitted`` is emitted when ``emit_events``, its payload
    carrying the seeds used.

    A server that refuses a graph prepared with a cached catalog gets one more try: the catalog is
    read again and the workflow prepared again (a node the server no longer has is then named).

    Raises:
        InvalidWorkflow: the workflow is in neither format, does not convert, its inputs do not fit
            (all before any request), or the server refused it.
        CatalogUnavailable: a catalog is needed and cannot be had (before any request).
    """
    prepared = await prepare_workflow(backend, workflow, inputs, seed_key=idempotency_key)
    flow_run_id, task_run_id = run_context_ids()
    all_tags = list(dict.fromkeys(tags))
    if flow_run_id:
        all_tags.append(events.FLOW_RUN_TAG_PREFIX + flow_run_id)
    try:
        # Connected first, so that a warm server's news of cached nodes reaches the wait.
        job, _ = await submit_connected(
            backend, prepared.graph, tags=all_tags, idempotency_key=idempotency_key
        )
    except InvalidWorkflow:
        again = await _prepared_again(backend, prepared, workflow, inputs)
        if again is None:
            raise
        prepared = again
        job = await backend.submit(prepared.graph, tags=all_tags, idempotency_key=idempotency_key)
    submitted = SubmittedJob(**dict(job), seeds=prepared.seeds)
    remember_seeds(job.id, prepared.seeds)
    run_logger().info(
        "Submitted Comfy job %s (%s)%s",
        job.id,
        job.status,
        f" with seeds {prepared.seeds}" if prepared.seeds else "",
    )
    if flow_run_id:
        await label_flow_run(flow_run_id, job.id)
    if emit_events:
        emit_submitted(submitted, backend, flow_run_id=flow_run_id, task_run_id=task_run_id)
    return submitted


async def _prepared_again(
    backend: ComfyBackend,
    prepared: PreparedWorkflow,
    workflow: Any,
    inputs: Mapping[str, Any] | None,
) -> PreparedWorkflow | None:
    """After a refusal: the workflow prepared with a fresh catalog, if the cached one was used and
    the graph comes out different; ``None`` to raise the server's refusal as it is."""
    if not prepared.catalog_cached:
        return None
    run_logger().info("The server refused the graph: reading its node catalog again")
    again = await prepare_workflow(
        backend, workflow, inputs, seed_key=prepared.seed_key, refresh=True
    )
    return again if again.graph != prepared.graph else None


async def cancel_job(credentials: Any, job_id: str) -> Job:
    """Ask Comfy to cancel a job; cancelling a job that already ended returns it as it is."""
    async with backend_of(credentials) as backend:
        job = await backend.cancel(job_id)
    run_logger().info("Asked Comfy to cancel job %s (now %s)", job_id, job.status)
    return job


async def unfinished_jobs_of(credentials: Any, flow_run_id: str) -> list[str]:
    """Ids of the unfinished Comfy jobs tagged with a flow run (``prefect.flow-run.<id>``).

    For a job whose id never reached the flow (it was stopped while the submit was answered).
    Needs a kind of server that finds jobs by tag (``capabilities.find_jobs_by_tag``); with
    another, none are found.
    """
    async with backend_of(credentials) as backend:
        if not backend.capabilities.find_jobs_by_tag:
            return []
        jobs = await backend.unfinished_jobs(events.FLOW_RUN_TAG_PREFIX + flow_run_id) or []
    return [job.id for job in jobs]


async def cancel_jobs_quietly(credentials: Any, job_id: str | None, *, flow_run_id: str) -> None:
    """Cancel a job, or when its id is unknown the flow run's unfinished jobs; log, never raise.

    A job the server no longer has (its cancellation already went through elsewhere) is logged at
    INFO, not as a failure.
    """
    log = run_logger()
    if job_id is None:
        try:
            job_ids = await unfinished_jobs_of(credentials, flow_run_id)
        except Exception as exc:
            log.warning(
                "Could not look for unfinished Comfy jobs of flow run %s to cancel: %r",
                flow_run_id,
                exc,
            )
            return
        if not job_ids:
            log.info("Flow run %s has no unfinished Comfy job to cancel", flow_run_id)
    else:
        job_ids = [job_id]
    for one in job_ids:
        if not claim_cancel(one, flow_run_id):  # another cleanup of this flow run sends it
            log.info("Comfy job %s: its cancel was asked for already", one)
            continue
        try:
            await cancel_job(credentials, one)
        except NotFound:
            log.info("Comfy job %s no longer exists on the server: nothing to cancel", one)
        except Exception as exc:
            release_cancel(one, flow_run_id)  # not sent: a later cleanup may try again
            log.warning("Could not cancel Comfy job %s: %r", one, exc)


def raise_for_outcome(job: Job) -> None:
    """Raise `JobFailed` or `JobCancelled` for a job that ended that way."""
    if job.status == "failed":
        err = job.error
        raise JobFailed(
            job.id,
            error_code=err.code if err else None,
            error_message=err.message if err else None,
            node_id=err.node_id if err else None,
        )
    if job.status == "cancelled":
        raise JobCancelled(job.id)


async def download_outputs(
    backend: ComfyBackend,
    job: Job,
    dest_dir: str | os.PathLike[str] | None,
    *,
    include_temporary: bool = False,
) -> list[ComfyOutputFile]:
    """Describe a completed job's outputs, downloading each into ``dest_dir`` unless it is ``None``.

    Previews the server did not save (``temporary``) are listed but not downloaded (their ``path``
    stays ``None``) unless ``include_temporary``.
    """
    outputs: list[Output] = list(job.outputs) or await backend.outputs(job.id)
    wanted = {o.id for o in to_download(outputs, include_temporary=include_temporary)}
    files = []
    if dest_dir is not None:
        Path(dest_dir).mkdir(parents=True, exist_ok=True)
    for output in outputs:
        path = None
        if dest_dir is not None and output.id in wanted:
            path = await backend.download(output, dest_dir)
        files.append(output_file(output, path))
    return files
