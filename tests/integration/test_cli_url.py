"""``--url URL`` (and ``COMFY_URL``), ``--kind`` and ``--api-key-env``: reaching a server from the
command line with no saved block and no Prefect server.

Subprocesses against the session's emulator (both of its faces: the developer API, found by asking,
and Comfy API v2 with ``--kind v2``) and, marker ``comfyui``, a real ComfyUI and comfy-api-proxy.
No ``COMFY_*`` variable is set unless a test says so; the key is never printed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import cli, error_lines, write_json
from tests.support.keys import API_KEY
from tests.support.workflows import tiny_workflow


def bare_env(**extra: str) -> dict[str, str]:
    """No COMFY_* variable, no Prefect API: only what the test adds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_", "PREFECT_API_"))}
    env.update(NO_COLOR="1", **extra)
    return env


def run_and_list(url: str, tmp_path: Path, *options: str, env: dict[str, str]) -> str:
    """``run`` a tiny workflow at ``url``, then ``jobs list``; the job id."""
    workflow = write_json(tmp_path / "wf.json", tiny_workflow("url"))
    done = cli("run", str(workflow), "--no-prefect", "--url", url, *options,
               "--out", str(tmp_path / "out"), env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (path,) = done.stdout.splitlines()
    assert Path(path).is_file()
    job_id = done.stderr.split("Job ", 1)[1].split()[0]
    listed = cli("jobs", "list", *options, "--url", url, env=env)
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout
    return job_id


def test_url_finds_the_developer_api_by_asking(emulator: Any, tmp_path: Path) -> None:
    env = bare_env(MY_COMFY_KEY=API_KEY)
    job_id = run_and_list(emulator.url, tmp_path, "--api-key-env", "MY_COMFY_KEY", env=env)
    assert job_id.startswith("job_")


def test_kind_v2_talks_to_the_emulators_v2_face(emulator: Any, tmp_path: Path) -> None:
    env = bare_env(COMFY_V2_API_KEY=API_KEY)
    run_and_list(emulator.url, tmp_path, "--kind", "v2", env=env)
    got = cli("jobs", "list", "--kind", "v2", env={**env, "COMFY_URL": emulator.url})
    assert got.returncode == 0, got.stderr


def test_comfy_url_from_the_environment_and_the_usual_key(emulator: Any, tmp_path: Path) -> None:
    env = bare_env(COMFY_URL=emulator.url, COMFY_API_KEY=API_KEY)
    done = cli("jobs", "list", env=env)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--url", "http://127.0.0.1:1"], "Error: Nothing answers at http://127.0.0.1:1"),
        (["--url", "URL", "--kind", "bogus"], "Error: --kind bogus: use one of cloud, v2, comfyui"),
        (["--url", "URL", "--api-key-env", "NOT_SET_ANYWHERE"], "Error: --api-key-env NOT_SET"),
        (["--url", "URL", "--block", "b"], "Error: --block and --url both name a server"),
    ],
)
def test_bad_url_options_fail_in_one_line(emulator: Any, args: list[str], expected: str) -> None:
    args = [emulator.url if a == "URL" else a for a in args]
    done = cli("jobs", "list", *args, env=bare_env(COMFY_API_KEY=API_KEY))
    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done.stderr)
    assert line.startswith(expected), line


def test_a_server_of_no_known_kind_asks_for_kind(tmp_path: Path) -> None:
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        done = cli("jobs", "list", "--url", url, env=bare_env())
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 2
    (line,) = error_lines(done.stderr)
    assert "Could not tell which kind of Comfy server" in line
    assert "pass --kind cloud|v2|comfyui" in line


@pytest.mark.comfyui
def test_url_finds_a_real_comfyui(comfyui_server: Any, tmp_path: Path) -> None:
    run_and_list(comfyui_server.url, tmp_path, env=bare_env())


@pytest.mark.comfyui
def test_url_finds_comfy_api_proxy(api_proxy: Any, tmp_path: Path) -> None:
    env = bare_env(PROXY_TOKEN=api_proxy.token)
    done = cli("jobs", "list", "--url", api_proxy.url, "--api-key-env", "PROXY_TOKEN", env=env)
    assert done.returncode == 0, done.stderr
    assert api_proxy.token not in done.stdout + done.stderr
