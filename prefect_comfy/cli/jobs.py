"""``prefect-comfy jobs list|get|cancel|watch`` and ``prefect-comfy outputs``."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console
from rich.table import Table

from prefect_comfy.cli.connect import BlockOption, backend_for
from prefect_comfy.cli.errors import CommandFailed, Interrupted, UsageProblem
from prefect_comfy.cli.help import command, group
from prefect_comfy.cli.progress import JobBoard
from prefect_comfy.cli.run import DEFAULT_OUT, OutOption, check_out_folder, download_all
from prefect_comfy.exceptions import ComfyError, JobFailed
from prefect_comfy.models import JOB_TERMINAL, Job, JobStatus
from prefect_comfy.waiting.waits import wait_for

app = group("jobs", "List, inspect, cancel and watch jobs.")

JobIds = Annotated[
    list[str], typer.Argument(help="One or more job ids.", metavar="ID...", show_default=False)
]


@command(app, "list")
def list_jobs(
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only jobs in this status (pending, running, completed, failed, cancelled).",
            metavar="STATUS",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", "-t", help="Only jobs with this tag (repeat: all of them).", metavar="TAG"
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="Most jobs to show.", metavar="N", min=1)
    ] = 20,
    block: BlockOption = None,
) -> None:
    """List recent jobs, newest first: id, status, progress, creation time, tags."""
    statuses = get_args(JobStatus)
    if status is not None and status not in statuses:  # say it here, not as the server's 422
        raise UsageProblem(f"--status {status}: use one of {', '.join(statuses)}")
    jobs = asyncio.run(_list(status, tag or [], limit, block))
    if not jobs:  # a header over nothing says nothing more
        typer.echo("No jobs.", err=True)
        return
    table = Table("ID", "STATUS", "PROGRESS", "CREATED", "TAGS", box=None, pad_edge=False)
    for job in jobs:
        progress = f"{job.progress:.0f}%" if job.progress is not None else ""
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else ""
        table.add_row(job.id, job.status, progress, created, ",".join(job.tags))
    Console(width=200, soft_wrap=True).print(table)


async def _list(status: str | None, tags: list[str], limit: int, block: str | None) -> list[Job]:
    async with await backend_for(block) as backend:
        # What every kind of server lists, newest first: the backend's own listing.
        recent = await backend.recent(_EPOCH, limit=max(limit * 4, 100), kinds=("job",))
    if recent is None:
        raise UsageProblem(
            f"{backend.address} does not list its jobs; read one with 'prefect-comfy jobs get ID'"
        )
    jobs = [r.resource for r in recent if r.kind == "job"]
    wanted = [
        j for j in jobs if (status is None or j.status == status) and set(tags) <= set(j.tags)
    ]
    return wanted[:limit]


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,255}")


def checked_ids(job_ids: list[str]) -> list[str]:
    """The ids as given, once each is one that a server could have made.

    Raises:
        UsageProblem: an id with a ``/``, ``..``, a space or another character no server uses.
    """
    for job_id in job_ids:
        if not _ID.fullmatch(job_id) or ".." in job_id:
            raise UsageProblem(
                f"{job_id!r} is not a job id (letters, digits and . _ - : only); "
                "'prefect-comfy jobs list' shows the ids"
            )
    return job_ids


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@command(app, "get")
def get(
    job_id: Annotated[str, typer.Argument(help="The job id.", metavar="ID", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
    block: BlockOption = None,
) -> None:
    """Show one job: status, progress, times, error and outputs."""
    checked_ids([job_id])
    job = asyncio.run(_get(job_id, block))
    if as_json:
        typer.echo(json.dumps(job.model_dump(mode="json", exclude_none=True), indent=2))
        return
    typer.echo(
        f"{job.id}  {job.status}" + (f"  {job.progress:.0f}%" if job.progress is not None else "")
    )
    for label, value in (
        ("created", job.created_at),
        ("started", job.started_at),
        ("ended", job.completed_at),
    ):
        if value is not None:
            typer.echo(f"  {label:<8} {value:%Y-%m-%d %H:%M:%S %Z}".rstrip())
    if job.tags:
        typer.echo(f"  tags     {', '.join(job.tags)}")
    if job.error is not None:
        where = f" at node {job.error.node_id}" if job.error.node_id else ""
        typer.echo(f"  error    [{job.error.code or 'unknown'}]{where}: {job.error.message or ''}")
    for output in job.outputs:
        typer.echo(f"  output   {output.name or output.id} ({output.type})")


async def _get(job_id: str, block: str | None) -> Job:
    async with await backend_for(block) as backend:
        return await backend.get_job(job_id)


@command(app, "cancel")
def cancel(job_ids: JobIds, block: BlockOption = None) -> None:
    """Cancel jobs: a pending job ends at once, a running one at its next step."""
    checked_ids(job_ids)
    for job in asyncio.run(_cancel(job_ids, block)):
        if job.status == "cancelled":
            typer.echo(f"{job.id}  cancelled")
        elif job.is_terminal:
            typer.echo(f"{job.id}  {job.status} (it had ended already)")
        else:
            typer.echo(f"{job.id}  cancel requested (was {job.status}; it stops at its next step)")


async def _cancel(job_ids: list[str], block: str | None) -> list[Job]:
    async with await backend_for(block) as backend:
        return [await backend.cancel(job_id) for job_id in job_ids]


@command(app, "watch")
def watch(
    job_ids: JobIds,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            help="Seconds to watch before giving up (the jobs keep running).",
            metavar="SECONDS",
            min=0,
            show_default=False,
        ),
    ] = None,  # fmt: skip
    block: BlockOption = None,
) -> None:
    """Watch jobs with a live progress bar each, until they end. Ctrl-C stops watching only.

    The time on a bar counts from the job's creation. Ctrl-C says which jobs still run.

    Exits 0 when every job completed, 1 otherwise.
    """
    checked_ids(job_ids)
    board = JobBoard()
    try:
        with board:
            outcomes = asyncio.run(_watch(job_ids, timeout, block, board))
    except KeyboardInterrupt:
        running = board.unfinished()
        if not running:
            raise Interrupted("Stopped watching") from None
        raise Interrupted(
            f"Stopped watching; still running on the server: {', '.join(running)} "
            f"(prefect-comfy jobs watch ID to watch again, jobs cancel ID to stop it)"
        ) from None
    failed = {job_id: why for job_id, why in outcomes.items() if why}
    if failed:
        raise CommandFailed(
            f"{len(failed)} of {len(job_ids)} job(s) did not complete: "
            + "; ".join(f"{job_id} {why}" for job_id, why in failed.items())
        )


async def _watch(
    job_ids: list[str], timeout: float | None, block: str | None, board: JobBoard
) -> dict[str, str]:
    """Each job's outcome: ``""`` for completed, else what happened."""
    async with await backend_for(block) as backend:

        async def one(job_id: str) -> str:
            board.add(job_id, "…")
            try:
                job = await backend.get_job(job_id)
                board.since(job_id, job.created_at)  # its age, not the watch's
                if job.status in JOB_TERMINAL:
                    node = job.error.node_id if job.error is not None else None
                    return _outcome(board, job_id, job.status, node)
                board.add(job_id, job.status)
                event = await wait_for(
                    backend, "job", job_id, timeout=timeout, on_progress=board.on_progress
                )
            except ComfyError as exc:
                board.finish(job_id, "error")
                return _short(exc)
            node = (event.payload.get("error") or {}).get("node_id")
            return _outcome(board, job_id, event.event.removeprefix("job."), node)

        return dict(zip(job_ids, await asyncio.gather(*(one(j) for j in job_ids)), strict=True))


def _outcome(board: JobBoard, job_id: str, status: str, node: str | None) -> str:
    """Show a job's end on its row; ``""`` for completed, else what happened (and where)."""
    where = f"at node {node}" if node else ""
    board.finish(job_id, status, where)
    return "" if status == "completed" else f"{status} {where}".rstrip()


def _short(exc: ComfyError) -> str:
    if isinstance(exc, JobFailed):
        return f"failed at node {exc.node_id}" if exc.node_id else "failed"
    return str(exc)


def outputs(
    job_id: Annotated[str, typer.Argument(help="The job id.", metavar="ID", show_default=False)],
    out: OutOption = Path(DEFAULT_OUT),
    block: BlockOption = None,
) -> None:
    """Download the outputs of a completed job; prints their paths, one a line."""
    checked_ids([job_id])
    check_out_folder(out)
    for path in asyncio.run(_outputs(job_id, out, block)):
        typer.echo(str(path))


async def _outputs(job_id: str, out: Path, block: str | None) -> list[Path]:
    async with await backend_for(block) as backend:
        job = await backend.get_job(job_id)
        if job.status != "completed":
            hint = (
                f"wait for it with 'prefect-comfy jobs watch {job_id}'"
                if job.status not in JOB_TERMINAL
                else "only a completed job has outputs"
            )
            raise UsageProblem(f"Job {job_id} is {job.status}: {hint}")
        return await download_all(backend, job_id, out)
