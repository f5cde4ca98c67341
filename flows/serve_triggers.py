"""Deployments that Comfy events start: an input or a model becoming ready.

``prefect-comfy listen`` (or the sensor inside a flow) turns Comfy events into Prefect events; the
shipped trigger helpers (:mod:`prefect_comfy.orchestration.triggers`) turn those into flow runs with the event's
values as parameters. Only resources tagged ``auto`` trigger here, so that ordinary uploads don't.

    export COMFY_API_KEY=comfyui-...  COMFY_BASE_URL=http://127.0.0.1:8765  # the emulator
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    prefect-comfy listen &                       # forwards comfy.* events into Prefect
    python flows/serve_triggers.py               # serves the two deployments below

Then upload an input tagged ``auto``; ``process-ready-input`` runs with its id and name, and saves
its images under ``$COMFY_OUTPUT_DIR/triggered`` (by default in the system's temporary folder, never
in the checkout). The same two deployments are written out in YAML in ``flows/prefect.yaml``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger, serve
from prefect.artifacts import acreate_markdown_artifact
from upload_pipeline import credentials_from, process_input

from prefect_comfy import on_input_ready, on_model_ready

TRIGGER_TAG = os.environ.get("COMFY_TRIGGER_TAG", "auto")
"""Comfy tag that makes an upload start the deployments (``COMFY_TRIGGER_TAG``, default ``auto``)."""

OUTPUT_ROOT = Path(
    os.environ.get("COMFY_OUTPUT_DIR") or Path(tempfile.gettempdir()) / "prefect-comfy-outputs"
)
"""Where triggered runs save their images (``COMFY_OUTPUT_DIR``), outside the checkout by default."""


@flow(name="comfy-process-ready-input", log_prints=True)
async def process_ready_input(
    input_id: str,
    input_name: str | None = None,
    blur_radius: int = 4,
    credentials_block: str | None = None,
    output_dir: str | None = None,
) -> list[str]:
    """Blur and invert an input that just became ready (started by ``comfy.input.ready``).

    The images go to ``output_dir``, by default ``OUTPUT_ROOT/triggered``.
    """
    log = get_run_logger()
    credentials = await credentials_from(credentials_block)
    if input_name is None:
        async with credentials.get_backend() as backend:
            input_name = (await backend.get_input(input_id)).name
    log.info("Processing Comfy input %s (%s)", input_id, input_name)
    return await process_input(
        credentials,
        input_name,
        blur_radius=blur_radius,
        output_dir=output_dir or str(OUTPUT_ROOT / "triggered"),
        tags=["triggered"],
    )


@flow(name="comfy-register-ready-model", log_prints=True)
async def register_ready_model(
    model_id: str, model_name: str | None = None, model_type: str | None = None
) -> str:
    """Record a model that just became ready (started by ``comfy.model.ready``) in an artifact."""
    get_run_logger().info("Comfy model %s (%s) is ready: %s", model_id, model_type, model_name)
    await acreate_markdown_artifact(
        key="comfy-model-ready",
        markdown=f"Model **{model_name}** (`{model_id}`, {model_type or 'unknown type'}) is ready "
        "to be used by name in workflows.",
    )
    return model_id


def deployments(tag: str = TRIGGER_TAG) -> list:
    """The two deployments, each with its shipped trigger narrowed to ``tag``."""
    return [
        process_ready_input.to_deployment(
            name="process-ready-input", triggers=[on_input_ready(tags=[tag])]
        ),
        register_ready_model.to_deployment(
            name="register-ready-model", triggers=[on_model_ready(tags=[tag])]
        ),
    ]


if __name__ == "__main__":
    serve(*deployments())
