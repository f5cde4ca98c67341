"""A real Prefect stack in subprocesses: ``prefect server start``, a process work pool and worker,
and ``prefect-comfy listen``, for the tests of the suspending wait.

Everything binds loopback and lives under one temporary folder (``PREFECT_HOME``, SQLite).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.waiting import scaled

ROOT = Path(__file__).resolve().parents[2]
LISTEN_OPTIONS = ["--events-per-second", "0", "--heartbeat-interval", "0"]
"""No pacing: on integ the default pacing (300/s) fails at start (ProgressBudget(capacity=...))."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a condition with a deadline, not synchronisation by sleep
    raise RuntimeError(f"prefect server did not answer {url}/health in {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s: by pid, never by name."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Stack:
    """The running server's API URL, the environment for its clients, and helpers to add processes."""

    def __init__(self, home: Path, api_url: str) -> None:
        self.home = home
        self.api_url = api_url
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "0",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(home / "flows")]),
        }
        for name in ("COMFY_API_KEY", "COMFY_BASE_URL"):
            self.env.pop(name, None)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.server: subprocess.Popen[bytes] | None = None

    def spawn(self, name: str, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = (self.home / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args, env={**self.env, **env}, cwd=self.home, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        return proc

    def run(self, args: list[str], **env: str) -> str:
        done = subprocess.run(
            args,
            env={**self.env, **env},
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=scaled(120),
        )
        if done.returncode:
            raise RuntimeError(f"{args} failed: {done.stdout}\n{done.stderr}")
        return done.stdout

    def listener(self, emulator_url: str, api_key: str, name: str) -> subprocess.Popen[bytes]:
        return self.spawn(
            f"listener-{name}",
            [sys.executable, "-m", "prefect_comfy.cli", "listen", "--name", name, *LISTEN_OPTIONS],
            COMFY_API_KEY=api_key,
            COMFY_BASE_URL=emulator_url,
        )

    def start_server(self, timeout: float) -> subprocess.Popen[bytes]:
        """``prefect server start`` on the stack's port and SQLite database; wait until healthy."""
        port = self.api_url.rsplit(":", 1)[1].split("/", 1)[0]
        self.server = self.spawn(
            "server",
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
            + ["--port", port],
            PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL="0.5",
            PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS="1",
        )
        _wait_healthy(self.api_url, self.server, timeout)
        return self.server

    def restart_server(self, timeout: float = 90) -> None:
        """Stop the server (SIGTERM) and start it again on the same port and database: what it
        kept only in memory (its trigger service's memory of event ids) is gone."""
        stop(self.server)
        self.procs.remove(self.server)
        self.start_server(timeout)

    def logs(self) -> str:
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-30000:]}"
            for p in sorted(self.home.glob("*.log"))
        )


@contextmanager
def prefect_stack(
    home: Path, *, start_timeout: float = 90, pythonpath: tuple[Path, ...] = ()
) -> Iterator[Stack]:
    """``prefect server start`` on a free loopback port, SQLite under ``home``.

    ``start_timeout``: seconds to wait for ``/api/health`` (a shared, loaded machine needs more).
    ``pythonpath``: folders searched first by every process of the stack.
    """
    (home / "flows").mkdir(parents=True, exist_ok=True)
    port = free_port()
    stack = Stack(home, f"http://127.0.0.1:{port}/api")
    if pythonpath:
        stack.env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), stack.env["PYTHONPATH"]])
    try:
        stack.start_server(start_timeout)
        yield stack
    finally:
        for proc in reversed(stack.procs):
            stop(proc)
