"""Progress and outputs of Comfy jobs in the Prefect UI.

- `JobProgressArtifact`: one progress artifact per waited job, created once and updated in place
  (at most one update per interval, default 1 s, plus the final one; 100 on completion).
- `create_outputs_artifact`: on completion, a markdown artifact listing the outputs (name, type,
  size, link) with a small inline preview of each image as a ``data:`` URL, because signed download
  URLs expire. An image is inlined only when its file is at most `MAX_PREVIEW_BYTES`; the table
  says so otherwise. Pillow is not needed: the file's own bytes are inlined. The table and its
  previews are made in `prefect_comfy.orchestration.previews` (no Prefect call there); this module
  writes artifacts.

Artifact keys hold lowercase letters, digits and dashes only (`artifact_key`). URLs go through
`redact_url`; no artifact ever holds an API key.

Every write to the Prefect API is best effort and bounded in time (`ARTIFACT_WRITE_TIMEOUT`,
`OUTPUTS_ARTIFACT_TIMEOUT`): an API that fails or hangs costs a wait at most that long and never
keeps it from returning (issue 11, item 15: 200 waits in one flow hung on their artifact writes).
Progress writes stay off the waiting path: the artifact is created by the wait's reporter (a task of
its own), not before the wait, and the waits of one event loop share
`PROGRESS_WRITES_IN_FLIGHT` writes at a time, each sending the latest value held when its turn
comes. A wait's last writes (final progress, outputs) go through `prefect_comfy.orchestration.writes`
(issue 21, section 4).

Example:
    >>> artifact_key("job", "Job_42")
    'comfy-job-42-41182457'
    >>> data_url(b"\\x89PNG", "image/png")
    'data:image/png;base64,iVBORw=='
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from os import PathLike
from typing import Any
from uuid import UUID

from prefect_comfy.models import Job
from prefect_comfy.orchestration.previews import MAX_PREVIEW_BYTES as MAX_PREVIEW_BYTES
from prefect_comfy.orchestration.previews import MAX_PREVIEWS as MAX_PREVIEWS
from prefect_comfy.orchestration.previews import PREVIEW_MIME_TYPES as PREVIEW_MIME_TYPES
from prefect_comfy.orchestration.previews import _previews as _previews
from prefect_comfy.orchestration.previews import data_url as data_url
from prefect_comfy.orchestration.previews import outputs_markdown as outputs_markdown
from prefect_comfy.orchestration.previews import preview_from_file as preview_from_file
from prefect_comfy.transport.deadlines import bounded

__all__ = [
    "ARTIFACT_WRITE_TIMEOUT",
    "MAX_KEY_LENGTH",
    "MAX_PREVIEW_BYTES",
    "MAX_PREVIEWS",
    "OUTPUTS_ARTIFACT_TIMEOUT",
    "PREVIEW_INTERVAL",
    "PREVIEW_MIME_TYPES",
    "JobPreviewArtifact",
    "JobProgressArtifact",
    "artifact_key",
    "create_outputs_artifact",
    "create_run_progress_artifact",
    "data_url",
    "outputs_markdown",
    "preview_from_file",
    "preview_markdown",
    "short_id",
]

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 100
"""Artifact keys are cut to this length (a hash keeps cut keys distinct)."""
ARTIFACT_WRITE_TIMEOUT = 10.0
"""Seconds one progress artifact write may take; after that it is abandoned and writing stops."""
PROGRESS_WRITES_IN_FLIGHT = 4
"""Most progress artifact writes in flight at once per event loop: waits that share a loop share
these, and a write that waits its turn sends the latest value held when its turn comes (so a slow
Prefect API gets fewer writes, never a growing backlog of them)."""
OUTPUTS_ARTIFACT_TIMEOUT = 30.0
"""Seconds the outputs artifact may take in all (previews and the write); after that it is skipped."""

_NOT_KEY_CHARS = re.compile(r"[^a-z0-9]+")


def artifact_key(kind: str, resource_id: str, suffix: str | None = None) -> str:
    """A valid artifact key for a Comfy resource: ``comfy-<kind>-<id>[-<suffix>]``.

    Everything but lowercase letters and digits becomes a dash, and an id that starts with the
    kind (``job_42``) loses that prefix, so a key never says ``job-job``; when that changes the id
    (or the key is cut to `MAX_KEY_LENGTH`), 8 hex digits of the original id's hash keep keys
    distinct.
    """
    raw = str(resource_id)
    kind_part = _NOT_KEY_CHARS.sub("-", kind.lower()).strip("-") or "resource"
    safe = _NOT_KEY_CHARS.sub("-", raw.lower()).strip("-") or "id"
    if safe.startswith(f"{kind_part}-") and len(safe) > len(kind_part) + 1:
        safe = safe[len(kind_part) + 1 :]
    parts = ["comfy", kind_part, safe]
    tail = [_NOT_KEY_CHARS.sub("-", suffix.lower()).strip("-")] if suffix else []
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    key = "-".join(parts + ([digest] if safe != raw else []) + tail)
    if len(key) > MAX_KEY_LENGTH:
        keep = MAX_KEY_LENGTH - len(digest) - 2 - sum(len(t) + 1 for t in tail)
        key = "-".join([key[:keep].rstrip("-"), digest, *tail])
    return key


def short_id(job_id: str, width: int = 12) -> str:
    """A job id short enough for an artifact card: without a ``job_`` prefix, and cut to 8
    characters and ``…`` when longer than ``width``.

    Example:
        >>> short_id("job_1"), short_id("job_0123456789abcdef")
        ('1', '01234567…')
    """
    bare = re.sub(r"^job[_-]", "", job_id, flags=re.IGNORECASE) or job_id
    return bare if len(bare) <= width else f"{bare[:8]}…"


# -- progress ---------------------------------------------------------------------------------------
async def create_run_progress_artifact(
    progress: float, key: str | None = None, description: str | None = None
) -> UUID:
    """Create a progress artifact on the flow run, even from inside one of its task runs.

    Prefect's ``acreate_progress_artifact`` ties an artifact made in a task run to that task run;
    the flow run's page then shows no progress of the job it waits for (issue 19, item 8). Here a
    task run's artifact belongs to its flow run (``task_run_id`` left empty), so the flow run has
    its own progress; outside any flow run it is Prefect's ``acreate_progress_artifact``.
    """
    from prefect.artifacts import acreate_progress_artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.context import TaskRunContext
    from prefect.utilities.context import get_flow_run_id

    task_run = getattr(TaskRunContext.get(), "task_run", None)
    flow_run_id = get_flow_run_id() or getattr(task_run, "flow_run_id", None)
    if flow_run_id is None:
        return await acreate_progress_artifact(progress=progress, key=key, description=description)
    async with get_client() as client:
        created = await client.create_artifact(
            artifact=ArtifactCreate(
                type="progress",
                key=key,
                description=description,
                flow_run_id=flow_run_id,
                task_run_id=None,
                data=progress,
            )
        )
    return created.id


Creator = Callable[..., Awaitable[UUID]]
Updater = Callable[..., Awaitable[Any]]


class JobProgressArtifact:
    """The progress artifact of one waited job, updated in place within an interval.

    Args:
        job_id: the Comfy job.
        interval: seconds between two updates (the final one is never held back).
        key: the artifact key; `artifact_key` of the job by default.
        create: creates the artifact (by default [create_run_progress_artifact][prefect_comfy.orchestration.artifacts.create_run_progress_artifact]:
            on the flow run, so that its page shows the progress).
        update: updates it (``prefect.artifacts.aupdate_progress_artifact`` by default).
        clock: a monotonic clock (tests inject one).
        write_timeout: seconds one write may take (`ARTIFACT_WRITE_TIMEOUT` by default).

    Writing is best effort: a failure or a write that takes longer than ``write_timeout`` is logged
    once, ends the writing (`failed`) and never fails or holds up the wait.
    """

    def __init__(
        self,
        job_id: str,
        *,
        interval: float = 1.0,
        key: str | None = None,
        create: Creator | None = None,
        update: Updater | None = None,
        clock: Callable[[], float] = time.monotonic,
        write_timeout: float | None = None,
    ) -> None:
        from prefect.artifacts import aupdate_progress_artifact

        self.job_id = job_id
        self.key = key or artifact_key("job", job_id)
        self.interval = interval
        self._create = create or create_run_progress_artifact
        self._update = update or aupdate_progress_artifact
        self._clock = clock
        self.write_timeout = ARTIFACT_WRITE_TIMEOUT if write_timeout is None else write_timeout
        self.artifact_id: UUID | None = None
        self.written: float | None = None
        self._pending: float | None = None
        self._written_at: float | None = None
        self._failed = False
        self.where: str | None = None
        self.outcome: str | None = None

    @property
    def description(self) -> str:
        """What the artifact's card in the UI says (the card shows no value, so this says it).

        The percentage first and where the job is next, because the card cuts the description at
        about 40 characters: ``0% · job 1`` at first (Comfy job ``job_1``),
        ``62% · KSampler step 5/8 · job 1`` as it is written, ``100% · completed · job 1`` at the
        end; a long job id is cut (``job 0f1e2d3c…``), the artifact's key holds all of it.
        """
        return self._describe(self.written)

    def _describe(self, value: float | None) -> str:
        parts = [f"{int(value or 0)}%"]
        if self.outcome and self.where and self.outcome != "completed":
            parts.append(f"{self.outcome} at {self.where}")
        elif self.outcome:
            parts.append(self.outcome)
        elif self.where:
            parts.append(self.where)
        parts.append(f"job {short_id(self.job_id)}")
        return " · ".join(parts)

    @property
    def failed(self) -> bool:
        """Whether a write failed or timed out (no more are tried)."""
        return self._failed

    async def start(self, progress: float = 0.0) -> UUID | None:
        """Create the artifact (once)."""
        if self.artifact_id is None and not self._failed:
            value = _clamp(progress)
            try:
                self.artifact_id = await bounded(  # described with the value it is created at
                    self._create(progress=value, key=self.key, description=self._describe(value)),
                    self.write_timeout,
                )
                self.written, self._written_at = value, self._clock()
            except Exception as exc:
                self._give_up(exc)
        return self.artifact_id

    def offer(self, progress: float, where: str | None = None) -> None:
        """Note a new progress value (and where the job is: ``KSampler step 12/20``);
        `flush_due` writes it when its interval has passed."""
        value = _clamp(progress)
        self.where = where or self.where
        if value != self.written:
            self._pending = value

    def next_due(self) -> float | None:
        """Seconds until the held value may be written (``None`` when nothing is held)."""
        if self._pending is None or self._failed:
            return None
        if self._written_at is None:
            return 0.0
        return max(self._written_at + self.interval - self._clock(), 0.0)

    async def flush_due(self) -> bool:
        """Write the held value if its interval has passed: once a write slot of the loop is free
        (`PROGRESS_WRITES_IN_FLIGHT`), the latest value held by then."""
        if self.next_due() != 0.0:
            return False
        async with _slots():
            return await self._write(self._pending)

    async def finish(self, progress: float | None = None, outcome: str | None = None) -> bool:
        """Write the final value now (``progress``, else the held one), whatever the interval.

        ``outcome`` (``completed``, ``failed`` …) goes into the description.
        """
        self.outcome = outcome
        value = _clamp(progress) if progress is not None else self._pending
        if value is None and outcome is not None:
            value = self.written  # say the outcome, at the value last written
        if value is None or (value == self.written and outcome is None):
            self._pending = None
            return False
        return await self._write(value)

    async def _write(self, value: float | None) -> bool:
        if value is None or self._failed:
            return False
        if self.artifact_id is None:
            return await self.start(value) is not None
        self._pending = None
        try:
            await bounded(
                self._update(
                    artifact_id=self.artifact_id, progress=value, description=self._describe(value)
                ),
                self.write_timeout,
            )
        except Exception as exc:
            self._give_up(exc)
            return False
        self.written, self._written_at = value, self._clock()
        return True

    def _give_up(self, exc: Exception) -> None:
        self._failed = True
        logger.warning("Progress artifact of Comfy job %s not written: %r", self.job_id, exc)


PREVIEW_INTERVAL = 3.0
"""Seconds between two writes of a job's live preview artifact."""
MAX_LIVE_PREVIEW_BYTES = 256 * 1024
"""The largest live preview image written into the artifact (ComfyUI's are a few KB)."""


class JobPreviewArtifact:
    """The newest live preview of a running job, as a markdown artifact with a ``data:`` URL image.

    It is written under the key of the job's outputs artifact (``comfy-job-<id>-outputs``), so the
    outputs table written on completion replaces it. At most one write per ``interval`` (default
    `PREVIEW_INTERVAL`), each taking one event of the process-wide progress budget
    (`prefect_comfy.orchestration.events.budget`): when it has no room, the preview waits for
    the next turn. Best effort like `JobProgressArtifact`: a failed write ends the writing.

    Args:
        job_id: the Comfy job.
        interval: seconds between two writes.
        key: the artifact key; the outputs artifact's by default.
        create: writes it (``prefect.artifacts.acreate_markdown_artifact`` by default).
        budget: the progress budget (the process-wide one by default).
        clock: a monotonic clock (tests inject one).
    """

    def __init__(
        self,
        job_id: str,
        *,
        interval: float = PREVIEW_INTERVAL,
        key: str | None = None,
        create: Creator | None = None,
        budget: Any | None = None,
        clock: Callable[[], float] = time.monotonic,
        write_timeout: float | None = None,
    ) -> None:
        self.job_id = job_id
        self.key = key or artifact_key("job", job_id, "outputs")
        self.interval = interval
        self._create = create
        self._budget = budget
        self._clock = clock
        self.write_timeout = ARTIFACT_WRITE_TIMEOUT if write_timeout is None else write_timeout
        self._pending: tuple[str, str | None] | None = None
        self._written_at: float | None = None
        self._failed = False
        self.writes = 0

    def offer(self, image: bytes, mime_type: str, where: str | None = None) -> None:
        """Hold the newest preview (an older one held is dropped); too big or not an image: none."""
        url = data_url(image, mime_type, max_bytes=MAX_LIVE_PREVIEW_BYTES)
        if url is not None:
            self._pending = (url, where)

    def next_due(self) -> float | None:
        """Seconds until the held preview may be written (``None`` when nothing is held)."""
        if self._pending is None or self._failed:
            return None
        if self._written_at is None:
            return 0.0
        return max(self._written_at + self.interval - self._clock(), 0.0)

    def discard(self) -> None:
        """Forget the held preview (the job ended: its outputs take the artifact over)."""
        self._pending = None

    async def flush_due(self) -> bool:
        """Write the held preview if its interval has passed and the budget has room."""
        if self.next_due() != 0.0 or self._pending is None:
            return False
        budget = self._budget
        if budget is None:
            from prefect_comfy.orchestration.events.budget import progress_budget

            budget = progress_budget()
        if not budget.try_acquire():
            self._written_at = self._clock()  # no room now: the next turn, one interval on
            return False
        (url, where), self._pending = self._pending, None
        create = self._create
        if create is None:
            from prefect.artifacts import acreate_markdown_artifact as create
        markdown = preview_markdown(self.job_id, url, where)
        try:
            async with _slots():
                await bounded(
                    create(
                        markdown=markdown,
                        key=self.key,
                        description=f"Live preview of Comfy job {self.job_id} (running)",
                    ),
                    self.write_timeout,
                )
        except Exception as exc:
            self._failed = True
            logger.warning("Preview artifact of Comfy job %s not written: %r", self.job_id, exc)
            return False
        self._written_at = self._clock()
        self.writes += 1
        return True


def preview_markdown(job_id: str, url: str, where: str | None = None) -> str:
    """The markdown of a live preview: a heading, where the job is, the image.

    Example:
        >>> print(preview_markdown("job_1", "data:image/png;base64,AA==", "KSampler step 3/8"))
        ### Live preview of Comfy job job_1
        <BLANKLINE>
        Running: KSampler step 3/8. The outputs replace this preview when the job completes.
        <BLANKLINE>
        ![live preview](data:image/png;base64,AA==)
    """
    running = f"Running: {where}." if where else "Running."
    return (
        f"### Live preview of Comfy job {job_id}\n\n"
        f"{running} The outputs replace this preview when the job completes.\n\n"
        f"![live preview]({url})"
    )


_write_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _slots() -> asyncio.Semaphore:
    """The progress-write slots of the running loop (`PROGRESS_WRITES_IN_FLIGHT`)."""
    loop = asyncio.get_running_loop()
    slots = _write_slots.get(loop)
    if slots is None:
        slots = _write_slots[loop] = asyncio.Semaphore(PROGRESS_WRITES_IN_FLIGHT)
    return slots


def _clamp(progress: float) -> float:
    return float(min(max(progress, 0.0), 100.0))


async def create_outputs_artifact(
    job: Job,
    *,
    backend: Any | None = None,
    paths: Mapping[str, str | PathLike[str]] | None = None,
    key: str | None = None,
    max_preview_bytes: int = MAX_PREVIEW_BYTES,
    timeout: float | None = None,
    create: Callable[..., Awaitable[UUID]] | None = None,
) -> UUID | None:
    """Create the markdown artifact listing a completed job's outputs, with image previews.

    Args:
        job: the completed job (with its outputs, as `ComfyBackend.get_job` returns it).
        backend: used to download an image of known size within the bound when no path is given.
        paths: downloaded files by output id (or name): previews are made from them.
        key: the artifact key; ``comfy-job-<id>-outputs`` by default.
        max_preview_bytes: the largest image inlined.
        timeout: seconds for the whole of it, previews and write (`OUTPUTS_ARTIFACT_TIMEOUT` by
            default).
        create: writes the artifact (``prefect.artifacts.acreate_markdown_artifact`` by default).

    Returns:
        The artifact id, or ``None`` if it could not be written in time (logged, never raised).
    """
    if create is None:
        from prefect.artifacts import acreate_markdown_artifact as create

    async def write() -> UUID:
        previews = await _previews(
            job.outputs, backend=backend, paths=paths or {}, max_bytes=max_preview_bytes
        )
        from prefect_comfy.orchestration.results import seeds_of_job

        markdown = outputs_markdown(
            job, job.outputs, previews, max_bytes=max_preview_bytes, seeds=seeds_of_job(job.id)
        )
        return await create(
            markdown=markdown,
            key=key or artifact_key("job", job.id, "outputs"),
            description=f"Outputs of Comfy job {job.id}",
        )

    try:
        return await bounded(write(), OUTPUTS_ARTIFACT_TIMEOUT if timeout is None else timeout)
    except Exception as exc:
        logger.warning("Outputs artifact of Comfy job %s not written: %r", job.id, exc)
        return None
