"""Live progress bars for Comfy jobs, one row per job, fed by ``job.progress`` events.

A row shows the job id, a bar, the percent, the node that runs (class and id), its step and the
time since the row was added; at the end, the job's outcome. The bars are drawn on stderr, so what a
command prints on stdout (the paths of the outputs) stays clean for a pipe. Off a terminal, Rich
draws the final state once.

Feed it from any thread: Rich's ``Progress`` takes a lock around every update.

Example:
    >>> from prefect_comfy import ComfyEvent
    >>> board = JobBoard()
    >>> board.add("job_1")
    >>> board.on_progress(ComfyEvent(event="job.progress", payload={
    ...     "id": "job_1", "progress": 40.0, "node_id": "3", "node_class": "KSampler",
    ...     "step": 10, "steps": 25}))
    >>> board.row("job_1")
    {'percent': 40.0, 'node': 'KSampler #3', 'step': 'step 10/25', 'status': 'running'}
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from prefect_comfy.models import ComfyEvent, preview_image, with_previews

logger = logging.getLogger(__name__)

ID_WIDTH = 20
"""The most characters of a job id a row shows (``job_`` + 16 hex on the developer API)."""


def short_id(job_id: str) -> str:
    """``job_id``, or its start and ``…`` when longer than `ID_WIDTH` (a ComfyUI prompt id
    is a 36-character UUID, which would wrap the row on an 80-column terminal).

    Example:
        >>> short_id("job_5a218cd138a543c5"), short_id("0b7a4c1e-2f3d-4e5f-8a9b-0c1d2e3f4a5b")
        ('job_5a218cd138a543c5', '0b7a4c1e-2f3d-4e5f-…')
    """
    return job_id if len(job_id) <= ID_WIDTH else job_id[: ID_WIDTH - 1] + "…"


class ElapsedColumn(TimeElapsedColumn):
    """Rich's elapsed time, counted from the row's ``since`` (a job's creation) when it has one."""

    def render(self, task: Task) -> Text:
        """The time since ``since``, else since the row was added; it stops with the row."""
        since = task.fields.get("since")
        if since is None:
            return super().render(task)
        end = task.stop_time if task.stop_time is not None else task.get_time()
        return Text(str(timedelta(seconds=max(0, int(end - since)))), style="progress.elapsed")


OUTCOME_STYLE = {"completed": "green", "failed": "red", "cancelled": "yellow"}


class JobBoard:
    """Progress bars for one or more jobs; use it as a context manager around the wait."""

    def __init__(self, console: Console | None = None, previews: Path | None = None) -> None:
        self.previews = previews
        """Where ``job.preview`` images go (``preview.jpg`` or ``.png``, overwritten), if set."""
        self.previews_written = 0
        self.console = console or Console(stderr=True, soft_wrap=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            TextColumn("{task.fields[node]}"),
            TextColumn("{task.fields[step]}"),
            ElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            refresh_per_second=8,
        )
        self._rows: dict[str, TaskID] = {}
        self._ended: set[str] = set()

    def __enter__(self) -> JobBoard:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def add(self, job_id: str, status: str = "submitted") -> None:
        """A new row for ``job_id`` (nothing if it has one already)."""
        if job_id not in self._rows:
            self._rows[job_id] = self._progress.add_task(
                short_id(job_id), total=100, node="", step="", status=status
            )

    def since(self, job_id: str, created_at: datetime | None) -> None:
        """Count the row's elapsed time from ``created_at`` (the job's creation), not from now."""
        if created_at is None:
            return
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)
        age = max(0.0, (datetime.now(UTC) - created_at).total_seconds())
        self._progress.update(self._rows[job_id], since=self._progress.get_time() - age)

    def unfinished(self) -> list[str]:
        """The jobs whose row has no outcome yet, in the order they were added."""
        return [job_id for job_id in self._rows if job_id not in self._ended]

    def on_progress(self, event: ComfyEvent) -> None:
        """Move a job's bar to what a ``job.progress`` event says (the ``on_progress`` callback)."""
        job_id = event.resource_id
        if job_id is None or job_id in self._ended:  # a late event must not undo the outcome
            return
        found = preview_image(event)
        if found is not None:
            self._write_preview(*found)
            return
        self.add(job_id)
        payload = event.payload
        fields: dict[str, Any] = {"status": "running"}
        if payload.get("node_class") or payload.get("node_id"):
            fields["node"] = " #".join(
                str(part) for part in (payload.get("node_class"), payload.get("node_id")) if part
            )
        steps = payload.get("steps")
        if isinstance(steps, int) and steps > 1:
            fields["step"] = f"step {payload.get('step', '?')}/{steps}"
        else:
            fields["step"] = ""
        percent = payload.get("progress")
        if isinstance(percent, (int, float)):
            fields["completed"] = max(0.0, min(100.0, float(percent)))
        self._progress.update(self._rows[job_id], **fields)

    def progress_callback(self) -> Any:
        """`on_progress`, asking for previews too when there is a folder for them."""
        return with_previews(self.on_progress) if self.previews is not None else self.on_progress

    def _write_preview(self, image: bytes, mime_type: str) -> None:
        """Replace ``DIR/preview.<ext>`` with the newest preview, whole (a reader never sees half)."""
        if self.previews is None:
            return
        name = "preview.png" if mime_type == "image/png" else "preview.jpg"
        target = self.previews / name
        partial = self.previews / f".{name}.partial"
        try:
            partial.write_bytes(image)
            os.replace(partial, target)
        except OSError as exc:
            logger.warning("could not write the preview to %s: %s", target, exc)
            return
        self.previews_written += 1

    def finish(self, job_id: str, status: str, detail: str = "") -> None:
        """Show a job's outcome: ``completed`` fills the bar, others keep where it stopped.

        A job that did not complete never shows 100 %: the progress counts sampler steps, and a
        job can fail after its last one (in a VAE decode, a save), so its bar stops at 99 %.
        """
        self.add(job_id)
        self._ended.add(job_id)
        style = OUTCOME_STYLE.get(status, "")
        text = f"[{style}]{status}[/]" if style else status
        fields: dict[str, Any] = {"status": f"{text} {detail}".rstrip()}
        if status == "completed":
            fields["completed"] = 100
        else:
            done = self._progress.tasks[self._rows[job_id]].completed
            fields["completed"] = min(done, 99.0)
        self._progress.update(self._rows[job_id], **fields)
        self._progress.stop_task(self._rows[job_id])

    def refresh(self) -> None:
        """Draw the bars now (they are redrawn 8 times a second anyway), after any redraw begun."""
        self._progress.refresh()

    def row(self, job_id: str) -> dict[str, Any]:
        """What the row of ``job_id`` shows (for tests and for a one-line summary)."""
        task = self._progress.tasks[self._rows[job_id]]
        return {
            "percent": task.completed,
            "node": task.fields["node"],
            "step": task.fields["step"],
            "status": task.fields["status"],
        }
