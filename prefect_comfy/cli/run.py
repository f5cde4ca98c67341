"""``prefect-comfy run WORKFLOW.json``: submit, show live progress, download the outputs.

Two ways, one output:

- directly (``--no-prefect``, or no Prefect API configured): the backend submits, waits on the
  event stream with the bars as its ``on_progress`` callback, and downloads;
- as a Prefect flow run of ``run_comfy_workflow`` when a Prefect API is configured (see
  :mod:`prefect_comfy.cli.flow_run`), with the run's UI link.

Ctrl-C cancels the Comfy job either way: directly, here; in a flow run, the flow's own cleanup.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_comfy.cli.connect import BlockOption, backend_for, prefect_api_url
from prefect_comfy.cli.errors import Interrupted
from prefect_comfy.cli.progress import JobBoard
from prefect_comfy.cli.validate import WorkflowArgument, read_workflow
from prefect_comfy.exceptions import JobCancelled, JobFailed, JobTimedOut
from prefect_comfy.waiting.waits import wait_for

DEFAULT_OUT = "comfy-outputs"
"""Where ``run`` and ``outputs`` save files unless ``--out`` says otherwise."""

OutOption = Annotated[
    Path,
    typer.Option(
        "--out", "-o", help="Folder to save the outputs in (created if needed).", metavar="DIR"
    ),
]


def run(
    ctx: typer.Context,
    workflow: WorkflowArgument,
    out: OutOption = Path(DEFAULT_OUT),
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", "-t", help="Tag for the Comfy job (repeat for several).", metavar="TAG"
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            help="Seconds to wait for the job; then it is cancelled. Default: no limit.",
            metavar="SECONDS",
            min=0,
            show_default=False,
        ),
    ] = None,
    no_prefect: Annotated[
        bool,
        typer.Option(
            "--no-prefect", help="Run without Prefect even when a Prefect API is configured."
        ),
    ] = False,
    block: BlockOption = None,
) -> None:
    """Run a workflow: submit it, show its progress live, download its outputs.

    With a Prefect API configured (PREFECT_API_URL) the run is a Prefect flow run of
    run_comfy_workflow and its UI link is printed. Ctrl-C cancels the Comfy job. The outputs' paths
    are printed on stdout, one a line.
    """
    graph = read_workflow(workflow)
    tags = list(dict.fromkeys(tag or []))
    board = JobBoard()
    if not no_prefect and prefect_api_url():
        from prefect_comfy.cli.flow_run import run_as_flow

        board.console.print("Starting a Prefect flow run…")  # Prefect takes seconds to start
        debug = bool(ctx.find_root().params.get("debug"))
        job_id, status, paths = run_as_flow(graph, block, out, tags, timeout, board, debug=debug)
    else:
        job_id, status, paths = asyncio.run(_run_direct(graph, block, out, tags, timeout, board))
    board.console.print(f"Job {job_id} {status}: {len(paths)} output(s) in {out}")
    for path in paths:
        typer.echo(str(path))


async def _run_direct(
    graph: dict[str, Any],
    block: str | None,
    out: Path,
    tags: list[str],
    timeout: float | None,
    board: JobBoard,
) -> tuple[str, str, list[Path]]:
    """Submit, wait and download in this process; Ctrl-C (SIGINT) cancels the job."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        async with await backend_for(block) as backend:
            return await _submit_and_wait(backend, graph, out, tags, timeout, board)
    except asyncio.CancelledError:
        raise Interrupted("Interrupted") from None
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _submit_and_wait(
    backend: Any,
    graph: dict[str, Any],
    out: Path,
    tags: list[str],
    timeout: float | None,
    board: JobBoard,
) -> tuple[str, str, list[Path]]:
    key = str(uuid.uuid4())  # a repeat after Ctrl-C finds the same job, to cancel it
    job = None
    started = time.monotonic()
    with board:
        try:
            job = await backend.submit(graph, tags=tags, idempotency_key=key)
            board.add(job.id, job.status)
            event = await wait_for(
                backend, "job", job.id, timeout=timeout, on_progress=board.on_progress
            )
        except JobTimedOut:
            await backend.cancel(job.id)
            board.finish(job.id, "cancelled", f"(--timeout {timeout:g} s)")
            raise
        except asyncio.CancelledError:
            job = job or await backend.submit(graph, tags=tags, idempotency_key=key)
            cancelled = await backend.cancel(job.id)
            board.finish(job.id, "cancelled", "(Ctrl-C)")
            raise Interrupted(
                f"Interrupted: asked Comfy to cancel job {job.id} (now {cancelled.status})"
            ) from None
        status = event.event.removeprefix("job.")
        if status == "failed":
            error = event.payload.get("error") or {}
            node = error.get("node_id")
            where = f"at {graph[node]['class_type']} #{node}" if node in graph else ""
            board.finish(job.id, "failed", where)
            raise JobFailed(
                job.id,
                error_code=error.get("code") or error.get("type"),
                error_message=error.get("message"),
                node_id=node,
            )
        if status == "cancelled":
            board.finish(job.id, "cancelled")
            raise JobCancelled(job.id)
        board.finish(job.id, status, f"in {time.monotonic() - started:.1f} s")
    paths = await download_all(backend, job.id, out)
    return job.id, status, paths


async def download_all(backend: Any, job_id: str, out: Path) -> list[Path]:
    """Download every output of a finished job into ``out``; return the files' paths."""
    outputs = await backend.outputs(job_id)
    out.mkdir(parents=True, exist_ok=True)
    return [await backend.download(output, out) for output in outputs]
