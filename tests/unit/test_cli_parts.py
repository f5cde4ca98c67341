"""Unit tests of the command line's parts: the progress board, error lines and exit codes, and the
workflow file checks (the commands themselves run in subprocesses in tests/integration/test_cli.py).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from prefect_comfy.cli.errors import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Interrupted,
    UsageProblem,
    exit_code,
    one_line,
)
from prefect_comfy.cli.progress import JobBoard
from prefect_comfy.cli.validate import read_workflow
from prefect_comfy.exceptions import (
    AuthenticationError,
    ComfyConfigError,
    JobFailed,
    ServerError,
    WebSocketAuthError,
)
from prefect_comfy.models import ComfyEvent
from tests.support.memory import PNG, MemoryBackend


def progress(job_id: str, **payload: object) -> ComfyEvent:
    return ComfyEvent(event="job.progress", payload={"id": job_id, **payload})


def test_the_board_follows_progress_events_and_shows_the_outcome() -> None:
    out = io.StringIO()
    board = JobBoard(Console(file=out, width=120, force_terminal=False))
    with board:
        board.add("job_a", "pending")
        board.on_progress(progress("job_a", progress=12.5, node_id="3", node_class="KSampler",
                                   step=3, steps=25))  # fmt: skip
        assert board.row("job_a") == {
            "percent": 12.5, "node": "KSampler #3", "step": "step 3/25", "status": "running"
        }  # fmt: skip
        board.on_progress(progress("job_b", progress=250, node_id="9", steps=1))  # a new job
        assert board.row("job_b")["percent"] == 100.0 and board.row("job_b")["step"] == ""
        board.on_progress(ComfyEvent(event="job.progress", payload={}))  # no id: ignored
        board.finish("job_a", "completed", "in 1.0 s")
        board.finish("job_b", "failed", "at node 9")
    assert board.row("job_a")["percent"] == 100
    assert board.row("job_b")["status"] == "[red]failed[/] at node 9"
    text = out.getvalue()
    assert "job_a" in text and "completed in 1.0 s" in text and "failed at node 9" in text


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageProblem("bad"), EXIT_USAGE),
        (ComfyConfigError("no key"), EXIT_USAGE),
        (AuthenticationError("refused", status_code=401), EXIT_AUTH),
        (WebSocketAuthError("refused"), EXIT_AUTH),
        (JobFailed("job_1", error_code="oom", node_id="3"), EXIT_FAILED),
        (ServerError("down", status_code=503), EXIT_FAILED),
        (RuntimeError("bug"), EXIT_FAILED),
        (Interrupted("Interrupted"), EXIT_INTERRUPTED),
        (KeyboardInterrupt(), EXIT_INTERRUPTED),
    ],
)
def test_exit_codes_by_kind_of_error(error: BaseException, code: int) -> None:
    assert exit_code(error) == code


def test_one_line_joins_lines_names_foreign_errors_and_hides_the_key(monkeypatch) -> None:
    monkeypatch.setenv("COMFY_API_KEY", "comfyui-secret-123")
    assert one_line(ComfyConfigError("first\n\n  second ")) == "first; second"
    assert (
        one_line(ValueError("key comfyui-secret-123 leaked")) == "ValueError: key REDACTED leaked"
    )
    assert one_line(OSError()) == "OSError"
    assert len(one_line(ComfyConfigError("x" * 5000))) == 400


def test_read_workflow_accepts_an_api_format_graph(tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}, "2": {"class_type": "X"}}
    path.write_text(json.dumps(graph))
    assert read_workflow(path) == graph


def test_read_workflow_accepts_a_save_format_workflow(tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    path.write_text('{"nodes": [{"id": 1}], "links": []}')
    assert read_workflow(path) == {"nodes": [{"id": 1}], "links": []}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"nodes": []}', "save-format workflow has no nodes"),
        ("{}", "must be a non-empty dict"),
        ('{"1": {"class_type": "A", "inputs": [1]}}', "node 1 (A), input 'inputs': inputs must"),
        ('{"1": {"class_type": "A", "inputs": {"x": Infinity}}}', "Infinity is not valid JSON"),
        ('{"1": {"class_type": "A", "inputs": {"x": 1e999}}}', "inf is not valid JSON"),
        (
            "\n\n  {",
            "is not JSON: Expecting property name enclosed in double quotes: line 3",
        ),
    ],
)
def test_read_workflow_refuses_what_no_server_runs(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "wf.json"
    path.write_text(text)
    with pytest.raises(UsageProblem, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_workflow(path)


def test_read_workflow_says_when_the_file_is_missing_or_binary(tmp_path: Path) -> None:
    with pytest.raises(UsageProblem, match="No workflow file at"):
        read_workflow(tmp_path / "absent.json")
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(UsageProblem, match="carries no ComfyUI workflow"):
        read_workflow(binary)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"1": {"class_type": "A", "inputs": {"t": "\xe9"}}}'.encode("latin-1"))
    with pytest.raises(UsageProblem, match="is not UTF-8 text"):
        read_workflow(latin1)


async def test_ctrl_c_during_downloads_keeps_the_whole_files_and_says_so(tmp_path, capsys) -> None:
    """Ctrl-C while a completed job's outputs download (issue 20, #11)."""
    import asyncio

    from prefect_comfy.cli.errors import Interrupted
    from prefect_comfy.cli.run import download_all
    from prefect_comfy.models import Output

    backend = MemoryBackend()
    outputs = [Output(id=f"o{i}", type="image", name=f"o{i}.png") for i in range(4)]
    backend.server.add_job("job_1", "completed", outputs=outputs)
    backend.server.fail("download", asyncio.CancelledError(), only="o2")  # Ctrl-C
    with pytest.raises(Interrupted) as caught:
        await download_all(backend, "job_1", tmp_path / "out")
    message = str(caught.value)
    assert "job_1 completed" in message and "2 of 4" in message, message
    assert "prefect-comfy outputs job_1" in message
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "out" / "o0.png"), str(tmp_path / "out" / "o1.png")]
    assert all(Path(p).read_bytes() == PNG for p in printed)


@pytest.mark.parametrize("command", ["get", "cancel", "watch"])
@pytest.mark.parametrize("bad", ["../../x", "..", "a/b", "job 1", ""])
def test_a_job_id_that_no_server_makes_is_said_to_be_invalid(command, bad, capsys) -> None:
    """Not '401 missing API key' (issue 20, #16)."""
    from prefect_comfy.cli import main

    with pytest.raises(SystemExit) as caught:
        main(["jobs", command, bad])
    assert caught.value.code == 2
    assert "is not a job id" in capsys.readouterr().err


def test_real_job_ids_pass_the_check() -> None:
    from prefect_comfy.cli.jobs import checked_ids

    ids = ["job_abc123", "5f0c7a1e-2b1c-4d4e-9f00-0123456789ab", "j1.v2:x"]
    assert checked_ids(ids) == ids


# -- workflow files (issue 20, #14) -----------------------------------------------------------------
def test_a_deeply_nested_workflow_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UsageProblem, match="nested too deeply"):
        read_workflow(path)


def test_a_huge_workflow_file_is_refused_before_it_is_read(tmp_path, monkeypatch) -> None:
    from prefect_comfy.cli import validate

    path = tmp_path / "big.json"
    path.write_text('{"1": {"class_type": "X", "inputs": {}}}' + " " * 2000)
    monkeypatch.setattr(validate, "MAX_WORKFLOW_BYTES", 1000)
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("read whole"))
    with pytest.raises(UsageProblem, match="at most"):
        read_workflow(path)


def test_a_workflow_file_with_a_byte_order_mark_is_read(tmp_path) -> None:
    from prefect_comfy.workflows.load import load_workflow

    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(graph).encode())
    assert read_workflow(path) == graph
    assert load_workflow(path) == graph


def test_a_large_body_cut_off_is_not_reported_as_could_not_reach() -> None:
    import httpx

    from prefect_comfy.exceptions import ComfyTransportError
    from prefect_comfy.transport.errors import translating_transport_errors

    request = httpx.Request("POST", "http://127.0.0.1:1/jobs", content=b"x" * (9 * 2**20))
    with (
        pytest.raises(ComfyTransportError) as caught,
        translating_transport_errors(request, [], "Comfy API"),
    ):
        raise httpx.WriteError("broken pipe")
    assert "Could not reach" not in str(caught.value)
    assert "9 MB body" in str(caught.value) and "refuses requests that large" in str(caught.value)


@pytest.mark.parametrize(
    ("argv", "lifted"),
    [
        (["blocks", "create", "v2", "n", "--url", "http://127.0.0.1:8189"], []),
        (["--debug", "blocks", "create", "comfyui", "n", "--url=http://h:1"], []),
        (["jobs", "list", "--url", "http://127.0.0.1:8188"], ["--url", "http://127.0.0.1:8188"]),
        (["--kind", "v2", "run", "wf.json"], ["--kind", "v2"]),
    ],
)
def test_blocks_keeps_its_own_url_option(argv, lifted) -> None:
    """`blocks create comfyui|v2 --url X` names the block's server: it was taken as the global
    --url, and the block was saved with the default (issue 19.10)."""
    from prefect_comfy.cli.connect import lift_server_options

    got, rest = lift_server_options(argv)
    assert got == lifted
    assert rest == [w for w in argv if w not in lifted]


def test_a_job_that_did_not_complete_never_shows_100_percent() -> None:
    """Issue 19.13: the last sampler step reads 100 %, and the job can still fail after it."""
    out = io.StringIO()
    board = JobBoard(Console(file=out, width=120, force_terminal=False))
    with board:
        for job_id in ("job_f", "job_c", "job_x"):
            board.on_progress(progress(job_id, progress=100.0, node_id="3", steps=1))
        board.finish("job_f", "failed", "at node 8")
        board.finish("job_c", "cancelled")
        board.finish("job_x", "completed")
        board.on_progress(progress("job_f", progress=100.0))  # a late event changes nothing
    assert board.row("job_f")["percent"] == 99 and board.row("job_c")["percent"] == 99
    assert board.row("job_f")["status"] == "[red]failed[/] at node 8"
    assert board.row("job_x")["percent"] == 100
    assert board.unfinished() == []
    failed_line = next(line for line in out.getvalue().splitlines() if "job_f" in line)
    assert "100%" not in failed_line and "99%" in failed_line


def test_the_elapsed_time_counts_from_the_jobs_creation() -> None:
    """Issue 19.13: `jobs watch` of a job made 75 s ago shows 0:01:15, not 0:00:00."""
    from datetime import UTC, datetime, timedelta

    out = io.StringIO()
    board = JobBoard(Console(file=out, width=120, force_terminal=False))
    with board:
        board.add("job_old", "running")
        board.add("job_new", "running")
        board.since("job_old", datetime.now(UTC) - timedelta(seconds=75))
        board.since("job_new", None)  # a server that gives no creation time: from now
        assert board.unfinished() == ["job_old", "job_new"]
    lines = out.getvalue().splitlines()
    assert "0:01:1" in next(line for line in lines if "job_old" in line)
    assert "0:00:0" in next(line for line in lines if "job_new" in line)


def test_listen_help_is_readable_at_80_columns(monkeypatch) -> None:
    """Issue 19.13: no option's name or help is cut with '…', no line is wider than 80."""
    from typer.testing import CliRunner

    from prefect_comfy.cli import build_app

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    app = build_app(["listen", "--help"])
    shown = CliRunner().invoke(app, ["listen", "--help"], prog_name="prefect-comfy")
    assert shown.exit_code == 0, shown.output
    assert "--no-cancel-suspended" in shown.output and "--events-per-second" in shown.output
    assert "…" not in shown.output
    assert max(len(line) for line in shown.output.splitlines()) <= 80


def test_board_writes_the_newest_preview_whole_and_leaves_the_bar_alone(tmp_path: Path) -> None:
    import base64

    board = JobBoard(Console(file=io.StringIO(), width=120), previews=tmp_path)
    board.add("job_1")
    board.on_progress(ComfyEvent(event="job.progress", payload={"id": "job_1", "progress": 40.0}))
    for image, mime in ((b"\xff\xd8old", "image/jpeg"), (b"\xff\xd8new", "image/jpeg")):
        payload = {"id": "job_1", "mime_type": mime, "image": base64.b64encode(image).decode()}
        board.on_progress(ComfyEvent(event="job.preview", payload=payload))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview.jpg"]
    assert (tmp_path / "preview.jpg").read_bytes() == b"\xff\xd8new"
    assert board.row("job_1")["percent"] == 40.0 and board.previews_written == 2
    JobBoard().on_progress(ComfyEvent(event="job.preview", payload=payload))  # no DIR: nothing


def test_a_ctrl_c_lost_in_a_callback_is_pressed_again(capsys) -> None:
    """Regression (a clean-clone run): Ctrl-C landed in importlib's module-lock weakref callback,
    Python printed "Exception ignored in: … KeyboardInterrupt" and the command ran to its end."""
    import sys
    import threading
    import weakref

    from prefect_comfy.cli import press_lost_ctrl_c_again
    from tests.support.waiting import scaled

    class Held:
        pass

    def callback(_ref: object) -> None:
        raise KeyboardInterrupt  # as a Ctrl-C that lands in the callback

    saved = sys.unraisablehook
    sys.unraisablehook = press_lost_ctrl_c_again
    try:
        held = Held()
        ref = weakref.ref(held, callback)
        with pytest.raises(KeyboardInterrupt):
            del held  # Python swallows the callback's KeyboardInterrupt: the hook presses it again
            threading.Event().wait(scaled(10))  # the command going on; Ctrl-C must stop it
    finally:
        sys.unraisablehook = saved
    assert ref() is None
    assert "Exception ignored" not in capsys.readouterr().err
