"""The progress a user sees on the txt2img graph (random-weight test checkpoint), cold and warm,
on a real ComfyUI directly and through comfy-api-proxy (Comfy API v2). Prints one line per
``job.progress`` event and the job time. Not part of ``make bench`` (it needs ComfyUI installed).

Cold: the first job on a freshly started ComfyUI. Warm: a new client (the first job of a new
process) on that server after it ran the graph once, so the loader and encoders are cached.

Usage: PYTHONPATH=. python benchmarks/txt2img_progress.py
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect_comfy.backends.comfyui.backend import ComfyUIBackend  # noqa: E402
from prefect_comfy.backends.v2.backend import V2Backend  # noqa: E402
from prefect_comfy.waiting.waits import submit_connected, wait_for  # noqa: E402
from tests.support.api_proxy import running_proxy  # noqa: E402
from tests.support.comfyui_server import (  # noqa: E402
    add_checkpoint,
    ensure_comfyui,
    ensure_test_checkpoint,
    running_comfyui,
)
from tests.support.txt2img import txt2img_graph  # noqa: E402


async def one_job(backend, label: str) -> None:
    started = time.monotonic()
    job, covered = await submit_connected(backend, txt2img_graph(seed=random.randrange(1, 2**31)))
    seen = []
    end = await wait_for(
        backend, "job", job.id, timeout=900, on_progress=seen.append, covered_since=covered
    )
    print(f"{label}: {end.event} in {time.monotonic() - started:.1f} s")
    for event in seen:
        p = event.payload
        step = f" step {p['step']}/{p['steps']}" if p.get("steps") else ""
        print(f"  {p['progress']:5.1f} %  {p.get('node_class') or p.get('node_id') or '-'}{step}")


async def main() -> None:
    install = ensure_comfyui()
    checkpoint = ensure_test_checkpoint(install)
    with tempfile.TemporaryDirectory() as tmp:
        for path in ("comfyui", "v2"):
            root = Path(tmp) / path
            with running_comfyui(install, root / "server") as server:
                add_checkpoint(server, checkpoint)
                if path == "comfyui":
                    for label in ("ComfyUI cold", "ComfyUI warm"):
                        client = f"bench-{uuid.uuid4()}"
                        async with ComfyUIBackend(server.url, client_id=client) as backend:
                            await one_job(backend, label)
                else:
                    with running_proxy(server, root / "proxy") as proxy:
                        for label in ("v2 via proxy cold", "v2 via proxy warm"):
                            async with V2Backend(proxy.url, proxy.token) as backend:
                                await one_job(backend, label)


if __name__ == "__main__":
    asyncio.run(main())
