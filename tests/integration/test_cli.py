"""The ``prefect-comfy`` command line, driven in subprocesses against the session's emulator.

Every command: its exit code, what it prints, and that the API key is never printed. ``run``: its
outputs, a failure in one line, Ctrl-C (SIGINT) cancelling the Comfy job, and its live progress bar
in a pseudo-terminal. (Blocks and Prefect flow runs: ``test_cli_prefect.py``.)
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.cli import build_app
from tests.support.cli import (
    CLI,
    cli,
    command_paths,
    env_for,
    error_lines,
    job,
    running_jobs,
    status_is,
    write_json,
)
from tests.support.keys import API_KEY, WRONG_KEY
from tests.support.terminal import run_in_terminal
from tests.support.waiting import eventually, scaled
from tests.support.workflows import failing_workflow, slow_workflow, tiny_workflow

TYPE_TAG = re.compile(r"<(?:str|bool|int|float|path|list\[[^\]]*\]|[a-z ]+ range)>")


async def submit(emulator: Any, workflow: dict[str, Any], *tags: str) -> str:
    async with CloudBackend(API_KEY, emulator.url) as backend:
        return (await backend.submit(workflow, tags=list(tags))).id


# -- help and version ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "top")
def test_every_help_screen_names_values_without_type_tags(path: list[str]) -> None:
    args = [*path, "--help"]
    result = CliRunner().invoke(
        build_app(args), args, prog_name="prefect-comfy", env={"COLUMNS": "120"}
    )
    assert result.exit_code == 0, result.output
    assert "Usage: prefect-comfy" in result.output
    assert not TYPE_TAG.search(result.output), result.output
    options = re.findall(r"│ (--[a-z-]+)[^│]*│", result.output)
    for line in result.output.splitlines():  # every option says what it does
        if line.startswith("│ --") and "--help" not in line:
            assert len(line.split()) > 3, line
    assert options or path[:1] in (["jobs"], ["upload"], ["blocks"]) or not path


def test_version_prints_the_package_and_prefect_versions(emulator) -> None:
    done = cli("--version", env=env_for(emulator))
    assert done.returncode == 0
    assert re.fullmatch(r"prefect-comfy \S+ \(prefect 3\.\S+, Python 3\.\d+\.\d+\)\n", done.stdout)


# -- run -------------------------------------------------------------------------------------------
def test_run_downloads_the_outputs_and_prints_their_paths(emulator, tmp_path: Path) -> None:
    workflow = write_json(tmp_path / "wf.json", tiny_workflow("clirun"))
    done = cli("run", str(workflow), "--out", str(tmp_path / "out"), "--no-prefect", "-t", "cli",
               env=env_for(emulator))  # fmt: skip
    assert done.returncode == 0, done.stderr
    paths = [Path(line) for line in done.stdout.splitlines()]
    assert len(paths) == 1 and paths[0].parent == tmp_path / "out"
    assert paths[0].read_bytes().startswith(b"\x89PNG")
    assert re.search(r"Job job_\w+ completed: 1 output\(s\)", done.stderr)


def test_run_reports_a_failed_job_in_one_line_with_its_node(emulator, tmp_path: Path) -> None:
    workflow = write_json(tmp_path / "fail.json", failing_workflow("out of VRAM", code="oom"))
    done = cli("run", str(workflow), "--no-prefect", env=env_for(emulator), cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in error_lines(done.stderr) if line.startswith("Error:")]
    assert len(errors) == 1
    assert re.fullmatch(
        r"Error: Comfy job job_\w+ failed at node 1: \[oom\] out of VRAM", errors[0]
    )


def test_debug_adds_the_traceback(emulator, tmp_path: Path) -> None:
    done = cli("run", str(tmp_path / "missing.json"), "--debug", env=env_for(emulator))
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.rstrip().endswith(
        f"Error: No workflow file at '{tmp_path / 'missing.json'}'"
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"nodes": [], "links": [], "version": 0.4}, "save-format workflow has no nodes"),
        ("[1, 2, 3]", "A workflow must be a non-empty dict"),
        ('{"1": {"class_type": "EmptyImage", "inputs": {"width": NaN}}}', "NaN is not valid JSON"),
        ("{not json", "is not JSON: Expecting property name enclosed in double quotes"),
        ({"1": {"inputs": {}}}, "node 1: not a node with a class_type"),
    ],
    ids=["ui-format", "list", "nan", "not-json", "no-class"],
)  # fmt: skip
def test_a_bad_workflow_file_is_a_usage_error_before_any_request(
    emulator, tmp_path: Path, content: Any, expected: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    before = emulator.stats()
    for command in (["run", str(path), "--no-prefect"], ["validate", str(path)]):
        done = cli(*command, env=env_for(emulator))
        assert done.returncode == 2, done.stderr
        (line,) = error_lines(done.stderr)
        assert line.startswith(f"Error: {path}") and expected in line, line
    assert emulator.stats()["requests_total"] == before["requests_total"]


def test_missing_credentials_and_a_refused_key_are_one_line_each(emulator, tmp_path: Path) -> None:
    workflow = write_json(tmp_path / "wf.json", tiny_workflow())
    env = env_for(emulator)
    del env["COMFY_API_KEY"]
    done = cli("run", str(workflow), "--no-prefect", env=env)
    assert done.returncode == 2
    assert error_lines(done.stderr) == [
        "Error: No Comfy credentials: pass --url URL (any kind of server), --block NAME (a saved "
        "block), or set COMFY_API_KEY "
        "(and COMFY_BASE_URL for a server other than https://cloud.comfy.org)"
    ]
    done = cli("jobs", "list", env=env_for(emulator, COMFY_API_KEY=WRONG_KEY))
    assert done.returncode == 3
    assert len(error_lines(done.stderr)) == 1 and WRONG_KEY not in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=str)
async def test_ctrl_c_during_run_cancels_the_comfy_job(
    emulator, tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C, and SIGTERM and SIGHUP (a closed terminal, issue 17, 3.4), cancel the job."""
    tag = f"sigint-{uuid.uuid4().hex[:8]}"
    workflow = write_json(tmp_path / "slow.json", slow_workflow(400, step_seconds=0.05))
    process = subprocess.Popen(
        [*CLI, "run", str(workflow), "--no-prefect", "--tag", tag, "--out", str(tmp_path)],
        env=env_for(emulator), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        running = await eventually(
            lambda: running_jobs(emulator, tag), timeout=60, message="the CLI's job running"
        )
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=scaled(30))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert API_KEY not in stdout + stderr
    job_id = running[0].id
    assert f"Interrupted: asked Comfy to cancel job {job_id}" in stderr
    assert "Traceback" not in stderr
    assert (await job(emulator, job_id)).status == "cancelled"


def test_run_draws_a_live_progress_bar_in_a_terminal(emulator, tmp_path: Path) -> None:
    workflow = write_json(tmp_path / "slow.json", slow_workflow(30, step_seconds=0.05))
    env = env_for(emulator, TERM="xterm-256color", COLUMNS="120")
    del env["NO_COLOR"]
    code, text = run_in_terminal(  # the one terminal runner of the suite
        [*CLI, "run", str(workflow), "--no-prefect", "--out", str(tmp_path / "out")],
        env,
        timeout=90,
    )
    assert code == 0, text[-2000:]
    assert API_KEY not in text
    percents = {int(p) for p in re.findall(r"(\d+)%", text)}
    assert 100 in percents and len(percents) >= 3, (
        percents
    )  # redrawn as it ran, not only at the end
    assert "EmulatorSleep #3" in text and "━" in text
    assert re.search(r"step \d+/\d+", text)
    assert "completed" in text and str(tmp_path / "out") in text


def test_no_prefect_prints_no_prefect_telemetry_notice(emulator, tmp_path: Path) -> None:
    """Regression (issue 17, 3.6): a new user's first run in a terminal printed Prefect's notice."""
    env = env_for(emulator, TERM="xterm-256color", PREFECT_HOME=str(tmp_path / "fresh-home"))
    env.pop("DO_NOT_TRACK", None)
    workflow = write_json(tmp_path / "tiny.json", tiny_workflow())
    code, screen = run_in_terminal(
        [*CLI, "run", str(workflow), "--no-prefect", "--out", str(tmp_path / "out")], env
    )
    assert code == 0, screen[-2000:]
    assert "anonymous usage" not in screen and "telemetry" not in screen, screen


# -- jobs, outputs -------------------------------------------------------------------------------
async def test_jobs_list_get_cancel_and_outputs(emulator, tmp_path: Path) -> None:
    tag = f"jobs-{uuid.uuid4().hex[:8]}"
    done_id = await submit(emulator, tiny_workflow("listed"), tag)
    await eventually(lambda: status_is(emulator, done_id, "completed"), message="job completed")
    slow_id = await submit(emulator, slow_workflow(4000), tag)  # runs until cancelled
    env = env_for(emulator)

    listed = cli("jobs", "list", "--tag", tag, env=env)
    assert listed.returncode == 0, listed.stderr
    assert {done_id, slow_id} <= set(re.findall(r"job_\w+", listed.stdout))
    only_done = cli("jobs", "list", "--tag", tag, "--status", "completed", env=env)
    assert done_id in only_done.stdout and slow_id not in only_done.stdout

    shown = cli("jobs", "get", done_id, env=env)
    assert shown.returncode == 0 and shown.stdout.startswith(f"{done_id}  completed")
    assert "output   listed" in shown.stdout
    as_json = json.loads(cli("jobs", "get", done_id, "--json", env=env).stdout)
    assert as_json["id"] == done_id and as_json["status"] == "completed"

    early = cli("outputs", slow_id, env=env)
    assert early.returncode == 2
    assert f"wait for it with 'prefect-comfy jobs watch {slow_id}'" in early.stderr

    cancelled = cli("jobs", "cancel", slow_id, done_id, env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert re.search(
        rf"^{slow_id}  (cancelled|cancel requested \(was running)", cancelled.stdout, re.M
    )
    assert f"{done_id}  completed (it had ended already)" in cancelled.stdout
    await eventually(lambda: status_is(emulator, slow_id, "cancelled"), message="job cancelled")

    saved = cli("outputs", done_id, "--out", str(tmp_path / "o"), env=env)
    assert saved.returncode == 0, saved.stderr
    files = [Path(line) for line in saved.stdout.splitlines()]
    assert files and all(f.is_file() and f.parent == tmp_path / "o" for f in files)

    missing = cli("jobs", "get", "job_doesnotexist", env=env)
    assert missing.returncode == 1 and len(error_lines(missing.stderr)) == 1


async def test_jobs_watch_follows_several_jobs_and_fails_if_one_fails(emulator) -> None:
    ok = await submit(emulator, slow_workflow(10))
    bad = await submit(emulator, failing_workflow("watched failure"))
    done = cli("jobs", "watch", ok, bad, env=env_for(emulator))
    assert done.returncode == 1
    assert (
        error_lines(done.stderr)[-1]
        == f"Error: 1 of 2 job(s) did not complete: {bad} failed at node 1"
    )
    assert (await job(emulator, ok)).status == "completed"
    failed_row = next(line for line in done.stderr.splitlines() if bad in line)
    assert "failed" in failed_row and "100%" not in failed_row  # issue 19.13
    again = cli("jobs", "watch", ok, env=env_for(emulator))
    assert again.returncode == 0, again.stderr
    assert re.search(rf"{ok}\s.*100%.*completed", again.stderr)


async def test_ctrl_c_during_jobs_watch_says_the_job_still_runs(emulator) -> None:
    """Issue 19.13: it exited with no word; it names the job, which goes on running."""
    slow = await submit(emulator, slow_workflow(4000))  # runs until cancelled
    before = emulator.stats()["ws_connections_total"]
    process = subprocess.Popen(
        [*CLI, "jobs", "watch", slow], env=env_for(emulator),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        await eventually(  # the watch has read the job and follows its events
            lambda: emulator.stats()["ws_connections_total"] > before,
            timeout=60, message="the watch's event stream open",
        )  # fmt: skip
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=scaled(30))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert error_lines(stderr)[-1] == (
        f"Stopped watching; still running on the server: {slow} (prefect-comfy jobs watch ID "
        "to watch again, jobs cancel ID to stop it)"
    )
    assert "Traceback" not in stderr
    assert (await job(emulator, slow)).status in ("pending", "running")
    async with CloudBackend(API_KEY, emulator.url) as backend:
        await backend.cancel(slow)


# -- uploads, validate -----------------------------------------------------------------------------
def test_upload_input_and_model_with_wait(emulator, tmp_path: Path) -> None:
    image = tmp_path / "ref.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    env = env_for(emulator)
    done = cli(
        "upload", "input", str(image), "--name", "cli-ref.png", "--wait", "-t", "cli", env=env
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^input inp_\w+ cli-ref\.png: ready$", done.stdout, re.M), done.stdout

    model = tmp_path / "tiny.safetensors"
    model.write_bytes(b"\0" * 128)
    done = cli("upload", "model", str(model), "--type", "lora", "--wait", env=env)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^model \S+ tiny\.safetensors: ready$", done.stdout, re.M), done.stdout

    wrong = cli("upload", "model", str(model), "--type", "sticker", env=env)
    assert wrong.returncode == 2 and "--type 'sticker' is not one of: checkpoint" in wrong.stderr
    absent = cli("upload", "input", str(tmp_path / "nope.png"), env=env)
    assert absent.returncode == 2 and "No file at" in absent.stderr


def test_validate_asks_the_server(emulator, tmp_path: Path) -> None:
    good = write_json(tmp_path / "good.json", tiny_workflow())
    done = cli("validate", str(good), env=env_for(emulator))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{good}: API-format graph with 2 nodes",
        "The server accepts it.",
    ]

    bad = write_json(tmp_path / "bad.json", {"1": {"class_type": "NoSuchNode", "inputs": {}}})
    done = cli("validate", str(bad), env=env_for(emulator))
    assert done.returncode == 2
    assert "node 1" in done.stderr and "NoSuchNode" in done.stderr
    assert re.fullmatch(
        rf"Error: The server refused {re.escape(str(bad))}: \d+ problem\(s\), above",
        done.stderr.rstrip().splitlines()[-1],
    )
    offline = cli("validate", str(bad), "--offline", env={**env_for(emulator), "COMFY_API_KEY": ""})
    assert offline.returncode == 0


@pytest.mark.parametrize("where", ["a-file", "a-file/under"])
def test_run_checks_its_output_folder_before_submitting(emulator, tmp_path: Path, where) -> None:
    """An --out that cannot take the outputs is said before the job runs (issue 20, #10)."""
    (tmp_path / "a-file").write_text("")
    workflow = write_json(tmp_path / "w.json", tiny_workflow("outcheck"))
    before = emulator.stats()
    done = cli(
        "run", str(workflow), "--no-prefect", "--out", str(tmp_path / where), env=env_for(emulator)
    )
    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done.stderr)
    assert line.startswith(f"Error: --out {tmp_path / where}") and "folder" in line, line
    assert emulator.stats()["requests_total"] == before["requests_total"]


@pytest.mark.parametrize(
    "command",
    [
        ["blocks", "create", "comfyui", "x", "--url", "not a url"],
        ["blocks", "create", "comfyui", "x", "--url", "ftp://host"],
        ["blocks", "create", "cloud", "x", "--base-url", "not a url"],
    ],
)
def test_blocks_create_refuses_a_url_that_is_not_one(emulator, command) -> None:
    """Nothing is saved for a URL no backend can use (issue 20, #12)."""
    env = env_for(emulator, PREFECT_API_URL="http://127.0.0.1:9/api")
    done = cli(*command, env=env)
    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done.stderr)
    assert "url" in line.lower() and "nothing was saved" in line, line
