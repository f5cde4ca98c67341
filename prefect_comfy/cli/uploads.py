"""``prefect-comfy upload input|model FILE [--wait]``: upload a file for workflows to use by name."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_comfy.cli.connect import BlockOption, backend_for
from prefect_comfy.cli.errors import UsageProblem
from prefect_comfy.cli.help import command, group
from prefect_comfy.exceptions import UploadFailed
from prefect_comfy.models import MODEL_TYPES
from prefect_comfy.waiting.waits import wait_for

app = group("upload", "Upload an input image or a model file.")

FileArgument = Annotated[
    Path, typer.Argument(help="The file to upload.", metavar="FILE", show_default=False)
]
NameOption = Annotated[
    str | None,
    typer.Option(
        "--name", help="Name workflows use for it. Default: the file's name.", metavar="NAME",
        show_default=False,
    ),
]  # fmt: skip
TagOption = Annotated[
    list[str] | None,
    typer.Option("--tag", "-t", help="Tag for the upload (repeat for several).", metavar="TAG"),
]
WaitOption = Annotated[
    bool, typer.Option("--wait", help="Wait until the server says it is ready (or failed).")
]
TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout", help="Seconds --wait waits. Default: no limit.", metavar="SECONDS", min=0,
        show_default=False,
    ),
]  # fmt: skip


@command(app, "input")
def upload_input(
    file: FileArgument,
    name: NameOption = None,
    tag: TagOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    block: BlockOption = None,
) -> None:
    """Upload an input (an image, a mask, a video) that workflows load by name."""
    _check_file(file)
    asyncio.run(_upload("input", file, name, tag or [], wait, timeout, block))


@command(app, "model")
def upload_model(
    file: FileArgument,
    model_type: Annotated[
        str,
        typer.Option(
            "--type",
            help="Kind of model: " + ", ".join(MODEL_TYPES) + ".",
            metavar="TYPE",
            show_default=False,
        ),
    ],  # fmt: skip
    name: NameOption = None,
    tag: TagOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    block: BlockOption = None,
) -> None:
    """Upload a model file (checkpoint, LoRA, VAE …) that workflows load by name."""
    _check_file(file)
    if model_type not in MODEL_TYPES:
        raise UsageProblem(f"--type {model_type!r} is not one of: {', '.join(MODEL_TYPES)}")
    asyncio.run(_upload("model", file, name, tag or [], wait, timeout, block, model_type))


def _check_file(file: Path) -> None:
    if not file.is_file():
        raise UsageProblem(f"No file at {str(file)!r}")


async def _upload(
    kind: str,
    file: Path,
    name: str | None,
    tags: list[str],
    wait: bool,
    timeout: float | None,
    block: str | None,
    model_type: str | None = None,
) -> None:
    async with await backend_for(block) as backend:
        options: dict[str, Any] = {"name": name or file.name, "tags": tags}
        if kind == "model":
            resource = await backend.upload_model(file, type=model_type, **options)
        else:
            resource = await backend.upload_input(file, **options)
        typer.echo(f"{kind} {resource.id} {resource.name}: {resource.status}")
        if not wait or resource.is_terminal:
            final = resource.status
            error = resource.error
        else:
            event = await wait_for(backend, kind, resource.id, timeout=timeout)
            final = event.event.split(".", 1)[1]
            error = event.payload.get("error")
            typer.echo(f"{kind} {resource.id} {resource.name}: {final}")
    if final == "failed":
        message = error.get("message") if isinstance(error, dict) else getattr(error, "message", "")
        raise UploadFailed(kind, resource.id, error_message=message)
