"""Upload an image, wait until it is ready, then run a workflow that uses it by name.

The workflow (``flows/workflows/blur_invert.json``) is LoadImage → ImageBlur → ImageInvert → SaveImage;
LoadImage refers to the uploaded input by its name.

    export COMFY_API_KEY=comfyui-...  COMFY_BASE_URL=http://127.0.0.1:8765  # the emulator
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python flows/upload_pipeline.py [path/to/image.png]

Without a path, a small generated PNG is uploaded.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from prefect_comfy import (
    download_comfy_outputs,
    submit_comfy_job,
    upload_comfy_input,
    wait_for_comfy_input,
    wait_for_comfy_job,
)
from prefect_comfy.backends.cloud.block import ComfyCloudCredentials

WORKFLOW = Path(__file__).parent / "workflows" / "blur_invert.json"


def sample_png(path: Path, side: int = 32) -> Path:
    """Write a small gradient PNG (no imaging library needed)."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(side) for v in (x * 8 % 256, y * 8 % 256, 128))
        for y in range(side)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


def blur_invert_workflow(input_name: str, blur_radius: int = 4) -> dict[str, Any]:
    """The template with LoadImage pointed at ``input_name``."""
    workflow = json.loads(WORKFLOW.read_text())
    workflow["1"]["inputs"]["image"] = input_name
    workflow["2"]["inputs"]["blur_radius"] = blur_radius
    return workflow


async def credentials_from(block: str | None) -> ComfyCloudCredentials:
    if block:
        return await ComfyCloudCredentials.aload(block)
    return ComfyCloudCredentials()


async def process_input(
    credentials: ComfyCloudCredentials,
    input_name: str,
    *,
    blur_radius: int = 4,
    output_dir: str = "outputs/upload",
    timeout: float = 600,
    tags: list[str] | None = None,
) -> list[str]:
    """Run the blur/invert workflow on a ready input; return the downloaded files."""
    workflow = blur_invert_workflow(input_name, blur_radius)
    job = await submit_comfy_job(credentials, workflow, tags=tags or ["upload-pipeline"])
    job = await wait_for_comfy_job(credentials, job.id, timeout=timeout)
    files = await download_comfy_outputs(credentials, job, Path(output_dir) / job.id)
    return [str(f) for f in files]


@flow(name="comfy-upload-pipeline", log_prints=True)
async def upload_pipeline(
    image_path: str | None = None,
    input_name: str | None = None,
    blur_radius: int = 4,
    credentials_block: str | None = None,
    output_dir: str = "outputs/upload",
    timeout: float = 600,
    tags: list[str] | None = None,
) -> list[str]:
    """Upload ``image_path`` (or a generated PNG), wait for it, blur and invert it.

    Args:
        image_path: the image to upload; a small generated PNG when omitted.
        input_name: the name the workflow uses; default a unique name from the file's.
        blur_radius: ImageBlur's radius.
        credentials_block: a saved ``ComfyCloudCredentials`` block; default the environment.
        output_dir: where the outputs land.
        timeout: seconds to wait for the upload and for the job, each.
        tags: Comfy tags of the input and the job.

    Returns:
        The paths of the downloaded outputs.
    """
    log = get_run_logger()
    credentials = await credentials_from(credentials_block)
    if image_path is None:
        image_path = str(sample_png(Path(tempfile.mkdtemp()) / "sample.png"))
    name = input_name or f"{uuid.uuid4().hex[:8]}-{Path(image_path).name}"
    tags = tags or ["upload-pipeline"]
    uploaded = await upload_comfy_input(credentials, image_path, name=name, tags=tags)
    ready = await wait_for_comfy_input(credentials, uploaded.id, timeout=timeout)
    log.info("Input %s is ready as %r", ready.id, ready.name)
    return await process_input(
        credentials,
        ready.name,
        blur_radius=blur_radius,
        output_dir=output_dir,
        timeout=timeout,
        tags=tags,
    )


if __name__ == "__main__":
    for f in asyncio.run(upload_pipeline(image_path=sys.argv[1] if len(sys.argv) > 1 else None)):
        print(f)
