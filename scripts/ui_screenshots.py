"""Screenshots of the Prefect UI while a long Comfy job runs and after it, in headless Chromium.

Starts ``prefect server start`` on a free loopback port (PREFECT_HOME in a temporary folder), the
local emulator with slow steps, and the library flow ``run_comfy_workflow`` in a subprocess on a
40-step KSampler (about 20 s). While the job runs, and again after it, it opens the flow run page
as it opens, with its logs (the progress milestones: ``Comfy job … : 40% · KSampler step 16/40``),
clicks its Artifacts tab through the DevTools protocol (``?tab=`` is ignored: the flow run's own
progress artifact), opens the event feed of the flow run, and saves PNGs under ``docs/images/``. Needs Debian's ``chromium``.

    .venv/bin/python scripts/ui_screenshots.py [--out docs/images]

(``PREFECT_COMFY_CHROMIUM`` names another browser: tests/support/browser.py.)

Everything binds 127.0.0.1; every process it starts is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.browser import Page, headless_chromium  # noqa: E402

API_KEY = "comfyui-demo-key-not-secret"
FLOW = r"""
import copy, sys
from prefect_comfy import ComfyCloudCredentials
from prefect_comfy.cli.demo import TXT2IMG
from prefect_comfy.orchestration.flows import run_comfy_workflow

workflow = copy.deepcopy(TXT2IMG)
workflow["3"]["inputs"]["steps"] = 40
credentials = ComfyCloudCredentials(api_key=sys.argv[2], base_url=sys.argv[1])
print(run_comfy_workflow(credentials, workflow, tags=["ui-screenshots"]))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def until(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Call ``probe`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what} after {timeout:g}s")
        time.sleep(interval)


async def open_settled(page: Page, url: str, text: str) -> None:
    """Open ``url`` until it shows ``text``, then let the last requests paint."""
    await page.open(url, text)
    await asyncio.sleep(1.0)  # what we wait for is already there; this is for the paint


async def shoot(page: Page, path: Path) -> None:
    await page.shoot(path)
    print(f"saved {path} ({path.stat().st_size // 1024} KiB)", flush=True)


async def screenshots(page: Page, ui: str, run_id: str, out: Path, stage: str, job: str) -> None:
    if stage == "during":  # the flow run's page as it opens (its logs): the progress milestones
        await open_settled(page, f"{ui}/runs/flow-run/{run_id}", f"Comfy job {job}: ")
        await shoot(page, out / f"ui-{stage}-logs.png")
    await open_settled(page, f"{ui}/runs/flow-run/{run_id}", "Artifacts")
    await page.click_text("Artifacts")
    await page.until("document.body.innerText.includes('comfy-job-')", 30, "the artifacts")
    await asyncio.sleep(1.0)
    await shoot(page, out / f"ui-{stage}-artifacts.png")
    feed = f"{ui}/events?resource=prefect.flow-run.{run_id}&events=comfy.job.*"
    await open_settled(
        page, feed, "comfy.progress." if stage == "during" else "comfy.job.completed"
    )
    await shoot(page, out / f"ui-{stage}-events.png")


async def browse(ui: str, api: str, run_id: str, job: str, out: Path, flow: Any) -> None:
    async with headless_chromium(window=(1400, 1300)) as page:
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            width=1400,
            height=1300,
            deviceScaleFactor=1,
            mobile=False,
        )
        await screenshots(page, ui, run_id, out, "during", job)
        print("progress while shooting:", progress_of(api), flush=True)
        await wait_async(lambda: flow.poll() is not None, 120, "the flow run to end")
        time.sleep(2.0)  # the event persister flushes every 0.5 s here
        await screenshots(page, ui, run_id, out, "after", job)


async def wait_async(probe: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        await asyncio.sleep(0.5)


def progress_of(api: str) -> float | None:
    artifacts = httpx.post(f"{api}/artifacts/filter", json={}).json()
    values = [a["data"] for a in artifacts if a["type"] == "progress"]
    return values[0] if values else None


def stop(process: subprocess.Popen[Any] | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="ui-shots-"))
    started: list[subprocess.Popen[Any]] = []
    try:
        with open(home / "server.log", "w") as server_log, open(home / "flow.log", "w") as flow_log:
            run(args, home, started, server_log, flow_log)
        print((home / "flow.log").read_text().splitlines()[-1], flush=True)
    finally:
        for process in reversed(started):
            stop(process)
        shutil.rmtree(home, ignore_errors=True)


def run(args: Any, home: Path, started: list[Any], server_log: Any, flow_log: Any) -> None:
    from prefect_comfy_emulator import EmulatorConfig, EmulatorServer

    port = free_port()
    ui, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
    env = dict(
        os.environ,
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL="0.5",
    )
    prefect = str(Path(sys.executable).with_name("prefect"))
    command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    started.append(subprocess.Popen(command, env=env, stdout=server_log, stderr=subprocess.STDOUT))
    until(lambda: httpx.get(f"{api}/health").status_code == 200, 120, "the Prefect server")
    print(f"Prefect server at {ui}", flush=True)
    with EmulatorServer(EmulatorConfig(api_keys=[API_KEY], seed=7, step_duration=0.4)) as emu:
        flow = subprocess.Popen(
            [sys.executable, "-c", FLOW, emu.api_url, API_KEY],
            env=env,
            stdout=flow_log,
            stderr=subprocess.STDOUT,
        )
        started.append(flow)
        until(lambda: (progress_of(api) or 0) >= 25, 90, "the job to pass 25 %")
        run_id = httpx.post(f"{api}/flow_runs/filter", json={}).json()[0]["id"]
        tasks = httpx.post(f"{api}/task_runs/filter", json={}).json()
        wait = next(t["name"] for t in tasks if t["name"].startswith("wait-for-comfy-job-"))
        job = wait.removeprefix("wait-for-comfy-job-")
        print(f"flow run {run_id}, Comfy job {job}", flush=True)
        asyncio.run(browse(ui, api, run_id, job, args.out, flow))


if __name__ == "__main__":
    main()
