"""Running the `prefect-comfy` command line in a subprocess against the emulator, and reading the jobs it made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect_comfy.backends.cloud.backend import CloudBackend
from tests.support.keys import API_KEY

CLI = [sys.executable, "-m", "prefect_comfy.cli"]


def command_paths() -> list[list[str]]:
    """Every command and sub-command of the CLI, as the words that name it (``[]``: the top)."""
    from prefect_comfy.cli import COMMANDS

    paths = [[]] + [[name] for name in COMMANDS]
    paths += [["jobs", sub] for sub in ("list", "get", "cancel", "watch")]
    paths += [["upload", "input"], ["upload", "model"], ["blocks", "create"]]
    paths += [["blocks", "create", "cloud"], ["blocks", "create", "comfyui"]]
    paths += [["blocks", "create", "v2"]]
    return paths


def env_for(emulator: Any, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: the emulator's URL and key, no Prefect API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_", "PREFECT_API_"))}
    env.update({"COMFY_API_KEY": API_KEY, "COMFY_BASE_URL": emulator.url, "NO_COLOR": "1"})
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 90):
    """Run the CLI to its end; the key must appear in none of its output."""
    done = subprocess.run(
        [*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert API_KEY not in done.stdout + done.stderr
    return done


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


async def running_jobs(emulator: Any, tag: str) -> list[Any]:
    return [j for j in await tagged(emulator, tag) if j.status == "running"]


async def status_is(emulator: Any, job_id: str, status: str) -> bool:
    return (await job(emulator, job_id)).status == status


async def job(emulator: Any, job_id: str) -> Any:
    async with CloudBackend(API_KEY, emulator.url) as backend:
        return await backend.get_job(job_id)


async def tagged(emulator: Any, tag: str) -> list[Any]:
    async with CloudBackend(API_KEY, emulator.url) as backend:
        return list((await backend.client.list_jobs(tags=[tag])).items)
