"""The steps that tasks, the flow and the job block share: load, submit, label, wait, cancel, download.

Also the types they share: :data:`ComfyCredentials` (either block) and the result models
:class:`ComfyJobResult` / :class:`ComfyOutputFile`. :mod:`prefect_comfy.jobs` builds the job block on
these and re-exports them.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from pydantic import BaseModel, Field

from prefect_comfy import events
from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
from prefect_comfy.backends.comfyui.block import ComfyUIServer
from prefect_comfy.emitter import emit_submitted, run_context_ids
from prefect_comfy.exceptions import (
    InvalidWorkflow,
    JobCancelled,
    JobFailed,
)
from prefect_comfy.models import Job, Output
from prefect_comfy.redaction import redact_url

logger = logging.getLogger(__name__)

COMFY_JOB_ID_LABEL = "comfy.job-id"
"""The flow-run label that names the Comfy job a flow run submitted (what cancellation reads)."""

ComfyCredentials = ComfyCloudCredentials | ComfyUIServer
"""What the Prefect layer takes as credentials: any block with ``get_backend()``.

:class:`ComfyCloudCredentials` for the developer API, :class:`ComfyUIServer` for a self-hosted
ComfyUI (or Comfy Cloud's ComfyUI-compatible API). Choosing the block chooses the backend.
"""


# -- the result --------------------------------------------------------------------------------
class ComfyOutputFile(BaseModel):
    """One file a job produced, and where it was saved."""

    id: str = Field(description="The output's id.")
    name: str | None = Field(default=None, description="The file name, if the server gave one.")
    type: str = Field(default="file", description="The kind of output (image, video, file ...).")
    temporary: bool = Field(
        default=False,
        description="A preview the server did not save (ComfyUI PreviewImage, type temp); not "
        "downloaded unless asked for.",
    )
    mime_type: str | None = Field(default=None, description="The media type, if known.")
    url: str | None = Field(default=None, description="The download URL, keys redacted.")
    path: Path | None = Field(default=None, description="The local file, once downloaded.")


class ComfyJobResult(BaseModel):
    """What a finished Comfy job gave: its id, final status and output files."""

    job_id: str = Field(description="The Comfy job's id.")
    status: str = Field(description="The job's final status (``completed``).")
    outputs: list[ComfyOutputFile] = Field(default_factory=list, description="The job's files.")
    tags: list[str] = Field(default_factory=list, description="The job's tags.")

    @property
    def paths(self) -> list[Path]:
        """The local paths of the downloaded outputs, in order."""
        return [o.path for o in self.outputs if o.path is not None]

    @property
    def saved(self) -> list[ComfyOutputFile]:
        """The outputs the server saved (previews left out)."""
        return [o for o in self.outputs if not o.temporary]


# -- workflows ---------------------------------------------------------------------------------
def load_workflow(workflow: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """An API-format workflow graph from a dict, a JSON text, or the path of a JSON file.

    Checked locally before any request: the graph must be a non-empty mapping of node ids to nodes,
    each with a ``class_type`` and an ``inputs`` mapping.

    Raises:
        InvalidWorkflow: not a graph in API format (a UI-format export says so), or not JSON.

    Example:
        >>> load_workflow({"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64}}})
        {'1': {'class_type': 'EmptyLatentImage', 'inputs': {'width': 64}}}
    """
    graph: Any = workflow
    if isinstance(workflow, (str, os.PathLike)):
        text = str(workflow) if isinstance(workflow, str) else None
        if text is not None and text.lstrip().startswith("{"):
            source = "the workflow text"
        else:
            path = Path(workflow).expanduser()
            if not path.is_file():
                raise InvalidWorkflow(f"No workflow file at {str(path)!r}")
            source = str(path)
            text = path.read_text(encoding="utf-8")
        try:
            graph = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidWorkflow(f"{source} is not JSON: {exc}") from None
    _check_graph(graph)
    return dict(graph)


def _check_graph(graph: Any) -> None:
    if not isinstance(graph, Mapping) or not graph:
        raise InvalidWorkflow(
            "A workflow must be a non-empty dict of nodes in ComfyUI API format "
            '({"1": {"class_type": ..., "inputs": {...}}, ...})'
        )
    if "nodes" in graph and "links" in graph:
        raise InvalidWorkflow(
            "This is a UI-format workflow; export it in API format (Workflow > Export (API))"
        )
    problems = []
    for node_id, node in graph.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            problems.append({"node_id": str(node_id), "message": "not a node with a class_type"})
        elif not isinstance(node.get("inputs", {}), Mapping):
            problems.append(
                {"node_id": str(node_id), "class_type": node["class_type"], "field": "inputs",
                 "message": "inputs must be a dict"}
            )  # fmt: skip
    if problems:
        raise InvalidWorkflow("The workflow is not a graph in API format", problems)


# -- where we run ------------------------------------------------------------------------------
def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run, this module's logger outside."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logger


# -- the steps ---------------------------------------------------------------------------------
async def submit_job(
    backend: ComfyBackend,
    workflow: Mapping[str, Any] | str | os.PathLike[str],
    *,
    tags: Sequence[str] = (),
    idempotency_key: str | None = None,
    emit_events: bool = True,
) -> Job:
    """Submit a workflow the way the Prefect layer does.

    Inside a flow run the job is tagged ``prefect.flow-run.<id>`` and the flow run gets the label
    ``comfy.job-id``; ``comfy.job.submitted`` is emitted when ``emit_events``.
    """
    graph = load_workflow(workflow)
    flow_run_id, task_run_id = run_context_ids()
    all_tags = list(dict.fromkeys(tags))
    if flow_run_id:
        all_tags.append(events.FLOW_RUN_TAG_PREFIX + flow_run_id)
    job = await backend.submit(graph, tags=all_tags, idempotency_key=idempotency_key)
    run_logger().info("Submitted Comfy job %s (%s)", job.id, job.status)
    if flow_run_id:
        await label_flow_run(flow_run_id, job.id)
    if emit_events:
        emit_submitted(job, backend, flow_run_id=flow_run_id, task_run_id=task_run_id)
    return job


async def label_flow_run(flow_run_id: str, job_id: str) -> None:
    """Set the ``comfy.job-id`` label on a flow run, so that a cancellation hook can find the job."""
    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            await client.update_flow_run_labels(
                uuid.UUID(flow_run_id), {COMFY_JOB_ID_LABEL: job_id}
            )
    except Exception as exc:  # the job runs either way; only remote cancellation loses its handle
        run_logger().warning("Could not label flow run %s with the Comfy job: %r", flow_run_id, exc)


async def load_credentials(name: str) -> ComfyCredentials:
    """Load a saved credentials block by name: either kind, so a name alone chooses the backend.

    ``"<block type slug>/<name>"`` loads that type; a bare name is tried as a
    :class:`ComfyCloudCredentials`, then as a :class:`ComfyUIServer`.

    Raises:
        ValueError: no block of either kind has that name.
    """
    if "/" in name:
        return await Block.aload(name)  # type: ignore[return-value]
    try:
        return await ComfyCloudCredentials.aload(name)
    except ValueError:
        try:
            return await ComfyUIServer.aload(name)
        except ValueError:
            raise ValueError(
                f"No saved ComfyCloudCredentials or ComfyUIServer block is named {name!r}"
            ) from None


async def cancel_job(credentials: ComfyCredentials, job_id: str) -> Job:
    """Ask Comfy to cancel a job; cancelling a job that already ended returns it as it is."""
    async with credentials.get_backend() as backend:
        job = await backend.cancel(job_id)
    run_logger().info("Asked Comfy to cancel job %s (now %s)", job_id, job.status)
    return job


async def unfinished_jobs_of(credentials: ComfyCredentials, flow_run_id: str) -> list[str]:
    """Ids of the unfinished Comfy jobs tagged with a flow run (``prefect.flow-run.<id>``).

    For a job whose id never reached the flow (it was stopped while the submit was answered). Needs
    credentials whose client lists jobs by tag (``ComfyCloudCredentials``); else none are found.
    """
    make_client = getattr(credentials, "get_client", None)
    if make_client is None:
        return []
    async with make_client() as client:
        if not hasattr(client, "list_jobs"):
            return []
        page = await client.list_jobs(tags=[events.FLOW_RUN_TAG_PREFIX + flow_run_id], limit=100)
    return [job.id for job in page.items if not job.is_terminal]


async def cancel_jobs_quietly(
    credentials: ComfyCredentials, job_id: str | None, *, flow_run_id: str | None = None
) -> None:
    """Cancel a job, or when its id is unknown the flow run's unfinished jobs; log, never raise."""
    try:
        if job_id is not None:
            job_ids = [job_id]
        elif flow_run_id is not None:
            job_ids = await unfinished_jobs_of(credentials, flow_run_id)
        else:
            job_ids = []
        for one in job_ids:
            await cancel_job(credentials, one)
    except Exception as exc:
        run_logger().warning("Could not cancel Comfy job %s: %r", job_id or flow_run_id, exc)


async def wait_job(
    credentials: ComfyCredentials,
    job_id: str,
    *,
    timeout: float | None = None,
    cancel_on_timeout: bool = True,
    emit_events: bool = True,
    progress_artifact: bool = True,
    outputs_artifact: bool = True,
) -> Job:
    """Wait for a job with the sensor: as a task inside a Prefect run, as a coroutine outside one
    (where no artifact is written).

    Raises:
        JobFailed, JobCancelled, JobTimedOut: per outcome.
    """
    from prefect.context import FlowRunContext, TaskRunContext

    from prefect_comfy.tasks import wait_for_comfy_job
    from prefect_comfy.watching import watch_comfy_job

    kwargs: dict[str, Any] = dict(
        timeout=timeout,
        cancel_on_timeout=cancel_on_timeout,
        emit_events=emit_events,
        progress_artifact=progress_artifact,
        outputs_artifact=outputs_artifact,
    )
    if FlowRunContext.get() or TaskRunContext.get():
        return await wait_for_comfy_job(credentials, job_id, **kwargs)
    # Prefect deprecates artifacts outside a run: there, events only.
    kwargs.update(progress_artifact=False, outputs_artifact=False)
    return await watch_comfy_job(credentials, job_id, **kwargs)


def raise_for_outcome(job: Job) -> None:
    """Raise :class:`JobFailed` or :class:`JobCancelled` for a job that ended that way."""
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


def output_file(output: Output, path: Path | None = None) -> ComfyOutputFile:
    """The result entry of one output, downloaded to ``path`` (``None``: not downloaded)."""
    return ComfyOutputFile(
        id=output.id,
        name=output.name or (path.name if path else None),
        type=output.type,
        temporary=output.temporary,
        mime_type=output.mime_type,
        url=redact_url(output.download_url) if output.download_url else None,
        path=path,
    )


def to_download(outputs: Sequence[Output], *, include_temporary: bool = False) -> list[Output]:
    """The outputs a download fetches: the saved ones, and previews only if ``include_temporary``."""
    return [o for o in outputs if include_temporary or not o.temporary]


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


async def job_result(
    credentials: ComfyCredentials, job: Job, dest_dir: str | os.PathLike[str] | None
) -> ComfyJobResult:
    """The :class:`ComfyJobResult` of a completed job (raising for a failed or cancelled one)."""
    raise_for_outcome(job)
    async with credentials.get_backend() as backend:
        files = await download_outputs(backend, job, dest_dir)
    user_tags = [t for t in job.tags if not t.startswith(events.FLOW_RUN_TAG_PREFIX)]
    return ComfyJobResult(job_id=job.id, status=job.status, outputs=files, tags=user_tags)


# -- the job block -----------------------------------------------------------------------------
