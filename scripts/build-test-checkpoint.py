#!/usr/bin/env python3
"""Build the smallest SD1.5-style checkpoint ComfyUI 0.3.75 loads, with random weights, no download.

Why: no model weights can be downloaded here, yet the project's main use is a sampler workflow
(CheckpointLoaderSimple -> CLIPTextEncode -> KSampler -> VAEDecode -> SaveImage). A checkpoint of
random weights makes that workflow run for real: KSampler sends step progress and the images are
noise (not black).

What it holds, every key name and shape taken from ComfyUI's own modules (no key list by hand):

- the UNet: ``comfy.supported_models.SD15`` with a one-level ``UNetModel`` (one ResBlock and one
  SpatialTransformer, no middle block). ComfyUI's SD1.5 detection pins only ``model_channels=320``,
  ``context_dim=768`` and a few flags, and reads the rest of the layout from the keys;
- the text encoder: the full CLIP-L of ``comfy.sd1_clip.SD1ClipModel`` (the loader requires it);
- the VAE: ``comfy.taesd.taesd.TAESD``, which ``comfy.sd.VAE`` recognises by the key
  ``taesd_decoder.1.weight``;
- saved the way ComfyUI's own CheckpointSave does (``BaseModel.state_dict_for_saving``), in fp16.

Run it with any Python: when ``comfy`` cannot be imported it re-runs itself with ComfyUI's venv
interpreter (found by ``scripts/install-comfyui.sh --check``). Idempotent: a marker file next to the
checkpoint says the build finished; a half-written file is never left under the final name.

Usage:
    python3 scripts/build-test-checkpoint.py [--output PATH] [--force]

Output (stdout, last line): ``CHECKPOINT=<path>``. Default path:
``${PREFECT_COMFY_CACHE:-~/.cache/prefect-comfy}/checkpoints/prefect-comfy-tiny-sd15.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

CHECKPOINT_NAME = "prefect-comfy-tiny-sd15.safetensors"
INSTALL_SCRIPT = Path(__file__).resolve().parent / "install-comfyui.sh"
#: Bump when the recipe changes: a marker with another version makes the build run again.
RECIPE_VERSION = 1
SEED = 1234

#: The one-level UNet. The keys ComfyUI's SD15 config matches on are copied from it at run time.
ONE_LEVEL_UNET = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "num_res_blocks": [1],
    "channel_mult": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "transformer_depth_middle": -2,  # no middle block
    "use_spatial_transformer": True,
    "legacy": False,
    "use_temporal_resblock": False,
}


def default_output() -> Path:
    cache = Path(os.environ.get("PREFECT_COMFY_CACHE", Path.home() / ".cache" / "prefect-comfy"))
    return cache / "checkpoints" / CHECKPOINT_NAME


def marker_for(output: Path) -> Path:
    return output.with_name(f".{output.name}.complete")


def is_built(output: Path) -> bool:
    marker = marker_for(output)
    if not (output.is_file() and marker.is_file()):
        return False
    try:
        return json.loads(marker.read_text()).get("recipe") == RECIPE_VERSION
    except (OSError, ValueError):
        return False


def comfyui_install() -> tuple[Path, Path]:
    """(COMFYUI_DIR, COMFYUI_PYTHON) of the installed ComfyUI, or exit with a one-line reason."""
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    if proc.returncode != 0 or "COMFYUI_DIR" not in values:
        sys.exit("ComfyUI is not installed: run `bash scripts/install-comfyui.sh` first")
    return Path(values["COMFYUI_DIR"]), Path(values["COMFYUI_PYTHON"])


def randomise(module, generator) -> None:
    """Random weights that keep activations finite: N(0, 1/fan_in) matrices, unit norms, zero biases."""
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                fan_in = math.prod(param.shape[1:])
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
            elif param.ndim == 1:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            # 0-d parameters (TAESD's vae_scale / vae_shift) keep their constructed values.


def build(output: Path) -> dict:
    import comfy.cli_args
    import torch

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported: CPU, no CUDA probe
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.taesd.taesd
    import comfy.utils

    generator = torch.Generator().manual_seed(SEED)
    unet_config = {**comfy.supported_models.SD15.unet_config, **ONE_LEVEL_UNET}
    model_config = comfy.supported_models.SD15(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    randomise(model.diffusion_model, generator)

    clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32)
    randomise(clip, generator)
    vae = comfy.taesd.taesd.TAESD()
    randomise(vae, generator)

    state_dict = model.state_dict_for_saving(clip.state_dict(), vae.state_dict())
    state_dict = {
        key: (t.half() if t.is_floating_point() else t).contiguous()
        for key, t in state_dict.items()
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    comfy.utils.save_torch_file(
        state_dict,
        str(partial),
        metadata={"prefect-comfy": f"random test weights v{RECIPE_VERSION}"},
    )
    partial.replace(output)
    return {"tensors": len(state_dict), "parameters": sum(t.numel() for t in state_dict.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output())
    parser.add_argument("--force", action="store_true", help="rebuild even when already built")
    args = parser.parse_args()
    output = args.output.expanduser().resolve()

    if is_built(output) and not args.force:
        print(f"[build-test-checkpoint] already built: {output}", file=sys.stderr)
        print(f"CHECKPOINT={output}")
        return 0

    try:
        import comfy  # noqa: F401
    except ImportError:
        comfyui_dir, python = comfyui_install()
        if Path(sys.executable).resolve() == python.resolve() and str(comfyui_dir) in sys.path:
            sys.exit(f"cannot import comfy from {comfyui_dir}")
        env = {**os.environ, "PYTHONPATH": str(comfyui_dir)}
        command = [str(python), __file__, "--output", str(output)] + (
            ["--force"] if args.force else []
        )
        return subprocess.run(command, cwd=comfyui_dir, env=env, check=False).returncode

    started = time.monotonic()
    stats = build(output)
    seconds = round(time.monotonic() - started, 1)
    info = {"recipe": RECIPE_VERSION, "seconds": seconds, "bytes": output.stat().st_size, **stats}
    marker_for(output).write_text(json.dumps(info) + "\n")
    print(
        f"[build-test-checkpoint] built {output} in {seconds} s: "
        f"{info['bytes'] / 1e6:.0f} MB, {stats['parameters'] / 1e6:.0f} M parameters",
        file=sys.stderr,
    )
    print(f"CHECKPOINT={output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
