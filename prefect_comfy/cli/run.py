"""``prefect-comfy run WORKFLOW.json``: submit, show live progress, download the outputs.

Two ways, one output:

- directly (``--no-prefect``, or no Prefect API configured): the backend submits, waits on the
  event stream with the bars as its ``on_progress`` callback, and downloads;
- as a Prefect flow run of ``run_comfy_workflow`` when a Prefect API is configured (see
  `prefect_comfy.cli.flow_run`), with the run's UI link.

Ctrl-C cancels the Comfy job either way: directly, here; in a flow run, the flow's own cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_comfy.cli.connect import BlockOption, backend_for, prefect_api_url
from prefect_comfy.cli.errors import Interrupted, UsageProblem, interrupted_download
from prefect_comfy.cli.progress import JobBoard
from prefect_comfy.cli.validate import SetOption, WorkflowArgument, parse_sets, read_workflow
from prefect_comfy.exceptions import JobCancelled, JobFailed, JobTimedOut
from prefect_comfy.waiting.waits import submit_connected, wait_for

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals that stop ``run`` the way Ctrl-C does (a closed terminal, ``kill``): the Comfy job is
cancelled and a flow run ends Cancelled, instead of both being left running."""


@contextlib.contextmanager
def interrupted_by(signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    """While inside, each of ``signals`` raises KeyboardInterrupt in the main thread, as Ctrl-C does."""
    previous = {signum: signal.signal(signum, signal.default_int_handler) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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
    sets: SetOption = None,
    block: BlockOption = None,
    previews: Annotated[
        Path | None,
        typer.Option(
            "--previews",
            help="Folder to write the newest live preview image in while the job runs "
            "(preview.jpg or preview.png, overwritten; created if needed). ComfyUI sends "
            "previews when started with --preview-method latent2rgb or taesd.",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a workflow: submit it, show its progress live, download its outputs.

    The workflow may be in API format, in the editor's save format (converted with the server's
    node catalog) or a PNG ComfyUI saved; --set changes inputs by name. The seeds used are
    printed, to make the same outputs again with --set.

    With a Prefect API configured (PREFECT_API_URL) the run is a Prefect flow run of
    run_comfy_workflow and its UI link is printed. Ctrl-C (or SIGTERM, SIGHUP: a closed terminal)
    cancels the Comfy job. The outputs' paths
    are printed on stdout, one a line.
    """
    loaded = read_workflow(workflow)
    inputs = parse_sets(sets)
    check_out_folder(out)  # before the job runs: a folder that cannot take its outputs is said now
    tags = list(dict.fromkeys(tag or []))
    if previews is not None:
        check_out_folder(previews, "--previews")
    board = JobBoard(previews=previews)
    if not no_prefect and prefect_api_url():
        from prefect_comfy.cli.flow_run import run_as_flow

        board.console.print("Starting a Prefect flow run…")  # Prefect takes seconds to start
        debug = bool(ctx.find_root().params.get("debug"))
        with interrupted_by(STOP_SIGNALS):
            job_id, status, paths, seeds = run_as_flow(
                loaded, block, out, tags, timeout, board, debug=debug, inputs=inputs
            )
    else:
        job_id, status, paths, seeds = asyncio.run(
            _run_direct(loaded, inputs, block, out, tags, timeout, board)
        )
    if seeds:
        shown = " ".join(f'--set "{k}={v}"' for k, v in seeds.items())
        board.console.print(f"Seeds: {shown}")
    board.console.print(f"Job {job_id} {status}: {len(paths)} output(s) in {out}")
    for path in paths:
        typer.echo(str(path))


async def _run_direct(
    workflow: dict[str, Any],
    inputs: dict[str, Any],
    block: str | None,
    out: Path,
    tags: list[str],
    timeout: float | None,
    board: JobBoard,
) -> tuple[str, str, list[Path], dict[str, int]]:
    """Prepare, submit, wait and download in this process; Ctrl-C (SIGINT) cancels the job."""
    from prefect_comfy.orchestration.prepare import prepare_workflow

    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    for signum in (signal.SIGINT, *STOP_SIGNALS):
        loop.add_signal_handler(signum, task.cancel)
    try:
        async with await backend_for(block) as backend:
            prepared = await prepare_workflow(backend, workflow, inputs)
            found = await _submit_and_wait(backend, prepared.graph, out, tags, timeout, board)
            return (*found, prepared.seeds)
    except asyncio.CancelledError:
        raise Interrupted("Interrupted") from None
    finally:
        for signum in (signal.SIGINT, *STOP_SIGNALS):
            loop.remove_signal_handler(signum)


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
            # Connected first, so that a warm server's news of cached nodes reaches the bar.
            job, covered = await submit_connected(backend, graph, tags=tags, idempotency_key=key)
            board.add(job.id, job.status)
            event = await wait_for(
                backend,
                "job",
                job.id,
                timeout=timeout,
                on_progress=board.progress_callback(),
                covered_since=covered,
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


def check_out_folder(out: Path, option: str = "--out") -> None:
    """Make ``out`` (and its parents) and prove a file can be written there.

    Raises:
        UsageProblem: ``out`` is a file, is under a file, or cannot be written (one line).
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".prefect-comfy-check-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = "is a file" if out.is_file() else (exc.strerror or type(exc).__name__).lower()
        raise UsageProblem(
            f"{option} {out}: {why}; choose a folder you can write to (it is created if needed)"
        ) from None


async def download_all(backend: Any, job_id: str, out: Path) -> list[Path]:
    """Download every output of a finished job into ``out``; return the files' paths.

    Each file is written whole or not at all. Ctrl-C (a cancel) during the downloads keeps the
    files already downloaded, prints their paths, and says what happened.

    Raises:
        Interrupted: Ctrl-C stopped the downloads (the message counts what was kept).
    """
    outputs = await backend.outputs(job_id)
    check_out_folder(out)
    paths: list[Path] = []
    try:
        for output in outputs:
            paths.append(await backend.download(output, out))
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise interrupted_download(job_id, out, paths, len(outputs)) from None
    return paths
