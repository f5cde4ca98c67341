"""Watching a Comfy job (or upload) from Prefect, task-free: the sensor's logic.

`watch_comfy_job` waits with `wait_for` (the shared event stream, one
REST read after every connect; no polling loop), and meanwhile:

- emits ``comfy.job.progress`` Prefect events, coalesced (`prefect_comfy.orchestration.events.emitter`), and the
  outcome (``comfy.job.completed``/``failed``/``cancelled``/``timed-out``), never throttled;
- keeps a progress artifact up to date (at most one write per interval, 100 on completion) and, on
  completion, writes an artifact listing the outputs with small previews (`prefect_comfy.orchestration.artifacts`);
- logs on state changes only, each line naming the job.

Then it returns the completed `Job` (read again, with its full outputs)
or raises `JobFailed`, `JobCancelled` or `JobTimedOut`; on a time-out (or when
the wait itself is cancelled) it cancels the Comfy job unless ``cancel_on_timeout=False``.

The tasks in `prefect_comfy.orchestration.tasks` (``wait_for_comfy_job`` and friends) are thin wrappers of
these coroutines; call `watch_comfy_job` directly inside your own task.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.backends.registry import open_backend
from prefect_comfy.exceptions import (
    JobCancelled,
    JobFailed,
    JobLost,
    JobTimedOut,
    UploadFailed,
)
from prefect_comfy.models import (
    ComfyEvent,
    Input,
    Job,
    Model,
    ResourceError,
    preview_image,
    with_previews,
)
from prefect_comfy.orchestration.artifacts import (
    JobPreviewArtifact,
    JobProgressArtifact,
    artifact_key,
    create_outputs_artifact,
)
from prefect_comfy.orchestration.events.emitter import DEFAULT_PROGRESS_INTERVAL, ComfyEventEmitter
from prefect_comfy.orchestration.events.names import job_position, job_progress_labels
from prefect_comfy.orchestration.runs import claim_cancel, release_cancel, run_logger
from prefect_comfy.orchestration.writes import artifact_writes
from prefect_comfy.transport.deadlines import bounded, wait_event, within
from prefect_comfy.waiting.waits import wait_for, wait_for_input, wait_for_model

__all__ = [
    "CANCEL_TIMEOUT",
    "COMPLETED_LOG",
    "MILESTONE_LOG",
    "watch_comfy_job",
    "watch_comfy_upload",
]

MILESTONE_LOG = "Comfy job %s: %d%%%s"
"""The format of the run's milestone lines (``Comfy job job_abc: 40% · KSampler step 15/40``): the
CLI, whose bar says the same, leaves them out of the terminal."""

COMPLETED_LOG = "Comfy job %s completed with %d output(s)"
"""The format of the run's line that says the job completed: the CLI fills the job's bar as it
prints it (the bar follows its own wait, which may still be a step behind)."""

CANCEL_TIMEOUT = 10.0
"""Seconds allowed for cancelling the Comfy job after a time-out or an interrupted wait."""

STOP_TIMEOUT = 10.0
"""Seconds allowed for each step of stopping a watch: ending its pump, writing the final artifact."""

CLOSE_TIMEOUT = 10.0
"""Seconds allowed for closing a backend the sensor made."""

INTERRUPT_CLEANUP_TIMEOUT = 2 * STOP_TIMEOUT + CANCEL_TIMEOUT + CLOSE_TIMEOUT
"""Most seconds an interrupted wait spends cleaning up (`_after_interrupt`) before it re-raises."""


def _error_of(event: ComfyEvent, resource: Job | Input | None) -> ResourceError:
    if resource is not None and resource.error is not None:
        return resource.error
    raw = event.payload.get("error")
    if isinstance(raw, dict):
        return ResourceError(**raw)
    if isinstance(raw, str):
        return ResourceError(message=raw)
    return ResourceError()


class _JobWatch:
    """What one wait reports while it waits: progress events, the progress artifact, status logs."""

    def __init__(
        self,
        job_id: str,
        emitter: ComfyEventEmitter | None,
        artifact: JobProgressArtifact | None,
        log: Any,
        preview: JobPreviewArtifact | None = None,
    ) -> None:
        self.job_id = job_id
        self.emitter = emitter
        self.artifact = artifact
        self.preview = preview
        self.log = log
        self.status: str | None = None
        self.milestone: int | None = None
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        if self.emitter is not None or self.artifact is not None or self.preview is not None:
            self._pump = asyncio.create_task(self._run(), name=f"comfy-report-{self.job_id}")

    def on_progress(self, event: ComfyEvent) -> None:
        """The wait's progress callback: cheap and synchronous; writes happen in the pump.

        A ``job.preview`` goes to the preview artifact only: an image is never a Prefect event.
        """
        found = preview_image(event)
        if found is not None:
            if self.preview is not None:
                self.preview.offer(*found, where=self.artifact.where if self.artifact else None)
                self._wake.set()
            return
        status = str(event.payload.get("status") or "running")
        self.note_status(status)
        if self.emitter is not None:
            self.emitter.progress(event)
        progress = event.payload.get("progress")
        if isinstance(progress, (int, float)):
            where = job_position(job_progress_labels(event.payload))
            self.note_milestone(float(progress), where)
            if self.artifact is not None:
                self.artifact.offer(float(progress), where)
        self._wake.set()

    def note_milestone(self, progress: float, where: str | None = None) -> None:
        """Log the job's progress in the run's log at every tenth it reaches: 0, 10 … 100 %, each
        at most once and in order (a jump from 20 to 45 % logs 40 % only)."""
        tenth = int(min(max(progress, 0.0), 100.0) // 10) * 10
        if self.milestone is None or tenth > self.milestone:
            self.milestone = tenth
            self.log.info(MILESTONE_LOG, self.job_id, tenth, f" · {where}" if where else "")

    def note_status(self, status: str) -> None:
        if status != self.status:
            if self.status is not None or status != "pending":
                self.log.info("Comfy job %s is %s", self.job_id, status)
            self.status = status

    def _next_due(self) -> float | None:
        dues = [
            due
            for due in (
                self.emitter.next_due() if self.emitter else None,
                self.artifact.next_due() if self.artifact else None,
                self.preview.next_due() if self.preview else None,
            )
            if due is not None
        ]
        return min(dues) if dues else None

    async def _run(self) -> None:
        while not self._stopping:
            due = self._next_due()
            if due is None or due > 0:
                self._wake.clear()
                await wait_event(self._wake, due)
                continue
            if self.emitter is not None:
                self.emitter.flush_due()
            if self.artifact is not None:
                await self.artifact.flush_due()
            if self.preview is not None:
                await self.preview.flush_due()
            await asyncio.sleep(0.005)  # the budget may be shared with other threads: never spin

    async def stop(
        self, final_progress: float | None = None, *, outcome: str | None = None
    ) -> None:
        """Stop the pump and write what is held: the final artifact value (with the ``outcome`` in
        its description), and the held progress event unless an outcome event follows (it takes the
        held progress over).

        Bounded in time: the pump gets `STOP_TIMEOUT` to end (the flag ends its loop even if
        its cancellation is lost, see `deadlines`); the final artifact
        write is handed to the loop's `ArtifactWrites` (the wait does not wait for it; it is
        abandoned after `ARTIFACT_WRITE_TIMEOUT`, and never takes more than `STOP_TIMEOUT`). A
        failed write is logged; the wait goes on.
        """
        self._stopping = True
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            self._wake.set()
            done, _ = await asyncio.wait({pump}, timeout=STOP_TIMEOUT)
            if not done:
                self.log.warning("The progress reporter of Comfy job %s did not stop", self.job_id)
        if self.preview is not None:
            self.preview.discard()  # the outputs artifact replaces the newest one written
        if self.emitter is not None and outcome is None:
            self.emitter.flush(self.job_id)  # within the budget: what has no room is dropped
        if self.artifact is not None:  # written off the waiting path (`ArtifactWrites`)
            artifact_writes().submit(
                self.artifact.key, lambda: self._finish(final_progress, outcome)
            )

    async def _finish(self, final_progress: float | None, outcome: str | None) -> None:
        assert self.artifact is not None
        in_time = True
        try:
            await bounded(self.artifact.finish(final_progress, outcome), STOP_TIMEOUT)
        except TimeoutError:
            in_time = False
        if not in_time or self.artifact.failed:
            self.log.warning(
                "Could not write the final progress of Comfy job %s; going on", self.job_id
            )


async def _cancel_job(backend: ComfyBackend, job_id: str, log: Any) -> Job | None:
    if not claim_cancel(job_id):  # another cleanup of this flow run sends it
        log.info("Comfy job %s: its cancel was asked for already", job_id)
        return None
    try:
        job = await within(backend.cancel(job_id), CANCEL_TIMEOUT)
    except Exception as exc:
        release_cancel(job_id)  # not sent: a later cleanup may try again
        log.warning("Could not cancel Comfy job %s: %s", job_id, exc)
        return None
    log.info("Asked to cancel Comfy job %s (now %s)", job_id, job.status)
    return job


async def watch_comfy_job(
    credentials: Any,
    job_id: str,
    *,
    timeout: float | None = None,
    cancel_on_timeout: bool = True,
    emit_events: bool = True,
    progress_artifact: bool = True,
    outputs_artifact: bool = True,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
) -> Job:
    """Wait for a Comfy job and report it to Prefect; the body of `wait_for_comfy_job`.

    Args:
        credentials: a block with ``get_backend()`` (such as ``ComfyCloudCredentials``) or a
            `ComfyBackend`; a backend made here is closed here.
        job_id: the Comfy job.
        timeout: seconds to wait; ``None`` waits for ever.
        cancel_on_timeout: cancel the Comfy job when the wait times out or is itself cancelled.
        emit_events: emit ``comfy.job.*`` Prefect events (progress coalesced, outcomes always).
        progress_artifact: keep a progress artifact (key ``comfy-job-<id>``) up to date; inside a
            flow run it belongs to the flow run, so that the flow run's page shows it. The run's
            log also says every tenth of the way (0, 10 … 100 %).
        outputs_artifact: on completion, write the outputs artifact (key ``comfy-job-<id>-outputs``).
        progress_interval: seconds between two progress events, and between two artifact writes.

    Returns:
        The completed job, read again so that its outputs are complete.

    Raises:
        JobFailed: the job failed; ``error_code``, ``error_message`` and ``node_id`` say why.
        JobCancelled: the job was cancelled.
        JobTimedOut: ``timeout`` passed first (the job was cancelled if ``cancel_on_timeout``).
    """
    job_id = str(job_id)
    log = run_logger(__name__)
    backend, owned = await open_backend(credentials)
    try:
        emitter = (
            ComfyEventEmitter.for_backend(backend, progress_interval=progress_interval)
            if emit_events
            else None
        )
        artifact = (
            JobProgressArtifact(job_id, interval=progress_interval) if progress_artifact else None
        )
        preview = JobPreviewArtifact(job_id) if progress_artifact and outputs_artifact else None
        watch = _JobWatch(job_id, emitter, artifact, log, preview)
        log.info(
            "Waiting for Comfy job %s%s",
            job_id,
            f" (timeout {timeout:g}s)" if timeout is not None else "",
        )
        watch.note_milestone(0.0)
        if artifact is not None:
            artifact.offer(0.0)  # created by the reporter, off the waiting path
        watch.start()
        try:
            terminal = await wait_for(
                backend,
                "job",
                job_id,
                timeout=timeout,
                on_progress=with_previews(watch.on_progress),
            )
        except JobTimedOut as exc:
            await watch.stop(outcome="timed out")
            log.warning(
                "Timed out after %gs waiting for Comfy job %s (last status: %s)",
                exc.timeout,
                job_id,
                exc.status or "unknown",
            )
            if emitter is not None:
                emitter.timed_out(job_id, timeout=exc.timeout, last_status=exc.status)
            if cancel_on_timeout:
                await _cancel_job(backend, job_id, log)
            raise
        except asyncio.CancelledError:
            # The cleanup runs as a task of its own: a cancel scope may cancel every await here.
            # It is bounded in time, and waited for at most that long (a second cancellation
            # stops the waiting, not the cleanup).
            cleanup = asyncio.create_task(
                _after_interrupt(backend, job_id, watch, log, cancel_on_timeout, owned)
            )
            owned = False  # the cleanup closes it, when it is done with it
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({cleanup}, timeout=INTERRUPT_CLEANUP_TIMEOUT)
            raise
        except BaseException:
            await watch.stop()
            raise
        handed = _Handover(owned)
        owned = False  # from here on, `_conclude` (or the outputs write it hands on) closes it
        try:
            return await _conclude(backend, job_id, terminal, watch, outputs_artifact, handed)
        finally:
            if handed.owned:
                await _close_backend(backend, log)
    finally:
        if owned:
            await _close_backend(backend, log)


async def _close_backend(backend: ComfyBackend, log: Any) -> None:
    try:
        await within(backend.aclose(), CLOSE_TIMEOUT)
    except TimeoutError:
        log.warning("Closing the Comfy backend took over %gs; going on", CLOSE_TIMEOUT)


async def _after_interrupt(
    backend: ComfyBackend, job_id: str, watch: _JobWatch, log: Any, cancel: bool, owned: bool
) -> None:
    """After the wait itself was cancelled: write what is held, cancel the job, close the backend."""
    try:
        await watch.stop()
        if cancel:
            log.warning("The wait for Comfy job %s was interrupted: cancelling the job", job_id)
            await _cancel_job(backend, job_id, log)
    finally:
        if owned:
            await _close_backend(backend, log)


class _Handover:
    """Whether the watch still has to close the backend it made (the outputs write may take it
    over: it downloads previews with it, after the wait returned)."""

    def __init__(self, owned: bool) -> None:
        self.owned = owned


async def _conclude(
    backend: ComfyBackend,
    job_id: str,
    terminal: ComfyEvent,
    watch: _JobWatch,
    outputs_artifact: bool,
    handed: _Handover,
) -> Job:
    """Report the outcome and return the job, or raise for failed and cancelled."""
    log, emitter = watch.log, watch.emitter
    outcome = terminal.event.split(".", 1)[-1]
    job: Job | None = None
    # Stopped first: while the job is read, no held progress can go out ahead of the outcome.
    await watch.stop(100.0 if outcome == "completed" else None, outcome=outcome)
    if outcome not in ("cancelled", "lost"):
        job = await backend.get_job(job_id)
    watch.status = outcome
    if emitter is not None:
        emitter.outcome(terminal, resource=job)
    if outcome == "completed":
        assert job is not None
        watch.note_milestone(100.0)
        log.info(COMPLETED_LOG, job_id, len(job.outputs))
        if outputs_artifact:  # off the waiting path: the task flushes it at its end
            # The write downloads previews after the wait returned: with a backend of its own (the
            # one made here, else a clone: the caller may close theirs as soon as we return).
            own = backend if handed.owned else backend.clone()
            handed.owned = False

            async def write(job: Job = job) -> None:
                try:
                    await create_outputs_artifact(job, backend=own)
                finally:
                    await _close_backend(own, log)

            artifact_writes().submit(artifact_key("job", job_id, "outputs"), write)
        return job
    if outcome == "failed":
        error = _error_of(terminal, job)
        exc = JobFailed(
            job_id, error_code=error.code, error_message=error.message, node_id=error.node_id
        )
        log.error("%s", exc)
        raise exc
    if outcome == "lost":
        lost = JobLost(job_id, reason=_error_of(terminal, None).message)
        log.error("%s", lost)
        raise lost
    log.warning("Comfy job %s was cancelled", job_id)
    raise JobCancelled(job_id)


async def watch_comfy_upload(
    credentials: Any, kind: str, resource_id: str, timeout: float | None, emit_events: bool
) -> Input | Model:
    resource_id = str(resource_id)
    log = run_logger(__name__)
    backend, owned = await open_backend(credentials)
    try:
        log.info("Waiting for Comfy %s %s", kind, resource_id)
        if kind == "input":
            terminal = await wait_for_input(backend, resource_id, timeout=timeout)
            resource: Input | Model = await backend.get_input(resource_id)
        else:
            terminal = await wait_for_model(backend, resource_id, timeout=timeout)
            resource = await backend.get_model(resource_id)
        if emit_events:
            ComfyEventEmitter.for_backend(backend).outcome(terminal, resource=resource)
        if terminal.event.endswith(".ready"):
            log.info("Comfy %s %s is ready as %r", kind, resource_id, resource.name)
            return resource
        error = _error_of(terminal, resource)
        exc = UploadFailed(kind, resource_id, error_code=error.code, error_message=error.message)
        log.error("%s", exc)
        raise exc
    finally:
        if owned:
            await _close_backend(backend, log)
