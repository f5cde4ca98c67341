"""The emulator in a process of its own, for benchmarks: its CPU and memory are not the client's."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import httpx


def start_emulator(api_key: str, **options: Any) -> tuple[subprocess.Popen[str], str]:
    """Start ``prefect-comfy emulator`` on a free port; return the process and its URL.

    ``options`` are the command's options (``step_duration=3600`` → ``--step-duration 3600``).
    Stop it with ``proc.terminate()``.
    """
    args = [sys.executable, "-m", "prefect_comfy.cli", "emulator", "--port", "0"]
    args += ["--api-key", api_key]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise RuntimeError("the emulator did not start")


def emulator_stats(url: str) -> dict[str, Any]:
    """The emulator's counters (``requests_total``, ``ws_connections_total`` …)."""
    return httpx.get(url + "/_emulator/stats", timeout=30).json()
