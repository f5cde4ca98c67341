"""The command line with a Prefect server: saved blocks, ``--block``, and ``run`` as a flow run.

Subprocesses against the session's emulator and the Prefect test harness; the key is never printed.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from tests.support.cli import (
    CLI,
    cli,
    env_for,
    error_lines,
    running_jobs,
    status_is,
    write_json,
)
from tests.support.keys import API_KEY, WRONG_KEY
from tests.support.terminal import run_in_terminal
from tests.support.waiting import eventually
from tests.support.workflows import failing_workflow, slow_workflow, tiny_workflow

pytestmark = pytest.mark.prefect


def prefect_env(emulator: Any, api_url: str, **extra: str) -> dict[str, str]:
    return env_for(emulator, PREFECT_API_URL=api_url, **extra)


def test_blocks_create_then_every_command_takes_block(emulator, prefect_api_url, tmp_path) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    env = prefect_env(emulator, prefect_api_url)
    done = cli("blocks", "create", "cloud", name, env=env)
    assert done.returncode == 0, done.stderr
    assert f'Saved ComfyCloudCredentials block "{name}" ({emulator.url})' in done.stdout
    assert "Using the API key in COMFY_API_KEY." in done.stderr

    again = cli("blocks", "create", "cloud", name, env=env)
    assert again.returncode == 2
    assert error_lines(again.stderr)[-1] == (
        f"Error: A block named {name!r} exists already; pass --overwrite to replace it"
    )

    keyless = {k: v for k, v in env.items() if not k.startswith("COMFY_")}
    workflow = write_json(tmp_path / "wf.json", tiny_workflow("byblock"))
    run = cli("run", str(workflow), "--no-prefect", "--block", name, "--out", str(tmp_path),
              env=keyless)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.splitlines()[0]).is_file()
    listed = cli("jobs", "list", "-b", name, env=keyless)
    assert listed.returncode == 0 and "job_" in listed.stdout
    # Loading the block emitted a Prefect event: sent before the exit, with no "Still processing".
    for done in (run, listed):
        assert "Still processing items" not in done.stderr, done.stderr


def test_block_commands_say_what_is_missing(emulator, prefect_api_url) -> None:
    env = prefect_env(emulator, prefect_api_url)
    missing = cli("jobs", "list", "--block", "no-such-block", env=env)
    assert missing.returncode == 2
    assert error_lines(missing.stderr) == [
        "Error: No saved ComfyCloudCredentials or ComfyUIServer or ComfyV2Credentials block is "
        f"named 'no-such-block' on {prefect_api_url}; save one with 'prefect-comfy blocks create "
        "KIND no-such-block' or with .save('no-such-block') in Python"
    ]
    no_prefect = cli("jobs", "list", "--block", "x", env=env_for(emulator))
    assert no_prefect.returncode == 2
    assert "--block x needs a Prefect server that holds the block" in no_prefect.stderr


def test_listen_with_a_missing_block_exits_2_in_one_line(emulator, prefect_api_url) -> None:
    done = cli("listen", "--block", "no-such-block", env=prefect_env(emulator, prefect_api_url))
    assert done.returncode == 2
    errors = [line for line in error_lines(done.stderr) if "Error" in line or "Traceback" in line]
    assert errors == [
        "Error: No saved ComfyCloudCredentials or ComfyUIServer or ComfyV2Credentials block is "
        f"named 'no-such-block' on {prefect_api_url}; save one with 'prefect-comfy blocks create "
        "KIND no-such-block' or with .save('no-such-block') in Python"
    ]


def test_blocks_create_comfyui_and_a_key_typed_at_the_hidden_prompt(
    emulator, prefect_api_url
) -> None:
    env = prefect_env(emulator, prefect_api_url)
    name = f"ui-{uuid.uuid4().hex[:8]}"
    done = cli("blocks", "create", "comfyui", name, "--url", "http://127.0.0.1:8188", "--no-check",
               env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f'Saved ComfyUIServer block "{name}" (http://127.0.0.1:8188)' in done.stdout

    del env["COMFY_API_KEY"]
    typed = "comfyui-typed-at-the-prompt"
    screen = _in_terminal(
        [*CLI, "blocks", "create", "cloud", f"{name}-c", "--no-check"], env, typed
    )
    assert "Comfy API key (not shown):" in screen
    assert typed not in screen and API_KEY not in screen
    assert f'Saved ComfyCloudCredentials block "{name}-c"' in screen


def test_blocks_create_checks_the_key_and_url_before_saving(emulator, prefect_api_url) -> None:
    """Issue 19.10: a wrong key or a dead URL is said at once and nothing is saved; --no-check saves."""
    env = prefect_env(emulator, prefect_api_url, COMFY_MAX_RETRIES="0")
    name = f"chk-{uuid.uuid4().hex[:8]}"
    after = "nothing was saved (--no-check saves it unchecked)"

    wrong = cli("blocks", "create", "cloud", name, env={**env, "COMFY_API_KEY": WRONG_KEY})
    assert wrong.returncode == 2, wrong.stderr
    (line,) = [x for x in error_lines(wrong.stderr) if x.startswith("Error:")]
    assert (
        line.startswith(f"Error: The server at {emulator.url} refused the key (") and after in line
    )
    assert WRONG_KEY not in wrong.stdout + wrong.stderr

    dead = "http://127.0.0.1:9"
    gone = cli("blocks", "create", "v2", name, "--url", dead, env=env)
    assert gone.returncode == 2
    assert error_lines(gone.stderr)[-1].startswith(f"Error: Could not reach {dead} (")
    unchecked = cli("blocks", "create", "v2", name, "--url", dead, "--no-check", env=env)
    assert unchecked.returncode == 0, unchecked.stderr
    assert "Checked:" not in unchecked.stderr

    checked = cli("blocks", "create", "cloud", name, env=env)
    assert checked.returncode == 0, checked.stderr
    assert f"Checked: {emulator.url} takes the key." in checked.stderr

    v2_env = {**env, "COMFY_V2_API_KEY": API_KEY, "COMFY_API_KEY": WRONG_KEY}
    v2 = cli("blocks", "create", "v2", name, "--url", emulator.url, "--overwrite", env=v2_env)
    assert v2.returncode == 0, v2.stderr
    assert "Using the API key in COMFY_V2_API_KEY." in v2.stderr
    assert f'Saved ComfyV2Credentials block "{name}" ({emulator.url})' in v2.stdout
    from prefect_comfy import ComfyCloudCredentials, ComfyV2Credentials

    saved = ComfyV2Credentials.load(name, _sync=True)
    assert saved.endpoint == emulator.url and saved.api_key.get_secret_value() == API_KEY
    assert ComfyCloudCredentials.load(name, _sync=True).base_url == emulator.url


def _in_terminal(command: list[str], env: dict[str, str], answer: str) -> str:
    """Run ``command`` on a pseudo-terminal that is its controlling terminal (as a shell's is, so
    that a hidden prompt can turn echo off), type ``answer`` at its prompt; return the screen."""
    pid, main = pty.fork()
    if pid == 0:  # the child: exec at once, nothing else
        os.execve(command[0], command, env)
    screen, answered = b"", False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if not select.select([main], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
            # the prompt's last character comes from getpass, once it has turned echo off
            if not answered and b"(not shown): " in screen:
                os.write(main, answer.encode() + b"\n")
                answered = True
    finally:
        ended, status = os.waitpid(pid, os.WNOHANG)
        if not ended:  # still running after the deadline
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        os.close(main)
    assert answered and os.waitstatus_to_exitcode(status) == 0, screen.decode(errors="replace")
    return screen.decode(errors="replace")


async def test_run_as_a_prefect_flow_run_prints_its_link(
    emulator, prefect_api_url, tmp_path
) -> None:
    env = prefect_env(emulator, prefect_api_url)
    workflow = write_json(tmp_path / "wf.json", tiny_workflow("asflow"))
    tag = f"poster-{uuid.uuid4().hex[:6]}"
    done = cli("run", str(workflow), "--out", str(tmp_path / "out"), "--tag", tag, "-v", env=env,
               timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    link = re.search(
        r"Prefect flow run [\w-]+: http://\S+/runs/flow-run/([0-9a-f-]{36})", done.stderr
    )
    assert link
    assert done.stderr.count(link[1]) == 1, done.stderr[-3000:]  # the link once
    (path,) = done.stdout.splitlines()
    assert Path(path).parent == tmp_path / "out" and Path(path).is_file()
    # -v: the run's INFO lines, Prefect's and the package's own; its progress milestones go to
    # the Prefect server, not across the terminal's bar.
    assert "Waiting for Comfy job" in done.stderr
    assert "| INFO    | prefect_comfy." in done.stderr, done.stderr[-3000:]
    assert not re.search(r"Comfy job \S+: \d+%", done.stderr), done.stderr[-3000:]
    async with get_client() as client:  # --tag tags the flow run too, not only the Comfy job
        flow_run = await client.read_flow_run(uuid.UUID(link[1]))
    assert tag in flow_run.tags

    failing = write_json(tmp_path / "fail.json", failing_workflow("flow failure", code="oom"))
    done = cli("run", str(failing), env=env, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    # Quiet by default (issue 19, 5): the start, the link and the error; no log lines.
    assert "| INFO" not in done.stderr and "Finished in state" not in done.stderr, done.stderr
    errors = [line for line in error_lines(done.stderr) if line.startswith("Error:")]
    assert len(errors) == 1 and re.search(r"job_\w+ failed at node 1", errors[0]), done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=str)
async def test_ctrl_c_during_a_flow_run_cancels_the_comfy_job(
    emulator, prefect_api_url, tmp_path, signum
) -> None:
    """Ctrl-C, and SIGTERM and SIGHUP (a closed terminal, issue 17, 3.4): the job is cancelled
    and the flow run is not left Running."""
    tag = f"sigint-flow-{uuid.uuid4().hex[:8]}"
    workflow = write_json(tmp_path / "slow.json", slow_workflow(600, step_seconds=0.05))
    process = subprocess.Popen(
        [*CLI, "run", str(workflow), "--tag", tag, "--out", str(tmp_path)],
        env=prefect_env(emulator, prefect_api_url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        running = await eventually(
            lambda: running_jobs(emulator, tag), timeout=120, message="the flow run's job running"
        )
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr[-3000:]
    assert API_KEY not in stdout + stderr
    job_id = running[0].id
    assert f"Interrupted: the flow run cancelled Comfy job {job_id}" in stderr
    await eventually(lambda: status_is(emulator, job_id, "cancelled"), message="job cancelled")
    [flow_run_tag] = [t for t in running[0].tags if t.startswith("prefect.flow-run.")]
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_tag.removeprefix("prefect.flow-run."))
    assert flow_run.state is not None and flow_run.state.is_final(), flow_run.state
    assert flow_run.state.type.value == "CANCELLED", flow_run.state
    # One cancel: the sensor's cleanup, the flow's and the crash hook each claim it, one sends it.
    assert emulator.state.jobs[job_id].cancel_requests == 1


def test_the_bar_is_full_when_the_run_says_its_job_completed(
    emulator, prefect_api_url, tmp_path
) -> None:
    """Regression (issue 19, 5): the bar showed 96 % after the log said completed. The bar follows
    its own wait, and the last progress event of a job is short of 100 %: the bar now ends as the
    run says the job completed, before that line."""
    workflow = write_json(tmp_path / "slow.json", slow_workflow(60, step_seconds=0.05))
    env = prefect_env(emulator, prefect_api_url, TERM="xterm-256color", COLUMNS="200")
    del env["NO_COLOR"]
    code, screen = run_in_terminal(
        [*CLI, "run", str(workflow), "--out", str(tmp_path / "out"), "--verbose"], env, timeout=180
    )
    assert code == 0, screen[-3000:]
    said = re.search(r"Comfy job (\S+) completed with \d+ output\(s\)\r?\n", screen)
    assert said, screen[-3000:]
    # The bar as drawn again with that line (a live bar is redrawn under each log line).
    bar = re.match(r"[^\r\n]*", screen[said.end() :])[0]
    assert said[1] in bar and "100%" in bar and "completed" in bar, (bar, screen[-3000:])
