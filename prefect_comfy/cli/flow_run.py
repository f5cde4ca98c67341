"""``prefect-comfy run`` as a Prefect flow run of ``run_comfy_workflow``, with live bars.

The flow runs in this thread, as any flow called from Python. An ``on_running`` hook learns the
flow run, prints its UI link and starts a watcher thread, which reads the job id from the flow-run
label ``comfy.job-id`` (``run_comfy_workflow`` sets it as soon as the job is submitted, for its
cancellation hook) and then waits on the job's event stream with the bars as ``on_progress``.
Ctrl-C interrupts the flow, whose own cleanup cancels the Comfy job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect_comfy.cli.connect import credentials_for
from prefect_comfy.cli.errors import Interrupted, interrupted_download
from prefect_comfy.cli.progress import JobBoard
from prefect_comfy.cli.verbosity import verbosity
from prefect_comfy.transport.threads import start_thread
from prefect_comfy.waiting.waits import wait_for

JOB_ID_LABEL = "comfy.job-id"
"""The flow-run label that names the Comfy job (documented in `prefect_comfy.orchestration.flows`)."""

LABEL_POLL = 0.2
"""Seconds between two reads of the flow run while its job is not yet submitted."""


class FlowRunWatcher:
    """Follows the Comfy job of the flow run it is hooked into, on a board of progress bars."""

    def __init__(self, credentials: Any, board: JobBoard) -> None:
        self.credentials = credentials
        self.board = board
        self.flow_run_id: str | None = None
        self.job_id: str | None = None
        self.ui_url: str | None = None
        self.outcome: str | None = None
        """The job's terminal event (``job.completed`` …) once the watcher saw it."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_running(self, flow: Any, flow_run: Any, state: Any) -> None:
        """The flow's ``on_running`` hook: print the run's link, start watching."""
        from prefect.utilities.urls import url_for

        self.flow_run_id = str(flow_run.id)
        self.ui_url = url_for(flow_run)
        self.board.console.print(
            f"Prefect flow run {flow_run.name}: {self.ui_url or self.flow_run_id}"
        )
        # In this thread's context: it holds the Prefect settings (the API URL) of the caller.
        self._thread = start_thread(asyncio.run, self._watch(), name="comfy-cli-watch")

    def stop(self, timeout: float = 5.0) -> None:
        """End the watcher (the flow is over) and wait a little for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def finish(self, status: str, detail: str = "") -> None:
        """Stop watching and show the flow's outcome on the job's row (if the job was seen)."""
        self.stop()
        if self.job_id is not None:
            self.board.finish(str(self.job_id), status, detail)

    async def _watch(self) -> None:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            while self.job_id is None and not self._stop.is_set():
                with contextlib.suppress(Exception):  # a missed read is tried again
                    run = await client.read_flow_run(self.flow_run_id)
                    self.job_id = (run.labels or {}).get(JOB_ID_LABEL)
                if self.job_id is None:
                    await asyncio.sleep(LABEL_POLL)
        if self.job_id is None:
            return
        self.board.add(str(self.job_id), "submitted")
        async with self.credentials.get_backend() as backend:
            wait = asyncio.ensure_future(
                wait_for(
                    backend, "job", str(self.job_id), on_progress=self.board.progress_callback()
                )
            )
            while not wait.done() and not self._stop.is_set():
                await asyncio.wait({wait}, timeout=LABEL_POLL)
            if not wait.done():
                wait.cancel()
            # The watcher's own wait only: its outcome, or nothing when it was cancelled or failed
            # (the flow run says what happened); a cancellation of this task itself goes on.
            await asyncio.wait({wait})
            if not wait.cancelled() and wait.exception() is None:
                self.outcome = wait.result().event
                if self.outcome == "job.completed":  # full now, not once the downloads are done
                    self.board.finish(str(self.job_id), "completed")


def _whole(path: Path, out: Path) -> bool:
    """Not a download's temporary file (a file is renamed into place once whole)."""
    return not any(part.startswith(".") for part in path.relative_to(out).parts)


class _Chatter(logging.Filter):
    """Quiet by default (``level`` 0): of Prefect's console lines, only warnings and errors (the
    bar, the link and the result say the rest; the Prefect server still gets every line).

    At level 1 (``-v``), the INFO lines too, but for those the terminal shows already: the engine's
    lines about running the watcher's hook, the run's "View at URL" (the watcher prints the link
    once, with the run's name), and the job's progress milestones (the live bar says the same).
    At level 2 (``-vv``), every line.
    """

    def __init__(self, level: int, milestone_format: str | None = None) -> None:
        super().__init__()
        self.level = level
        self.milestone_format = milestone_format

    def filter(self, record: logging.LogRecord) -> bool:
        if self.level >= 2:
            return True
        if self.level == 0:
            return record.levelno >= logging.WARNING
        if str(record.msg).startswith("View at ") or record.msg == self.milestone_format:
            return False
        if record.name != "prefect.engine":
            return True
        return not str(record.msg).startswith(("Running hook", "Hook "))


class _BarFirst(logging.Filter):
    """When the run says its job completed, the job's bar is filled first, so that the line never
    shows above a bar still a step short: the bar follows its own wait on the job's events, which
    the flow's wait may have seen the end of first."""

    def __init__(self, board: JobBoard, completed_format: str) -> None:
        super().__init__()
        self.board = board
        self.completed_format = completed_format

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.completed_format and isinstance(record.args, tuple) and record.args:
            self.board.finish(str(record.args[0]), "completed")
            # Drawn now: a redraw of the bar begun before (in the bar's own thread) ends first.
            self.board.refresh()
        return True


class _RunErrors(logging.Filter):
    """Drops the failure lines of flow and task runs (tracebacks, "Finished in state Failed"):
    the caller says what failed in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
            return True
        failed = str(record.msg).startswith("Finished in state Failed")
        return not (record.levelno >= logging.ERROR or failed)


@contextlib.contextmanager
def prefect_logs_through(
    board: JobBoard, *, hide_run_errors: bool = False, level: int = 1
) -> Iterator[None]:
    """Print Prefect's console log lines through the board's console (above its live bars, not
    across them): at ``level`` 0 only warnings and errors, at 1 the INFO lines the terminal does
    not show already, at 2 all (`_Chatter`).

    With ``hide_run_errors``, the ERROR lines of flow and task runs (a failure's tracebacks) are
    left out of the terminal; the Prefect server still gets them, and the UI shows them.
    """
    from prefect.logging.handlers import PrefectConsoleHandler

    from prefect_comfy.orchestration.sensor import COMPLETED_LOG, MILESTONE_LOG

    console = board.console
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    saved = [h.console for h in handlers]
    filters: list[logging.Filter] = [
        _BarFirst(board, COMPLETED_LOG),
        _Chatter(level, MILESTONE_LOG),
    ]
    filters += [_RunErrors()] if hide_run_errors else []
    for handler in handlers:
        handler.console = console
        for one in filters:
            handler.addFilter(one)
    try:
        yield
    finally:
        for handler, previous in zip(handlers, saved, strict=True):
            handler.console = previous
            for one in filters:
                handler.removeFilter(one)


def run_as_flow(
    graph: dict[str, Any],
    block: str | None,
    out: Path,
    tags: list[str],
    timeout: float | None,
    board: JobBoard,
    *,
    debug: bool = False,
    inputs: dict[str, Any] | None = None,
) -> tuple[str, str, list[Path], dict[str, int]]:
    """Run ``run_comfy_workflow`` with live bars; returns the job id, its status, the files and the seeds.

    The run's own error lines (tracebacks) stay in Prefect unless ``debug``: the command's one-line
    error says what failed.
    """
    from prefect import tags as prefect_tags
    from prefect.exceptions import TerminationSignal

    from prefect_comfy import JobFailed, OutcomeError, run_comfy_workflow

    credentials = asyncio.run(credentials_for(block))
    watcher = FlowRunWatcher(credentials, board)
    flow = run_comfy_workflow.with_options(on_running=[watcher.on_running])
    with board, prefect_logs_through(board, hide_run_errors=not debug, level=verbosity()):
        try:
            with prefect_tags(*tags):  # the flow run carries the tags too, not only the job
                result = flow(
                    credentials,
                    graph,
                    inputs=inputs or None,
                    tags=tags,
                    output_dir=str(out),
                    timeout=timeout,
                )
        except (KeyboardInterrupt, TerminationSignal):  # Ctrl-C; SIGTERM inside Prefect's engine
            if watcher.outcome == "job.completed" and watcher.job_id:  # it was downloading
                watcher.stop()
                kept = sorted(p for p in out.rglob("*") if p.is_file() and _whole(p, out))
                raise interrupted_download(str(watcher.job_id), out, kept, None) from None
            watcher.finish("cancelled", "(Ctrl-C)")
            if watcher.flow_run_id:
                asyncio.run(_mark_cancelled(watcher.flow_run_id))
            what = (
                f"the flow run cancelled Comfy job {watcher.job_id}"
                if watcher.job_id
                else "the flow run was cancelled before it submitted a Comfy job"
            )
            raise Interrupted(
                f"Interrupted: {what}" + (f"; see {watcher.ui_url}" if watcher.ui_url else "")
            ) from None
        except OutcomeError as exc:
            status = getattr(exc, "status", None) or "failed"
            detail = f"at node {exc.node_id}" if isinstance(exc, JobFailed) and exc.node_id else ""
            watcher.finish(status, detail)
            raise
        except BaseException:
            watcher.stop()
            raise
        watcher.finish(result.status)
    paths = [Path(f.path) for f in result.outputs]
    return result.job_id, result.status, paths, dict(result.seeds)


async def _mark_cancelled(flow_run_id: str) -> None:
    """The user stopped the run (Ctrl-C, SIGTERM, SIGHUP) and its Comfy job was cancelled: the run
    ends Cancelled, not Crashed as Prefect's engine leaves an interrupted run."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    try:
        async with get_client() as client:
            await client.set_flow_run_state(
                flow_run_id,
                Cancelled(message="Stopped by the user (Ctrl-C or a signal)"),
                force=True,
            )
    except Exception as exc:  # the line that says the job was cancelled matters more
        logging.getLogger(__name__).warning(
            "could not mark flow run %s Cancelled: %s", flow_run_id, exc
        )
