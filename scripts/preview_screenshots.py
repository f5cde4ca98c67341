"""Screenshots of a live preview in the Prefect UI while a txt2img job runs on a real ComfyUI.

Starts ``prefect server start`` on a free loopback port, the installed ComfyUI 0.3.75 with
``--preview-method latent2rgb`` and the random-weight test checkpoint (tests/support/comfyui_server.py),
and ``run_comfy_workflow`` in a subprocess on the txt2img graph (256x256, 20 steps). When the job's
live preview artifact exists it opens it in headless Chromium and saves a PNG; after the flow, the
same key's latest version (the outputs table). Reuses ``scripts/ui_screenshots.py``'s DevTools client.

    PYTHONPATH=. .venv/bin/python scripts/preview_screenshots.py [--out docs/images]

Everything binds 127.0.0.1; every process it starts is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ui_screenshots import ROOT, free_port, open_settled, shoot, stop, until  # noqa: E402

from tests.support.browser import headless_chromium  # noqa: E402 (ui_screenshots puts ROOT on the path)

FLOW = r"""
import json, sys
from prefect_comfy.backends.comfyui.block import ComfyUIServer
from prefect_comfy.orchestration.flows import run_comfy_workflow
from tests.support.txt2img import txt2img_graph

graph = txt2img_graph(seed=1234, steps=20, prefix="ui-preview")
graph["5"]["inputs"].update(width=256, height=256)
print(run_comfy_workflow(ComfyUIServer(url=sys.argv[1]), graph, output_dir=sys.argv[2]))
"""


def live_preview(api: str) -> dict[str, Any] | None:
    artifacts = httpx.post(f"{api}/artifacts/filter", json={}).json()
    return next(
        (a for a in artifacts if "Live preview of Comfy job" in str(a.get("data") or "")), None
    )


async def browse(ui: str, api: str, artifact: dict[str, Any], out: Path, flow: Any) -> None:
    async with headless_chromium(window=(1200, 800)) as page:
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            width=1200, height=800, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        await open_settled(page, f"{ui}/artifacts/artifact/{artifact['id']}", "Live preview")
        await page.until(
            "[...document.images].some(i => i.src.startsWith('data:') && i.complete"
            " && i.naturalWidth > 0)",
            30,
            "the preview image",
        )
        await shoot(page, out / "ui-live-preview.png")
        while flow.poll() is None:
            await asyncio.sleep(0.5)
        query = {"artifacts": {"key": {"any_": [artifact["key"]]}}, "sort": "CREATED_DESC"}
        versions = httpx.post(f"{api}/artifacts/filter", json=query).json()
        print(f"{len(versions)} versions under {artifact['key']}", flush=True)
        await open_settled(
            page, f"{ui}/artifacts/artifact/{versions[0]['id']}", "Outputs of Comfy job"
        )
        await shoot(page, out / "ui-live-preview-after.png")


def main() -> None:
    from tests.support.comfyui_server import (
        add_checkpoint,
        ensure_comfyui,
        ensure_test_checkpoint,
        running_comfyui,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="preview-shots-"))
    started: list[subprocess.Popen[Any]] = []
    install = ensure_comfyui()
    checkpoint = ensure_test_checkpoint(install)
    extra = ("--preview-method", "latent2rgb")
    try:
        with (
            running_comfyui(install, home / "comfyui", extra_args=extra) as comfy,
            open(home / "server.log", "w") as server_log,
            open(home / "flow.log", "w") as flow_log,
        ):
            add_checkpoint(comfy, checkpoint)
            port = free_port()
            ui, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
            env = dict(
                __import__("os").environ,
                PREFECT_HOME=str(home / "prefect"),
                PREFECT_API_URL=api,
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
                PYTHONPATH=str(ROOT),
            )
            prefect = str(Path(sys.executable).with_name("prefect"))
            command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
            started.append(
                subprocess.Popen(command, env=env, stdout=server_log, stderr=subprocess.STDOUT)
            )
            until(lambda: httpx.get(f"{api}/health").status_code == 200, 180, "Prefect")
            flow = subprocess.Popen(
                [sys.executable, "-c", FLOW, comfy.url, str(home / "out")],
                env=env, stdout=flow_log, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip
            started.append(flow)
            artifact = until(lambda: live_preview(api), 600, "a live preview artifact")
            asyncio.run(browse(ui, api, artifact, args.out, flow))
            print((home / "flow.log").read_text().splitlines()[-1], flush=True)
    finally:
        for process in reversed(started):
            stop(process)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
