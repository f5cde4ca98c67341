"""Run a command on a pseudo-terminal and return what it drew (escape sequences removed)."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time

from tests.support.waiting import scaled

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(
    command: list[str],
    env: dict[str, str],
    *,
    timeout: float = 120,
    interrupt_after: float | None = None,
    interrupt_from: str = "",
) -> tuple[int, str]:
    """Run ``command`` with stdin, stdout and stderr on one pseudo-terminal until it ends.

    Args:
        command: the program and its arguments.
        env: its environment.
        timeout: seconds before it is killed.
        interrupt_after: if given, send it SIGINT (what Ctrl-C sends) once, this many seconds
            after it started, or after ``interrupt_from`` appeared on the screen.
        interrupt_from: text the program prints (a marker) from which ``interrupt_after`` counts.

    Returns:
        Its exit code and the screen text, without escape sequences.
    """
    main, child = pty.openpty()
    started = time.monotonic()
    process = subprocess.Popen(
        command, env=env, stdin=child, stdout=child, stderr=child, close_fds=True
    )
    os.close(child)
    screen = b""
    deadline = started + scaled(timeout)
    interrupt_at = None if interrupt_after is None or interrupt_from else started + interrupt_after
    try:
        while time.monotonic() < deadline:
            wait = 1.0
            if interrupt_from and interrupt_after is not None and interrupt_from.encode() in screen:
                interrupt_at, interrupt_from = time.monotonic() + interrupt_after, ""
            if interrupt_at is not None:
                if time.monotonic() >= interrupt_at:
                    if process.poll() is None:
                        process.send_signal(signal.SIGINT)
                    interrupt_at = None
                else:
                    wait = min(wait, interrupt_at - time.monotonic())
            ready, _, _ = select.select([main], [], [], max(wait, 0))
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        process.wait(timeout=scaled(30))
    finally:
        os.close(main)
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, ESCAPES.sub("", screen.decode("utf-8", "replace"))
