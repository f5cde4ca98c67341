"""Everything one emulator holds: jobs, inputs, models, outputs, faults, idempotency records, the
simulated executor and the event bus. One instance per app; nothing is process-wide.

All methods run on the server's event loop (the app's handlers and the controls call them there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from prefect_comfy.models import JOB_TERMINAL
from prefect_comfy_emulator.bus import EventBus
from prefect_comfy_emulator.config import EmulatorConfig
from prefect_comfy_emulator.faults import Fault
from prefect_comfy_emulator.idempotency import IdempotencyRecords
from prefect_comfy_emulator.images import make_png, png_size
from prefect_comfy_emulator.records import (
    IdFactory,
    JobRecord,
    OutputRecord,
    UploadRecord,
    now_iso,
)
from prefect_comfy_emulator.uploads import UploadsMixin
from prefect_comfy_emulator.wire import ApiError, not_found
from prefect_comfy_emulator.workflow import (
    NodeRun,
    catalogue_has,
    execution_plan,
    image_size,
    is_link,
    validate_workflow,
)

logger = logging.getLogger(__name__)

JOB_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
IMAGE_OUTPUT_CLASSES = ("SaveImage", "PreviewImage")


class EmulatorState(UploadsMixin):
    """The state and behaviour behind one emulator app."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.ids = IdFactory(config.seed)
        self.secret = self.ids.token(32).encode()
        self.bus = EventBus(
            self.ids.new, now_iso, config.ws_queue_size,
            max_bytes=config.ws_send_buffer_bytes, close_timeout=config.ws_close_timeout,
        )  # fmt: skip
        self.jobs: dict[str, JobRecord] = {}
        self.uploads: dict[str, UploadRecord] = {}
        self.outputs: dict[str, OutputRecord] = {}
        self.idempotency = IdempotencyRecords()
        self.faults: list[Fault] = []
        self.requests_total = 0
        self._save_counters: Counter[tuple[str, str]] = Counter()
        self._queue: asyncio.Queue[str] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_reset: list[Callable[[], None]] = []
        """Called by `reset` (a face that keeps state of its own forgets it there)."""
        self.on_reset_faults: list[Callable[[], None]] = []
        """Called by `reset_faults` (and so by `reset`)."""

    # ---- lifecycle -------------------------------------------------------------------------
    def _ensure_workers(self) -> asyncio.Queue[str]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._workers = [
                asyncio.create_task(self._worker(), name=f"emulator-worker-{i}")
                for i in range(self.config.concurrency)
            ]
        return self._queue

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown(self) -> None:
        tasks = [*self._workers, *self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._workers, self._queue = [], None

    def reset(self) -> None:
        """Forget every resource, fault and counter (connections stay open; ids stay unique)."""
        for task in list(self._tasks):
            task.cancel()
        self.jobs.clear()
        self.uploads.clear()
        self.outputs.clear()
        self.idempotency.clear()
        self._save_counters.clear()
        self.reset_faults()
        for conn in self.bus.connections:
            conn.held.clear()
        self.requests_total = 0
        self.bus.reset_counters()
        for forget in self.on_reset:
            forget()

    def reset_faults(self) -> None:
        """Clear injected HTTP faults, the event pause (held events are delivered) and duplicates."""
        self.faults.clear()
        for clear in self.on_reset_faults:
            clear()
        self.bus.duplicate = False
        self.bus.close_after_connected = 0
        self.bus.resume()

    def stats(self) -> dict[str, Any]:
        counts = Counter(job.status for job in self.jobs.values())
        return {
            "ws_connections_open": len(self.bus.connections),
            "ws_connections_total": self.bus.ws_connections_total,
            "ws_closed_at_handshake": self.bus.ws_closed_at_handshake,
            "ws_handshakes_refused": self.bus.ws_handshakes_refused,
            "ws_closed_slow": self.bus.ws_closed_slow,
            "requests_total": self.requests_total,
            "jobs": {status: counts.get(status, 0) for status in JOB_STATUSES},
            "events_sent": self.bus.events_sent,
        }

    # ---- faults ----------------------------------------------------------------------------
    def add_fault(self, fault: Fault) -> None:
        self.faults.append(fault)

    def has_fault(self, path: str, when: str) -> bool:
        return any(f.when == when and f.remaining > 0 and f.matches(path) for f in self.faults)

    def take_fault(self, path: str, when: str) -> Fault | None:
        for fault in self.faults:
            if fault.when == when and fault.remaining > 0 and fault.matches(path):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self.faults.remove(fault)
                return fault
        return None

    # ---- lookups ---------------------------------------------------------------------------
    def get_job(self, owner: str, job_id: str) -> JobRecord:
        job = self.jobs.get(job_id)
        if job is None or job.owner != owner:
            raise not_found("job", job_id)
        return job

    def get_upload(self, owner: str, kind: str, upload_id: str) -> UploadRecord:
        record = self.uploads.get(upload_id)
        if record is None or record.owner != owner or record.kind != kind:
            raise not_found(kind, upload_id)
        return record

    def get_output(self, owner: str, output_id: str) -> OutputRecord:
        record = self.outputs.get(output_id)
        if record is None or record.owner != owner:
            raise not_found("output", output_id)
        return record

    def _ready_upload(
        self, owner: str, kind: str, name: str, types: Iterable[str] = ()
    ) -> UploadRecord | None:
        allowed = set(types)
        for record in reversed(self.uploads.values()):
            if (
                record.owner == owner
                and record.kind == kind
                and record.name == name
                and record.status == "ready"
                and (not allowed or record.model_type in allowed)
            ):
                return record
        return None

    def validate(self, owner: str, workflow: Any) -> list[dict[str, Any]]:
        """The problems of a workflow for this account (its ready inputs and models count)."""
        return validate_workflow(
            workflow,
            input_ready=lambda name: self._ready_upload(owner, "input", name) is not None,
            model_ready=lambda name, types: (
                catalogue_has(name, types)
                or self._ready_upload(owner, "model", name, types) is not None
            ),
        )

    # ---- jobs ------------------------------------------------------------------------------
    def create_jobs(
        self, owner: str, origin: str, specs: list[tuple[dict[str, Any], list[str]]], batch: bool
    ) -> tuple[str | None, list[JobRecord]]:
        """Validate every workflow, then queue all jobs (none if any workflow is invalid)."""
        details: list[dict[str, Any]] = []
        for index, (workflow, _tags) in enumerate(specs):
            for err in self.validate(owner, workflow):
                details.append({**err, "index": index} if batch else err)
        if details:
            raise ApiError(
                422,
                "validation_error",
                f"workflow validation failed ({len(details)} error(s))",
                details,
            )
        batch_id = self.ids.new("bat") if batch else None
        queue = self._ensure_workers()
        jobs = []
        for workflow, tags in specs:
            job = JobRecord(
                id=self.ids.new("job"), owner=owner, workflow=workflow, tags=list(tags),
                origin=origin, created_at=now_iso(), batch_id=batch_id,
            )  # fmt: skip
            self.jobs[job.id] = job
            queue.put_nowait(job.id)
            jobs.append(job)
        return batch_id, jobs

    def cancel_job(self, owner: str, job_id: str) -> JobRecord:
        job = self.get_job(owner, job_id)
        job.cancel_requests += 1
        if job.status in JOB_TERMINAL:
            raise ApiError(
                400, "invalid_request", f"job {job_id} is {job.status} and cannot be cancelled"
            )
        if job.status == "pending":
            self._finish(job, "cancelled")
        else:
            job.cancel_requested = True
        return job

    def _finish(self, job: JobRecord, status: str, error: dict[str, Any] | None = None) -> None:
        job.status = status
        job.error = error
        job.completed_at = now_iso()
        self.bus.publish(job.owner, f"job.{status}", job.wire(self.secret))

    async def _worker(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            job = self.jobs.get(await queue.get())
            if job is None or job.status != "pending":
                continue
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in the emulator must not kill the worker
                logger.exception("emulator job %s crashed", job.id)
                if job.status == "running":
                    self._finish(job, "failed", {"code": "internal_error", "message": str(exc)})

    def _alive(self, job: JobRecord) -> bool:
        return self.jobs.get(job.id) is job

    async def _run(self, job: JobRecord) -> None:
        job.status = "running"
        job.started_at = now_iso()
        self.bus.tell_listeners(job.owner, "job.running", {"id": job.id})
        plan = execution_plan(job.workflow)
        total = max(1, sum(run.steps for run in plan))
        done = 0
        for index, run in enumerate(plan):
            for step in range(1, run.steps + 1):
                if job.cancel_requested:  # the checkpoint before every step
                    self._finish(job, "cancelled")
                    return
                await asyncio.sleep(
                    self.config.step_duration if run.step_seconds is None else run.step_seconds
                )
                if not self._alive(job):
                    return
                done += 1
                job.progress = 100.0 if done == total else round(100 * done / total, 2)
                job.live = {
                    "node_id": run.node_id, "node_class": run.class_type, "step": step,
                    "steps": run.steps, "nodes_done": index + (step == run.steps),
                    "nodes_total": len(plan),
                }  # fmt: skip
                self.bus.publish(job.owner, "job.progress", self._progress(job, run, step))
            if run.fails:
                self._finish(job, "failed", self._failure(job, run))
                return
        outputs = await self._make_outputs(job)
        if not self._alive(job):
            return
        for output in outputs:
            self.outputs[output.id] = output
        job.outputs = outputs
        job.progress = 100.0
        self._finish(job, "completed")

    @staticmethod
    def _progress(job: JobRecord, run: NodeRun, step: int) -> dict[str, Any]:
        return {
            "id": job.id,
            "status": "running",
            "progress": job.progress,
            "node_id": run.node_id,
            "node_class": run.class_type,
            "step": step,
            "steps": run.steps,
        }

    @staticmethod
    def _failure(job: JobRecord, run: NodeRun) -> dict[str, Any]:
        inputs = job.workflow[run.node_id].get("inputs", {})
        return {
            "code": inputs.get("code") or "execution_error",
            "message": inputs.get("message", "EmulatorFail"),
            "node_id": run.node_id,
        }

    async def _make_outputs(self, job: JobRecord) -> list[OutputRecord]:
        outputs: list[OutputRecord] = []
        for node_id, node in job.workflow.items():
            if node["class_type"] not in IMAGE_OUTPUT_CLASSES or not is_link(
                node["inputs"].get("images")
            ):
                continue
            width, height, count = image_size(
                job.workflow,
                str(node["inputs"]["images"][0]),
                input_size=lambda name: self._input_size(job.owner, name),
                max_side=self.config.max_image_side,
                max_batch=self.config.max_batch_images,
            )
            for index in range(count):
                seed = f"{self.config.seed}|{job.id}|{node_id}|{index}".encode()
                data = (
                    make_png(width, height, seed)
                    if width * height <= 128 * 128
                    else await asyncio.to_thread(make_png, width, height, seed)
                )
                outputs.append(
                    OutputRecord(
                        id=self.ids.new("out"), job_id=job.id, owner=job.owner,
                        name=self._output_name(job.owner, node), data=data, origin=job.origin,
                        tags=list(job.tags), created_at=now_iso(), node_id=node_id,
                    )
                )  # fmt: skip
        return outputs

    def _output_name(self, owner: str, node: dict[str, Any]) -> str:
        if node["class_type"] == "SaveImage":
            prefix = (
                str(node["inputs"].get("filename_prefix") or "ComfyUI").rsplit("/", 1)[-1]
                or "ComfyUI"
            )
        else:
            prefix = "ComfyUI_temp"
        self._save_counters[(owner, prefix)] += 1
        return f"{prefix}_{self._save_counters[(owner, prefix)]:05d}_.png"

    def _input_size(self, owner: str, name: str) -> tuple[int, int] | None:
        record = self._ready_upload(owner, "input", name)
        if record is None or record.data is None:
            return None
        try:
            return png_size(record.data)
        except ValueError:
            return None
