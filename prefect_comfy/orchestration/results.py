"""What a finished Comfy job gives the Prefect layer: `ComfyJobResult` and its files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from prefect_comfy.bounded import Bounded
from prefect_comfy.models import Job, Output
from prefect_comfy.orchestration.events import names as events
from prefect_comfy.redaction import redact_url

__all__ = [
    "ComfyJobResult",
    "ComfyOutputFile",
    "job_result",
    "output_file",
    "remember_seeds",
    "seeds_of_job",
    "to_download",
]

_SEEDS: Bounded = Bounded(1_000)
"""Job id -> the seeds it was submitted with, for the result and the outputs artifact."""


def remember_seeds(job_id: str, seeds: Mapping[str, int]) -> None:
    """Note the seeds a job was submitted with (this process only)."""
    if seeds:
        _SEEDS.remember(job_id, dict(seeds))


def seeds_of_job(job_id: str) -> dict[str, int]:
    """The seeds a job of this process was submitted with (``{}`` when unknown)."""
    return dict(_SEEDS.get(job_id) or {})


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
    seeds: dict[str, int] = Field(
        default_factory=dict,
        description='The seeds the job ran with, {"<node id>.<input>": value}; pass them back as '
        "inputs to make the same picture again.",
    )

    @property
    def paths(self) -> list[Path]:
        """The local paths of the downloaded outputs, in order."""
        return [o.path for o in self.outputs if o.path is not None]

    @property
    def saved(self) -> list[ComfyOutputFile]:
        """The outputs the server saved (previews left out)."""
        return [o for o in self.outputs if not o.temporary]


def output_file(output: Output, path: Path | None) -> ComfyOutputFile:
    """The result entry of one output, downloaded to ``path`` (or not: ``None``); keys redacted."""
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


def job_result(
    job: Job, paths: Mapping[str, Path] | None = None, seeds: Mapping[str, int] | None = None
) -> ComfyJobResult:
    """The result of a completed job; ``paths`` maps output ids to their downloads.

    The flow run's own tag (``prefect.flow-run.<id>``) is left out of ``tags``; ``seeds`` default
    to those this process submitted the job with.
    """
    paths = paths or {}
    return ComfyJobResult(
        seeds=dict(seeds) if seeds is not None else seeds_of_job(job.id),
        job_id=job.id,
        status=job.status,
        outputs=[output_file(o, paths.get(o.id)) for o in job.outputs],
        tags=[t for t in job.tags if not t.startswith(events.FLOW_RUN_TAG_PREFIX)],
    )
