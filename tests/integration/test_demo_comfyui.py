"""``make demo`` given a real ComfyUI: its command in a terminal runs the text-to-image job there.

The demo (``python -m prefect_comfy.cli.demo --url URL``, what ``make demo ARGS="--url URL"`` runs)
starts its own Prefect server, picks the checkpoint from the ComfyUI's ``/object_info`` (the
random-weight test checkpoint is the session server's only one), runs the packaged graph with
``run_comfy_workflow`` and its live bar, and downloads the PNG where it says.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.support.comfyui_server import RunningComfyUI
from tests.support.terminal import run_in_terminal
from tests.support.waiting import scaled

pytestmark = pytest.mark.comfyui

DEMO = [sys.executable, "-m", "prefect_comfy.cli.demo"]
DEMO_TIMEOUT = 900
"""A Prefect server start (10-40 s), a checkpoint load and 8 steps (16-80 s on 2 loaded cores)."""


def demo_env() -> dict[str, str]:
    """The environment of a user's shell: no Comfy or Prefect server configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_", "PREFECT_API_URL"))}
    env.update(TERM="xterm-256color", COLUMNS="160")
    return env


def free_memory(server: RunningComfyUI) -> None:
    """Ask ComfyUI to unload its models and drop its cache before the next job: the demo's job
    then loads the checkpoint again, so its bar is up before KSampler starts, however fast it is."""
    request = urllib.request.Request(
        f"{server.url}/free",
        data=json.dumps({"unload_models": True, "free_memory": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200


def test_the_demo_runs_txt2img_on_a_comfyui_shows_the_steps_and_downloads_the_png(
    comfyui_server: RunningComfyUI, test_checkpoint: str, tmp_path: Path
) -> None:
    free_memory(comfyui_server)
    out = tmp_path / "out"
    command = [*DEMO, "--url", comfyui_server.url, "--output-dir", str(out)]
    code, screen = run_in_terminal(command, demo_env(), timeout=scaled(DEMO_TIMEOUT))
    assert code == 0, screen[-4000:]
    assert f"checkpoint {test_checkpoint}" in screen, screen[-4000:]
    shown = re.findall(r"(\d+)%\s+KSampler #3\s+step (\d+)/8", screen)
    # The bar joins the job once it is submitted: on an idle machine this tiny job's 8 steps can
    # be over by then (2 s in all, seen), so the steps are checked where they were drawn, and the
    # bar must at least end full (the CLI's own bar test samples more steps: test_txt2img.py).
    assert shown or re.search(r"100%.*completed", screen), screen[-4000:]
    steps = [int(step) for _, step in shown]
    assert steps == sorted(steps), shown
    [png] = list(out.glob("demo-comfyui*.png"))
    assert Image.open(png).size == (64, 64)
    assert str(png) in screen  # where the demo says
    assert "comfy.job.completed" in screen  # read back from the demo's Prefect server
    assert "Comfy emulator" not in screen


def test_a_checkpoint_the_comfyui_lacks_is_a_one_line_error_naming_those_it_has(
    comfyui_server: RunningComfyUI, test_checkpoint: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [*DEMO, "--url", comfyui_server.url, "--checkpoint", "nope.safetensors"],
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=scaled(120),
        cwd=tmp_path,
    )
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert "--checkpoint nope.safetensors" in line and test_checkpoint in line, line
    assert "Prefect server" not in done.stdout  # nothing was started
