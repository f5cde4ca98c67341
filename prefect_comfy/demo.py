"""The demo: the embedded emulator, Prefect's local server, and real generation flows between them.

``make demo`` (or ``prefect-comfy demo``) runs it. It starts the Comfy Cloud emulator on a free
loopback port, starts ``prefect server start`` on another, saves a credentials block, and runs:

1. ``run_comfy_workflow`` on a txt2img graph: submit, wait on the event stream, download;
2. the upload pipeline: upload an input, wait until it is ready, use it by name in a workflow;
3. a workflow that fails on purpose, to show ``comfy.job.failed`` and :class:`JobFailed`.

It then reads the run's Prefect events and artifacts back from the server's API and prints them.
With ``--keep-open`` both servers stay up until Ctrl-C so that the runs can be looked at in the UI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

DEMO_KEY = "comfyui-demo-key-not-secret"
"""The key the demo's emulator accepts (a placeholder: the emulator is local)."""

TXT2IMG: dict[str, Any] = {
    "4": {
        "class_type": "CheckpointLoaderSimple",
        "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
    },
    "5": {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": 256, "height": 256, "batch_size": 1},
    },
    "6": {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": "a lighthouse at dawn, oil painting", "clip": ["4", 1]},
    },
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 42,
            "steps": 25,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "demo"}},
}


def _uses_input(name: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": "inverted"},
        },
    }


FAILING: dict[str, Any] = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "EmulatorFail", "inputs": {"message": "out of GPU memory (on purpose)"}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "never"}},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def prefect_server(home: Path, port: int) -> Iterator[str]:
    """``prefect server start`` on loopback in a subprocess; yields its API URL once healthy."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.5",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited early; see {home / 'server.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"prefect server did not answer in 90 s; see {home / 'server.log'}"
                )
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _say(text: str) -> None:
    print(text, flush=True)


def _flush_run_logs() -> None:
    """Send the runs' buffered logs and events to the server before it stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


def run_demo(*, keep_open: bool = False, output_dir: Path | None = None) -> int:
    """Run the whole demo; return a process exit code."""
    # SIGTERM unwinds like Ctrl-C, so the servers started here are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from prefect_comfy.emulator import EmulatorConfig, EmulatorServer

    workdir = Path(tempfile.mkdtemp(prefix="prefect-comfy-demo-"))
    output_dir = Path(output_dir or "demo-output").resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    (workdir / "home").mkdir()
    os.environ["PREFECT_HOME"] = str(workdir / "home")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

    config = EmulatorConfig(api_keys=[DEMO_KEY], seed=7, step_duration=0.2, upload_duration=0.5)
    with EmulatorServer(config) as emulator:
        _say(f"Comfy emulator:  {emulator.url} (developer API at {emulator.api_url})")
        port = _free_port()
        _say("Starting Prefect's local server (about 10 s) ...")
        with prefect_server(workdir / "home", port) as api_url:
            _say(f"Prefect server:  {api_url.removesuffix('/api')}  (UI)")
            os.environ["PREFECT_API_URL"] = api_url
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: api_url}):
                code = _run_flows(emulator.url, output_dir, api_url)
                _flush_run_logs()
                if keep_open and code == 0:
                    _say("\nServers stay up: open the UI above. Ctrl-C to stop.")
                    with contextlib.suppress(KeyboardInterrupt):
                        signal.pause()
    shutil.rmtree(workdir, ignore_errors=True)
    return code


def _run_flows(emulator_url: str, output_dir: Path, api_url: str) -> int:
    from prefect import flow

    from prefect_comfy import (
        ComfyCloudCredentials,
        JobFailed,
        run_comfy_workflow,
        upload_comfy_input,
        wait_for_comfy_input,
    )

    credentials = ComfyCloudCredentials(api_key=DEMO_KEY, base_url=emulator_url)
    credentials.save("comfy-demo", overwrite=True)
    _say('Saved credentials block "comfy-demo" (the key is stored as a secret).\n')

    _say("1. run_comfy_workflow: txt2img, 25 sampler steps (about 6 s), waited on the event stream")
    result = run_comfy_workflow(credentials, TXT2IMG, tags=["demo"], output_dir=str(output_dir))
    for out in result.outputs:
        _say(f"   {result.job_id} {result.status}: {out.name} -> {out.path}")

    @flow(name="comfy-upload-pipeline-demo")
    def upload_pipeline(image: Path) -> Any:
        # The tasks are async: a sync flow runs them with .submit(...).result().
        uploaded = upload_comfy_input.submit(credentials, str(image), name="demo-reference.png")
        ready = wait_for_comfy_input.submit(credentials, uploaded.result().id, timeout=60).result()
        _say(f"   input {ready.id} ({ready.name}) is {ready.status}")
        return run_comfy_workflow(credentials, _uses_input(ready.name), output_dir=str(output_dir))

    _say("\n2. upload pipeline: upload an input, wait for input.ready, use it by name")
    inverted = upload_pipeline(Path(result.outputs[0].path))
    for out in inverted.outputs:
        _say(f"   {inverted.job_id} {inverted.status}: {out.name} -> {out.path}")

    _say("\n3. a workflow that fails on purpose (node class EmulatorFail)")
    try:
        run_comfy_workflow(credentials, FAILING)
    except JobFailed as exc:
        _say(f"   JobFailed: {exc}")
    else:
        _say("   the failing workflow did not fail: something is wrong")
        return 1

    return asyncio.run(_report(api_url, [result.job_id, inverted.job_id]))


async def _report(api_url: str, job_ids: list[str]) -> int:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
    from prefect.types._datetime import now

    since = now("UTC") - timedelta(hours=1)
    seen: list[Any] = []
    async with get_client() as client:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            flt = EventFilter(
                event=EventNameFilter(prefix=["comfy."]), occurred=EventOccurredFilter(since=since)
            )
            page = await client.read_events(filter=flt, limit=50)
            seen = page.events
            kinds = {e.event for e in seen}
            if {"comfy.job.completed", "comfy.job.failed", "comfy.input.ready"} <= kinds:
                break
            await asyncio.sleep(0.5)
        artifacts = [a for a in await client.read_artifacts(limit=50) if a.key]
    _say("\nPrefect events read back from the server (newest first, progress coalesced):")
    for event in seen[:25]:
        _say(f"   {event.occurred:%H:%M:%S}  {event.event:<22} {event.resource.id}")
    _say("\nArtifacts:")
    for artifact in artifacts:
        data = artifact.data if artifact.type == "progress" else f"{artifact.type}"
        _say(f"   {artifact.key or '-':<40} {data}")
    kinds = {e.event for e in seen}
    missing = {"comfy.job.completed", "comfy.job.failed", "comfy.input.ready"} - kinds
    if missing:
        _say(f"\nMissing events: {sorted(missing)}")
        return 1
    _say(f"\nDone. Outputs are in {Path('demo-output').resolve()}")
    return 0


def demo(
    keep_open: bool = False,
    output_dir: str = "demo-output",
) -> None:
    """Run the demo: the emulator, a local Prefect server and three flows (see the module docs)."""
    raise SystemExit(run_demo(keep_open=keep_open, output_dir=Path(output_dir)))


if __name__ == "__main__":
    raise SystemExit(run_demo(keep_open="--keep-open" in sys.argv[1:]))
