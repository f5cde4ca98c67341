"""Run a command on a pseudo-terminal and return what it drew (escape sequences removed)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

from tests.support.waiting import scaled

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(
    command: list[str], env: dict[str, str], *, timeout: float = 120
) -> tuple[int, str]:
    """Run ``command`` with stdin, stdout and stderr on one pseudo-terminal until it ends.

    Returns:
        Its exit code and the screen text, without escape sequences.
    """
    main, child = pty.openpty()
    process = subprocess.Popen(
        command, env=env, stdin=child, stdout=child, stderr=child, close_fds=True
    )
    os.close(child)
    screen = b""
    deadline = time.monotonic() + scaled(timeout)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1)
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
