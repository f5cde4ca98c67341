"""The job block: :class:`ComfyWorkflow` and its :class:`ComfyJobRun`.

It is built on :mod:`prefect_comfy.job_steps` (the steps tasks and flows share, and the result
models), whose names are re-exported here.

:class:`ComfyWorkflow` is Prefect's :class:`~prefect.blocks.abstract.JobBlock` for Comfy:
``trigger()`` submits and returns a :class:`ComfyJobRun`, whose ``wait_for_completion()`` waits on
the event stream and ``fetch_result()`` returns a :class:`ComfyJobResult` (or raises
:class:`~prefect_comfy.exceptions.JobFailed`, :class:`~prefect_comfy.exceptions.JobCancelled`,
:class:`~prefect_comfy.exceptions.JobTimedOut`). Each method is async under the name ``a…``
(``atrigger``, ``await_for_completion``, ``afetch_result``, ``acancel``); the plain name works in both
worlds the way Prefect's own ``Block.load`` does: it runs to the end in sync code and returns the
coroutine in async code. Pass ``_sync=True`` to force the blocking form, which also works inside a
running event loop (the coroutine runs on Prefect's own loop thread).
"""

from __future__ import annotations

from typing import Any

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.blocks.abstract import JobBlock, JobRun
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import Field

from prefect_comfy.exceptions import (
    JobCancelled,
    JobFailed,
    JobLost,
    OutcomeError,
)
from prefect_comfy.job_steps import (  # noqa: F401 - the shared steps, re-exported here
    COMFY_JOB_ID_LABEL,
    ComfyCredentials,
    ComfyJobResult,
    ComfyOutputFile,
    cancel_job,
    cancel_jobs_quietly,
    download_outputs,
    job_result,
    label_flow_run,
    load_credentials,
    load_workflow,
    raise_for_outcome,
    run_logger,
    submit_job,
    unfinished_jobs_of,
    wait_job,
)
from prefect_comfy.models import Job

__all__ = [
    "COMFY_JOB_ID_LABEL",
    "ComfyCredentials",
    "ComfyJobResult",
    "ComfyJobRun",
    "ComfyOutputFile",
    "ComfyWorkflow",
    "load_workflow",
]


class ComfyJobRun(JobRun[ComfyJobResult]):
    """One submitted Comfy job, as returned by :meth:`ComfyWorkflow.trigger`.

    Attributes:
        job: the job as last seen (terminal after a successful wait).
        block: the :class:`ComfyWorkflow` that started it.
    """

    def __init__(self, block: ComfyWorkflow, job: Job) -> None:
        self.block = block
        self.job = job
        self._outcome: OutcomeError | None = None
        self._waited = False

    @property
    def job_id(self) -> str:
        """The Comfy job's id."""
        return self.job.id

    def __repr__(self) -> str:
        return f"ComfyJobRun(job_id={self.job.id!r}, status={self.job.status!r})"

    async def await_for_completion(self) -> None:
        """Wait until the job ends, for at most the block's ``timeout`` (``None``: for ever).

        A failed or cancelled job is not raised here but by :meth:`fetch_result`.

        Raises:
            JobTimedOut: the wait ended first (the job was cancelled if ``cancel_on_timeout``).
        """
        b = self.block
        try:
            self.job = await wait_job(
                b.credentials,
                self.job.id,
                timeout=b.timeout,
                cancel_on_timeout=b.cancel_on_timeout,
                emit_events=b.emit_events,
                progress_artifact=b.progress_artifact,
                outputs_artifact=b.outputs_artifact,
            )
        except (JobFailed, JobCancelled, JobLost) as exc:  # ended: fetch_result raises it
            self._outcome = exc
            self.job = self.job.model_copy(update={"status": exc.status})
        except OutcomeError as exc:  # JobTimedOut: say it again from fetch_result
            self._outcome = exc
            raise
        self._waited = True
        self.logger.info("Comfy job %s ended %s", self.job.id, self.job.status)

    @async_dispatch(await_for_completion)
    def wait_for_completion(self) -> None:  # type: ignore[override]
        """Blocking :meth:`await_for_completion` (returns its coroutine in async code)."""
        return run_coro_as_sync(self.await_for_completion())

    async def afetch_result(self) -> ComfyJobResult:
        """The job's result, waiting first if needed; outputs are downloaded to ``output_dir`` if set.

        Raises:
            JobFailed: the job failed (``error_code``, ``error_message``, ``node_id``).
            JobCancelled: the job was cancelled.
            JobTimedOut: the wait ended first.
        """
        if not self._waited and self._outcome is None:
            await self.await_for_completion()
        if self._outcome is not None:
            raise self._outcome
        return await job_result(self.block.credentials, self.job, self.block.output_dir)

    @async_dispatch(afetch_result)
    def fetch_result(self) -> ComfyJobResult:  # type: ignore[override]
        """Blocking :meth:`afetch_result` (returns its coroutine in async code)."""
        return run_coro_as_sync(self.afetch_result())

    async def acancel(self) -> Job:
        """Ask Comfy to cancel the job; returns it as it is then (safe to repeat)."""
        self.job = await cancel_job(self.block.credentials, self.job.id)
        return self.job

    @async_dispatch(acancel)
    def cancel(self) -> Job:
        """Blocking :meth:`acancel` (returns its coroutine in async code)."""
        return run_coro_as_sync(self.acancel())


class ComfyWorkflow(JobBlock[ComfyJobResult]):
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
    _documentation_url = "https://docs.comfy.org/"
    _description = "A ComfyUI workflow (API format) to run on Comfy as a job."

    credentials: ComfyCredentials = Field(
        description="Where and as whom to run the workflow.",
    )
    workflow: dict[str, Any] | str = Field(
        description="The workflow graph in ComfyUI API format, or the path of a JSON file holding it.",
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
    output_dir: str | None = Field(
        default=None,
        description="Folder that fetch_result downloads the outputs into; unset downloads nothing.",
    )

    async def atrigger(self, *, idempotency_key: str | None = None) -> ComfyJobRun:
        """Submit the workflow; returns the :class:`ComfyJobRun` that follows it.

        Args:
            idempotency_key: the same key returns the same job instead of starting another.

        Raises:
            InvalidWorkflow: the workflow is not a graph in API format, or the server refused it.
        """
        async with self.credentials.get_backend() as backend:
            job = await submit_job(
                backend,
                self.workflow,
                tags=self.tags,
                idempotency_key=idempotency_key,
                emit_events=self.emit_events,
            )
        return ComfyJobRun(self, job)

    @async_dispatch(atrigger)
    def trigger(self, *, idempotency_key: str | None = None) -> ComfyJobRun:  # type: ignore[override]
        """Blocking :meth:`atrigger` (returns its coroutine in async code)."""
        return run_coro_as_sync(self.atrigger(idempotency_key=idempotency_key))
