"""The text-to-image graph the real-ComfyUI tests run on the random-weight test checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.comfyui_server import REPO_ROOT, TEST_CHECKPOINT

#: CheckpointLoaderSimple -> 2x CLIPTextEncode -> EmptyLatentImage 64x64 -> KSampler 8 steps
#: -> VAEDecode -> SaveImage, in API format: the graph `make demo ARGS="--url URL"` runs, one copy.
WORKFLOW_PATH = REPO_ROOT / "prefect_comfy" / "cli" / "demo_txt2img.json"
#: Node ids and classes of that graph, in the order ComfyUI runs them.
KSAMPLER = "3"
STEPS = 8


def txt2img_graph(*, seed: int = 42, steps: int = STEPS, prefix: str = "txt2img") -> dict[str, Any]:
    """A fresh copy of the graph; ``seed`` changes KSampler's input so a warm server reruns it."""
    graph = json.loads(Path(WORKFLOW_PATH).read_text())
    graph["4"]["inputs"]["ckpt_name"] = TEST_CHECKPOINT
    graph[KSAMPLER]["inputs"].update(seed=seed, steps=steps)
    graph["9"]["inputs"]["filename_prefix"] = prefix
    return graph
