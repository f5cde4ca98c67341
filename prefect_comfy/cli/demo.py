"""The demo: the embedded emulator, Prefect's local server, and real generation flows between them.

``make demo`` (or ``prefect-comfy demo``) runs it. It starts the Comfy Cloud emulator on a free
loopback port, starts ``prefect server start`` on another, saves a credentials block, and runs:

1. ``run_comfy_workflow`` on a txt2img graph: submit, wait on the event stream, download;
2. the upload pipeline: upload an input, wait until it is ready, use it by name in a workflow;
3. a workflow that fails on purpose, to show ``comfy.job.failed`` and `JobFailed`.

Each job shows a live progress bar and each flow run its Prefect UI link; the deliberate failure is
reported in one line (what failed, at which node, and the Prefect event that recorded it), its
tracebacks left to the Prefect UI. It then reads the Prefect events and artifacts back from the
server's API and prints them. With ``--keep-open`` both servers stay up until Ctrl-C so that the runs
can be looked at in the UI; otherwise both are stopped, and nothing is left running.

Given a ComfyUI (``--url URL``, or ``COMFY_URL``; ``make demo ARGS="--url http://127.0.0.1:8188"``),
the demo runs the real text-to-image job there instead of the emulator's three flows: the packaged
graph ``prefect_comfy/cli/demo_txt2img.json`` (CheckpointLoaderSimple, two CLIPTextEncode, EmptyLatentImage 64x64, KSampler
8 steps, VAEDecode, SaveImage) with the first checkpoint the server lists in its ``/object_info``
(or ``--checkpoint NAME``), through ``run_comfy_workflow`` with its live bar, and downloads the PNG
(`prefect_comfy.cli.demo_comfyui`). A server without a checkpoint is a one-line error that says
how to get one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

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


PREFECT_START_TIMEOUT = 180
"""Seconds to wait for ``prefect server start`` to answer: 10-40 s on a small machine, and over
90 s on 2 cores at load average 15 (where its first answers also took more than a second)."""


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
        deadline = time.monotonic() + PREFECT_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited early; see {home / 'server.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"prefect server did not answer in {PREFECT_START_TIMEOUT} s; see "
                    f"{home / 'server.log'}"
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


def run_demo(
    *,
    keep_open: bool = False,
    output_dir: Path | None = None,
    comfyui: tuple[Any, str] | None = None,
) -> int:
    """Run the whole demo; return a process exit code.

    Args:
        keep_open: keep the servers up after the flows, until Ctrl-C.
        output_dir: where the images go (default ``demo-output``).
        comfyui: a ComfyUIServer block and a checkpoint it has (`comfyui_target`): run the
            text-to-image job there instead of the emulator's three flows.
    """
    # SIGTERM unwinds like Ctrl-C, so the servers started here are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    output_dir = Path(output_dir or "demo-output").resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    if comfyui is not None:
        server, checkpoint = comfyui
        from prefect_comfy.redaction import redact_url

        _say(f"ComfyUI:         {redact_url(server.url)} (checkpoint {checkpoint})")
        code = _with_prefect(
            lambda api_url: _run_comfyui_flow(server, checkpoint, output_dir, api_url), keep_open
        )
        _say("The Prefect server is stopped (the ComfyUI is yours: it runs on).")
    else:
        from prefect_comfy_emulator import EmulatorConfig, EmulatorServer

        config = EmulatorConfig(api_keys=[DEMO_KEY], seed=7, step_duration=0.2, upload_duration=0.5)
        with EmulatorServer(config) as emulator:
            _say(f"Comfy emulator:  {emulator.url} (developer API at {emulator.api_url})")
            code = _with_prefect(
                lambda api_url: _run_flows(emulator.url, output_dir, api_url), keep_open
            )
        _say("Both servers are stopped.")
    if not keep_open:
        _say("To keep them (and the Prefect UI) open after the flows: make demo ARGS=--keep-open")
    return code


def _with_prefect(flows: Callable[[str], int], keep_open: bool) -> int:
    """Start Prefect's local server, run ``flows(api_url)`` against it, stop it; the exit code."""
    workdir = Path(tempfile.mkdtemp(prefix="prefect-comfy-demo-"))
    (workdir / "home").mkdir()
    os.environ["PREFECT_HOME"] = str(workdir / "home")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    port = _free_port()
    _say("Starting Prefect's local server (10 to 40 s on a small machine) ...")
    with prefect_server(workdir / "home", port) as api_url:
        ui_url = api_url.removesuffix("/api")
        _say(f"Prefect server:  {ui_url}  (UI)")
        os.environ["PREFECT_API_URL"] = api_url
        os.environ["PREFECT_UI_URL"] = ui_url
        from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api_url, PREFECT_UI_URL: ui_url}):
            code = flows(api_url)
            _flush_run_logs()
            if keep_open and code == 0:
                _say(f"\nServers stay up: open {ui_url} in a browser. Ctrl-C to stop them.")
                with contextlib.suppress(KeyboardInterrupt):
                    signal.pause()
    shutil.rmtree(workdir, ignore_errors=True)  # kept on an error: its server.log says why
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
    from prefect_comfy.cli.flow_run import FlowRunWatcher, prefect_logs_through
    from prefect_comfy.cli.progress import JobBoard

    credentials = ComfyCloudCredentials(api_key=DEMO_KEY, base_url=emulator_url)
    credentials.save("comfy-demo", overwrite=True)
    _say('Saved credentials block "comfy-demo" (the key is stored as a secret).\n')

    def watched(board: JobBoard) -> tuple[Any, FlowRunWatcher]:
        """``run_comfy_workflow`` that prints its UI link and shows its job on ``board``."""
        watcher = FlowRunWatcher(credentials, board)
        return run_comfy_workflow.with_options(on_running=[watcher.on_running]), watcher

    _say("1. run_comfy_workflow: txt2img, 25 sampler steps (about 6 s), waited on the event stream")
    board = JobBoard()
    with board, prefect_logs_through(board):
        run, watcher = watched(board)
        try:
            result = run(credentials, TXT2IMG, tags=["demo"], output_dir=str(output_dir))
        finally:
            watcher.stop()
        watcher.finish(result.status)
    for out in result.outputs:
        _say(f"   {result.job_id} {result.status}: {out.name} -> {out.path}")

    def print_link(flow: Any, flow_run: Any, state: Any) -> None:
        from prefect.utilities.urls import url_for

        board.console.print(
            f"Prefect flow run {flow_run.name}: {url_for(flow_run)}", soft_wrap=True
        )

    @flow(name="comfy-upload-pipeline-demo", on_running=[print_link])
    def upload_pipeline(image: Path) -> Any:
        # The tasks are async: a sync flow runs them with .submit(...).result().
        uploaded = upload_comfy_input.submit(credentials, str(image), name="demo-reference.png")
        ready = wait_for_comfy_input.submit(credentials, uploaded.result().id, timeout=60).result()
        board.console.print(f"   input {ready.id} ({ready.name}) is {ready.status}")
        run, watcher = watched(board)
        try:
            done = run(credentials, _uses_input(ready.name), output_dir=str(output_dir))
        finally:
            watcher.stop()
        watcher.finish(done.status)
        return done

    _say("\n2. upload pipeline: upload an input, wait for input.ready, use it by name")
    board = JobBoard()
    with board, prefect_logs_through(board):
        inverted = upload_pipeline(Path(result.outputs[0].path))
    for out in inverted.outputs:
        _say(f"   {inverted.job_id} {inverted.status}: {out.name} -> {out.path}")

    _say("\n3. a workflow that fails on purpose (node class EmulatorFail)")
    board = JobBoard()
    failure: JobFailed | None = None
    with board, prefect_logs_through(board, hide_run_errors=True):
        run, watcher = watched(board)
        try:
            run(credentials, FAILING)
        except JobFailed as exc:
            failure = exc
            watcher.finish("failed", f"at node {exc.node_id}")
        finally:
            watcher.stop()
    if failure is None:
        _say("   the failing workflow did not fail: something is wrong")
        return 1
    _say("   " + asyncio.run(_failure_line(failure)))
    return asyncio.run(_report(api_url, [result.job_id, inverted.job_id], output_dir))


def _run_comfyui_flow(server: Any, checkpoint: str, output_dir: Path, api_url: str) -> int:
    """The text-to-image job on the given ComfyUI, as a flow run with its live bar."""
    from prefect_comfy import run_comfy_workflow
    from prefect_comfy.cli.demo_comfyui import DEMO_BLOCK, comfyui_txt2img, demo_workflow_path
    from prefect_comfy.cli.flow_run import FlowRunWatcher, prefect_logs_through
    from prefect_comfy.cli.progress import JobBoard

    server.save(DEMO_BLOCK, overwrite=True)
    _say(f'Saved ComfyUIServer block "{DEMO_BLOCK}".\n')
    graph = comfyui_txt2img(checkpoint, seed=random.randrange(2**31))
    [sampler] = [n["inputs"] for n in graph.values() if n["class_type"] == "KSampler"]
    _say(
        f"1. run_comfy_workflow: txt2img on {checkpoint}, 64x64, {sampler['steps']} sampler steps "
        f"(seed {sampler['seed']}), waited on the event stream\n"
        f"   the graph: {demo_workflow_path()} (with this checkpoint and seed)"
    )
    board = JobBoard()
    with board, prefect_logs_through(board):
        watcher = FlowRunWatcher(server, board)
        run = run_comfy_workflow.with_options(on_running=[watcher.on_running])
        try:
            result = run(server, graph, tags=["demo"], output_dir=str(output_dir))
        finally:
            watcher.stop()
        watcher.finish(result.status)
    for out in result.outputs:
        _say(f"   {result.job_id} {result.status}: {out.name} -> {out.path}")
    return asyncio.run(_report(api_url, [result.job_id], output_dir, {"comfy.job.completed"}))


async def _failure_line(failure: Any) -> str:
    """One line: what failed, at which node, and the Prefect event that recorded it."""
    node = FAILING.get(str(failure.node_id), {}).get("class_type", "?")
    text = (
        f"Failed as intended: job {failure.resource_id}, node {failure.node_id} ({node}): "
        f"[{failure.error_code}] {failure.error_message}."
    )
    event = await _stored_event("comfy.job.failed", f"comfy.job.{failure.resource_id}")
    if event is None:
        return text + " Prefect has not stored its comfy.job.failed event (yet)."
    from prefect.utilities.urls import url_for

    return f"{text} Prefect stored event {event.event} {event.id}: {url_for(event)}"


async def _stored_event(name: str, resource_id: str, timeout: float = 20.0) -> Any:
    """The event ``name`` about ``resource_id`` once the server has persisted it, else ``None``."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource_id])
    )
    async with get_client() as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            page = await client.read_events(filter=flt, limit=1)
            if page.events:
                return page.events[0]
            await asyncio.sleep(0.5)
    return None


EMULATOR_EVENTS = frozenset({"comfy.job.completed", "comfy.job.failed", "comfy.input.ready"})
"""The events the emulator demo's flows must leave on the Prefect server."""


async def _report(
    api_url: str,
    job_ids: list[str],
    output_dir: Path,
    wanted: frozenset[str] | set[str] = EMULATOR_EVENTS,
) -> int:
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
            if wanted <= kinds:
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
    missing = set(wanted) - kinds
    if missing:
        _say(f"\nMissing events: {sorted(missing)}")
        return 1
    _say(f"\nDone. Outputs are in {output_dir}")
    _say(
        "The command line is in the project's environment: .venv/bin/prefect-comfy --help "
        "(or 'source .venv/bin/activate', then prefect-comfy --help; or 'uv run prefect-comfy')."
    )
    return 0


def demo(
    keep_open: Annotated[
        bool,
        typer.Option(
            "--keep-open",
            help="Keep the emulator and the Prefect server (and its UI) running after the flows, "
            "until Ctrl-C.",
        ),
    ] = False,
    output_dir: Annotated[
        str,
        typer.Option("--output-dir", help="Folder for the generated images.", metavar="DIR"),
    ] = "demo-output",
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            help="With --url (or COMFY_URL) naming a ComfyUI: the checkpoint its job loads. "
            "Default: the first the server lists.",
            metavar="NAME",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the demo: the emulator, a local Prefect server and three flows.

    Starts the Comfy Cloud emulator and 'prefect server start' on free loopback ports, runs a
    text-to-image workflow, an upload pipeline and a workflow that fails on purpose, with live progress
    bars and each run's Prefect UI link, then stops both servers. Given a ComfyUI with --url URL (or
    COMFY_URL), it runs a real text-to-image job there instead (a checkpoint the server has, KSampler
    8 steps, 64x64) and downloads its PNG.
    """
    # The demo's Prefect server is its own, thrown away at the end: no analytics, and no notice
    # about them (Prefect prints it where it is first imported, here to check the ComfyUI).
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect_comfy.cli.connect import server_url
    from prefect_comfy.cli.demo_comfyui import comfyui_target
    from prefect_comfy.cli.errors import UsageProblem

    comfyui = None
    if server_url():
        comfyui = asyncio.run(comfyui_target(checkpoint))
    elif checkpoint is not None:
        raise UsageProblem("--checkpoint needs --url URL (or COMFY_URL) naming a ComfyUI")
    raise SystemExit(run_demo(keep_open=keep_open, output_dir=Path(output_dir), comfyui=comfyui))


if __name__ == "__main__":  # `make demo ARGS=...`: the same options as `prefect-comfy demo`
    from prefect_comfy.cli import main

    main(["demo", *sys.argv[1:]])
