"""The demo's job on a ComfyUI it is given: the packaged text-to-image graph and its checkpoint.

``prefect-comfy demo --url URL`` (or ``COMFY_URL``) names the ComfyUI; `comfyui_target` checks
that it is one and picks the checkpoint from the server's own node catalog (``/object_info``):
``--checkpoint NAME``, else the first it lists. `comfyui_txt2img` is the graph
(`DEMO_WORKFLOW`: CheckpointLoaderSimple, two CLIPTextEncode, EmptyLatentImage 64x64, KSampler
8 steps, VAEDecode, SaveImage) with that checkpoint. `prefect_comfy.cli.demo` runs it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from prefect_comfy.cli.connect import KINDS, credentials_for, server_url
from prefect_comfy.cli.errors import UsageProblem
from prefect_comfy.redaction import redact_url

COMFYUI = "comfyui"
"""The ``--kind`` of a ComfyUI (`prefect_comfy.cli.connect.KINDS`)."""

DEMO_WORKFLOW = "demo_txt2img.json"
"""The text-to-image graph the demo runs on a ComfyUI, shipped in this package (``prefect_comfy/cli/``);
its ``ckpt_name`` is replaced by the checkpoint the demo chooses."""

DEMO_BLOCK = "comfyui-demo"
"""The name of the ComfyUIServer block the demo saves for a ComfyUI it is given."""

CHECKPOINT_HELP = (
    "put an SD1.5 .safetensors in its models/checkpoints folder (or one its "
    "extra_model_paths.yaml names), or build a random-weight test one there, no download, from a "
    "prefect-comfy checkout: python3 scripts/build-test-checkpoint.py --output "
    "<ComfyUI>/models/checkpoints/prefect-comfy-tiny-sd15.safetensors"
)
"""What to do when the ComfyUI has no checkpoint."""


def demo_workflow_path() -> Path:
    """Where the packaged text-to-image graph is (a file that ``prefect-comfy run`` also takes)."""
    return Path(str(resources.files("prefect_comfy.cli") / DEMO_WORKFLOW))


def comfyui_txt2img(checkpoint: str, seed: int) -> dict[str, Any]:
    """The packaged text-to-image graph, loading ``checkpoint``, sampling with ``seed``.

    A new seed for each run: ComfyUI caches every node's output by its inputs, so a second run of
    the same graph would sample nothing and show no steps.

    Example:
        >>> graph = comfyui_txt2img("model.safetensors", seed=7)
        >>> graph["4"]["inputs"]["ckpt_name"], graph["3"]["inputs"]["steps"]
        ('model.safetensors', 8)
    """
    graph = json.loads(demo_workflow_path().read_text())
    for node in graph.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = checkpoint
        elif node["class_type"] == "KSampler":
            node["inputs"]["seed"] = seed
    return graph


async def comfyui_target(checkpoint: str | None) -> tuple[Any, str]:
    """The ComfyUI that ``--url`` (or ``COMFY_URL``) names, as a block, and the checkpoint to load:
    ``checkpoint`` if the server has it, else the first it lists.

    Raises:
        UsageProblem: nothing answers there, it is not a ComfyUI, it has no checkpoint, or not
            the one named.
    """
    from prefect_comfy.backends.catalog import node_catalog

    url = redact_url(server_url() or "")
    server = await credentials_for(None)  # asks the server its kind (or takes --kind)
    kind = next((k for k, (_, block, _) in KINDS.items() if block == type(server).__name__), "?")
    if kind != COMFYUI:
        raise UsageProblem(
            f"The demo runs its text-to-image job on a ComfyUI, and {url} is not one (it is a "
            f"{kind} server): pass --url http://HOST:8188 of a ComfyUI, or unset COMFY_URL for "
            "the emulator demo"
        )
    async with server.get_backend() as backend:
        catalog, _ = await node_catalog(backend)
    loader = catalog.node("CheckpointLoaderSimple")
    spec = loader.input("ckpt_name") if loader is not None else None
    choices = [str(c) for c in (spec.choices or ())] if spec is not None else []
    if not choices:
        raise UsageProblem(f"The ComfyUI at {url} has no checkpoint: {CHECKPOINT_HELP}")
    if checkpoint is None:
        return server, choices[0]
    if checkpoint not in choices:
        raise UsageProblem(
            f"--checkpoint {checkpoint}: the ComfyUI at {url} has no such checkpoint; it has "
            f"{', '.join(choices[:10])}{' ...' if len(choices) > 10 else ''}"
        )
    return server, checkpoint
