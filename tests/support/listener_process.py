"""`prefect-comfy listen` as a subprocess that a test can stop, kill and start again, and its cursor file."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.support.keys import API_KEY
from tests.support.waiting import eventually, scaled


class ListenerProcess:
    """``prefect-comfy listen`` in a subprocess, its stderr collected line by line."""

    def __init__(self, emulator: Any, cursor: Path, name: str) -> None:
        self.args = [
            sys.executable,
            "-c",
            "from prefect_comfy.cli import main; main()",
            "listen",
            "--name",
            name,
            "--cursor",
            str(cursor),
            "--heartbeat-interval",
            "0",
            "--log-level",
            "DEBUG",
        ]
        self.env = {**os.environ, "COMFY_API_KEY": API_KEY, "COMFY_BASE_URL": emulator.url}
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        await eventually(
            lambda: (
                any("event stream connected" in line for line in self.lines)
                or self.process.returncode is not None
            ),
            timeout=90,
            message="the listener connected",
        )
        assert self.process.returncode is None, self.text[-3000:]

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace"))

    @property
    def text(self) -> str:
        return "".join(self.lines)

    async def end(self, sig: int) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        code = await asyncio.wait_for(self.process.wait(), scaled(60))
        assert self._reader is not None
        await asyncio.wait_for(self._reader, scaled(10))
        return code


def cursor_ids(cursor: Path) -> set[str]:
    try:
        data = json.loads(cursor.read_text())
    except (FileNotFoundError, ValueError):
        return set()
    return {rid for _, rid, _ in data["in_flight"]}
