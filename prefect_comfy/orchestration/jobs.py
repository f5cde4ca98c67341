"""The job block: `ComfyWorkflow` and its `ComfyJobRun`.

`ComfyWorkflow` is Prefect's `JobBlock` for Comfy:
``trigger()`` submits and returns a `ComfyJobRun`, whose ``wait_for_completion()`` waits on
the event stream and ``fetch_result()`` returns a `ComfyJobResult` (or raises
`JobFailed`, `JobCancelled`,
`JobTimedOut`). `run_comfy_workflow`
is these three calls.

Inside a flow or task run each step is the matching task of `prefect_comfy.orchestration.tasks`
(``submit_comfy_job``, the sensor ``wait_for_comfy_job``, ``get_comfy_job``,
``download_comfy_outputs``), so it shows as a task run, with Prefect retries of the submit and the
sensor's events and artifacts; outside a run, the same task bodies run as plain coroutines
(events, no artifacts).

Each method is async under the name ``a…`` (``atrigger``, ``await_for_completion``,
``afetch_result``, ``acancel``); the plain name works in both worlds the way Prefect's own
``Block.load`` does: it runs to the end in sync code and returns the coroutine in async code. Pass
``_sync=True`` to force the blocking form, which also works inside a running event loop (the
coroutine runs on Prefect's own loop thread).
"""

from __future__ import annotations

import os
from typing import Any

from prefect.blocks.abstract import JobBlock, JobRun
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import Field

from prefect_comfy.backends.registry import ComfyCredentials
from prefect_comfy.exceptions import JobCancelled, JobFailed, JobLost, OutcomeError
from prefect_comfy.models import Job
from prefect_comfy.orchestration.job_steps import cancel_job, cancel_jobs_quietly, raise_for_outcome
from prefect_comfy.orchestration.results import (
    ComfyJobResult,
    ComfyOutputFile,
    job_result,
    to_download,
)
from prefect_comfy.orchestration.runs import COMFY_JOB_ID_LABEL, run_logger
from prefect_comfy.orchestration.tasks import (
    download_comfy_outputs,
    get_comfy_job,
    submit_comfy_job,
    wait_for_comfy_job,
)
from prefect_comfy.orchestration.twins import (
    STOPPED_MESSAGE,
    astep,
    dispatch,
    in_a_run,
    in_a_sync_flow,
    late_job,
    result_of,
    step,
)
from prefect_comfy.settings import DOCS_URL

__all__ = [
    "COMFY_JOB_ID_LABEL",
    "ComfyCredentials",
    "ComfyJobResult",
    "ComfyJobRun",
    "ComfyOutputFile",
    "ComfyWorkflow",
]


class ComfyJobRun(JobRun[ComfyJobResult]):
    """One submitted Comfy job, as returned by `ComfyWorkflow.trigger`.

    Attributes:
        job: the job as last seen (terminal after a successful wait).
        block: the `ComfyWorkflow` that started it.
        seeds: the seeds the job was submitted with, ``{"<node id>.<input>": value}``.
    """

    def __init__(self, block: ComfyWorkflow, job: Job) -> None:
        self.block = block
        self.job = job
        self.seeds: dict[str, int] = dict(getattr(job, "seeds", None) or {})
        self._outcome: OutcomeError | None = None
        self._waited = False

    @property
    def job_id(self) -> str:
        """The Comfy job's id."""
        return self.job.id

    def __repr__(self) -> str:
        return f"ComfyJobRun(job_id={self.job.id!r}, status={self.job.status!r})"

    def _wait_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        b = self.block
        artifacts = in_a_run()  # Prefect deprecates artifacts outside a run: there, events only
        return (b.credentials, self.job.id), dict(
            timeout=b.timeout,
            cancel_on_timeout=b.cancel_on_timeout,
            emit_events=b.emit_events,
            progress_artifact=b.progress_artifact and artifacts,
            outputs_artifact=b.outputs_artifact and artifacts,
            suspend=b.suspend,
        )

    def _ended_with(self, exc: BaseException) -> None:
        """Note a wait's outcome error: failed and cancelled are for `fetch_result` to raise."""
        if isinstance(exc, (JobFailed, JobCancelled, JobLost)):
            self._outcome = exc
            self.job = self.job.model_copy(update={"status": exc.status})
            return
        if isinstance(exc, OutcomeError):  # JobTimedOut: raised now, and again by fetch_result
            self._outcome = exc
        raise exc

    def _ended(self) -> None:
        self._waited = True
        self.logger.info("Comfy job %s ended %s", self.job.id, self.job.status)

    async def await_for_completion(self) -> None:
        """Wait until the job ends, for at most the block's ``timeout`` (``None``: for ever).

        A failed or cancelled job is not raised here but by `fetch_result`.

        Raises:
            JobTimedOut: the wait ended first (the job was cancelled if ``cancel_on_timeout``).
        """
        args, kwargs = self._wait_args()
        try:
            self.job = await astep(wait_for_comfy_job, *args, **kwargs)
        except OutcomeError as exc:
            self._ended_with(exc)
        self._ended()

    @dispatch(await_for_completion)
    def wait_for_completion(self) -> None:  # type: ignore[override]
        """Blocking `await_for_completion` (returns its coroutine in async code)."""
        args, kwargs = self._wait_args()
        try:
            self.job = step(wait_for_comfy_job, *args, **kwargs)
        except OutcomeError as exc:
            self._ended_with(exc)
        self._ended()

    async def afetch_result(self) -> ComfyJobResult:
        """The job's result, waiting first if needed; outputs are downloaded to ``output_dir`` if set.

        Raises:
            JobFailed: the job failed (``error_code``, ``error_message``, ``node_id``).
            JobCancelled: the job was cancelled.
            JobTimedOut: the wait ended first.
        """
        if not self._waited and self._outcome is None:
            await self.await_for_completion()
        self._raise_outcome()
        if not self.job.outputs:
            self.job = await astep(get_comfy_job, self.block.credentials, self.job.id)
        if self.block.output_dir is None:
            return job_result(self.job, seeds=self.seeds)
        paths = await astep(
            download_comfy_outputs, self.block.credentials, self.job, self.block.output_dir
        )
        return self._result(paths)

    @dispatch(afetch_result)
    def fetch_result(self) -> ComfyJobResult:  # type: ignore[override]
        """Blocking `afetch_result` (returns its coroutine in async code)."""
        if not self._waited and self._outcome is None:
            self.wait_for_completion(_sync=True)
        self._raise_outcome()
        if not self.job.outputs:
            self.job = step(get_comfy_job, self.block.credentials, self.job.id)
        if self.block.output_dir is None:
            return job_result(self.job, seeds=self.seeds)
        paths = step(
            download_comfy_outputs, self.block.credentials, self.job, self.block.output_dir
        )
        return self._result(paths)

    def _raise_outcome(self) -> None:
        if self._outcome is not None:
            raise self._outcome
        raise_for_outcome(self.job)

    def _result(self, paths: list[Any]) -> ComfyJobResult:
        # download_comfy_outputs returns the files of the saved outputs (previews are listed with no
        # path: the download leaves them out), in order
        by_id = {o.id: p for o, p in zip(to_download(self.job.outputs), paths, strict=False)}
        return job_result(self.job, by_id, seeds=self.seeds)

    async def acancel(self) -> Job:
        """Ask Comfy to cancel the job; returns it as it is then (safe to repeat)."""
        self.job = await cancel_job(self.block.credentials, self.job.id)
        return self.job

    @dispatch(acancel)
    def cancel(self) -> Job:
        """Blocking `acancel` (returns its coroutine in async code)."""
        return run_coro_as_sync(self.acancel())


class ComfyWorkflow(JobBlock):  # unparametrized: JobBlock[...] would be a 4th block type
    """A Comfy workflow to run as a job: ``trigger()``, then ``wait_for_completion()`` and ``fetch_result()``.

    Example:
        Run a saved workflow block and get its files:
        ```python
        from prefect_comfy import ComfyWorkflow

        comfy_workflow = ComfyWorkflow.load("BLOCK_NAME")
        run = comfy_workflow.trigger()
        run.wait_for_completion()
        result = run.fetch_result()
        print(result.paths)
        ```
    """

    _block_type_name = "Comfy Workflow"
    _block_type_slug = "comfy-workflow"
    _logo_url = "https://github.com/Comfy-Org.png?size=200"
    _documentation_url = f"{DOCS_URL}blocks/#comfyworkflow"
    _description = "A ComfyUI workflow (API or save format) to run on Comfy as a job."

    credentials: ComfyCredentials = Field(
        description="Where and as whom to run the workflow.",
    )
    workflow: dict[str, Any] | str = Field(
        description="The workflow: a graph in ComfyUI API format or in the editor's save format, or "
        "the path of a JSON file or of a PNG ComfyUI saved. Save format is converted with the "
        "server's node catalog.",
    )
    inputs: dict[str, Any] = Field(
        default_factory=dict,
        description='Values to set by name: {"Positive Prompt.text": "a fox", "KSampler.seed": 7, '
        '"3.steps": 20} (a node by id, title or unique class type), checked before submitting.',
    )
    tags: list[str] = Field(
        default_factory=list, description="Tags given to each Comfy job this block starts."
    )
    timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds to wait for the job to end; unset waits for ever.",
    )
    cancel_on_timeout: bool = Field(
        default=True, description="Whether a wait that times out cancels the Comfy job."
    )
    emit_events: bool = Field(
        default=True, description="Whether to emit comfy.job.* Prefect events while waiting."
    )
    progress_artifact: bool = Field(
        default=True,
        description="Whether to keep a Prefect progress artifact up to date (inside a flow or task run).",
    )
    outputs_artifact: bool = Field(
        default=True,
        description="Whether a completed job publishes a Prefect artifact listing its outputs (inside "
        "a flow or task run).",
    )
    suspend: bool = Field(
        default=False,
        description="Whether a job that still runs suspends the deployment's flow run (no process "
        "waits) until its outcome event resumes it; needs the resume automation and the listener.",
    )
    output_dir: str | None = Field(
        default=None,
        description="Folder that fetch_result downloads the outputs into; unset downloads nothing.",
    )

    def _submit_args(self, idempotency_key: str | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        workflow = (
            os.fspath(self.workflow) if isinstance(self.workflow, os.PathLike) else self.workflow
        )
        return (self.credentials, workflow), dict(
            inputs=dict(self.inputs),
            tags=list(self.tags),
            idempotency_key=idempotency_key,
            emit_events=self.emit_events,
        )

    async def atrigger(self, *, idempotency_key: str | None = None) -> ComfyJobRun:
        """Check and submit the workflow; returns the `ComfyJobRun` that follows it.

        Args:
            idempotency_key: the same key returns the same job instead of starting another; inside
                a task run of ``submit_comfy_job`` it defaults to one derived from the task run.

        Raises:
            InvalidWorkflow: the workflow is not a graph in API format (before any request), or
                the server refused it.
        """
        args, kwargs = self._submit_args(idempotency_key)
        return ComfyJobRun(self, await astep(submit_comfy_job, *args, **kwargs))

    @dispatch(atrigger)
    def trigger(self, *, idempotency_key: str | None = None) -> ComfyJobRun:  # type: ignore[override]
        """Blocking `atrigger` (returns its coroutine in async code).

        Stopped while the submit is answered (a Prefect timeout or cancellation of a sync flow),
        it cancels the job it may have started before it re-raises: it waits up to
        `LATE_RESULT_WAIT` for the job's id, else cancels the
        flow run's unfinished jobs.
        """
        args, kwargs = self._submit_args(idempotency_key)
        if not in_a_sync_flow():
            return run_coro_as_sync(self.atrigger(idempotency_key=idempotency_key))
        submitted = submit_comfy_job.submit(*args, **kwargs)
        try:
            return ComfyJobRun(self, result_of(submitted))
        except BaseException:
            wrapped = getattr(submitted, "wrapped_future", None)
            if wrapped is not None and not wrapped.done():  # stopped while in flight
                self._cancel_late(submitted)
            raise

    def _cancel_late(self, submitted: PrefectFuture[Any]) -> None:
        """After the flow stopped while its submit was in flight: cancel what it started, if any."""
        flow_run_id = str(FlowRunContext.get().flow_run.id)  # type: ignore[union-attr]
        run_logger().warning(STOPPED_MESSAGE)
        late = late_job(submitted)
        if late is None:  # the submit failed: no job was created
            return
        job_id = late.id if isinstance(late, Job) else None
        run_coro_as_sync(cancel_jobs_quietly(self.credentials, job_id, flow_run_id=flow_run_id))
