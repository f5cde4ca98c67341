"""``prefect-comfy validate WORKFLOW``, and how every command reads a workflow file.

A workflow file holds a graph in ComfyUI's API format (``{"3": {"class_type": "KSampler",
"inputs": {...}}, ...}``, what "Export (API)" writes), a workflow in the editor's save format
(``nodes`` and ``links``, what Save and Export write), or is a PNG ComfyUI saved. A save-format
workflow is converted with the server's node catalog
(`prepare_workflow`); ``--set NODE.INPUT=VALUE`` sets inputs by name.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_comfy.cli.connect import BlockOption, backend_for
from prefect_comfy.cli.errors import UsageProblem
from prefect_comfy.exceptions import InvalidWorkflow
from prefect_comfy.workflows.convert import is_save_format
from prefect_comfy.workflows.inputs import apply_inputs, parse_assignment
from prefect_comfy.workflows.load import load_workflow

MAX_WORKFLOW_BYTES = 64 * 2**20
"""The largest workflow file read (checked before reading; as much as one API answer may hold)."""


def read_workflow(path: Path) -> dict[str, Any]:
    """The workflow in a file: an API-format graph, a save-format workflow, or a ComfyUI PNG's.

    Raises:
        UsageProblem: no such file, not UTF-8 JSON, neither format, or a PNG without a workflow.
    """
    if not path.is_file():
        raise UsageProblem(f"No workflow file at {str(path)!r}")
    size = path.stat().st_size
    if size > MAX_WORKFLOW_BYTES:
        raise UsageProblem(
            f"{path} is {size / 2**20:,.0f} MB; a workflow file is at most "
            f"{MAX_WORKFLOW_BYTES // 2**20} MB (put large inputs in files and upload them)"
        )
    try:
        return load_workflow(path)
    except InvalidWorkflow as exc:
        message = str(exc)  # the file's name first, once: the user may have passed several
        raise UsageProblem(message if str(path) in message else f"{path}: {message}") from None


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    """``--set`` options as inputs by name (a value is JSON when it parses, else text).

    Raises:
        UsageProblem: an option that is not ``NODE.INPUT=VALUE``.
    """
    inputs: dict[str, Any] = {}
    for text in sets or []:
        try:
            name, value = parse_assignment(text)
        except InvalidWorkflow as exc:
            raise UsageProblem(f"--set {exc}") from None
        inputs[name] = value
    return inputs


SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help='Set an input by name: "Positive Prompt.text=a fox", "KSampler.seed=7", "3.steps=20" '
        "(a node by id, title or unique class type; the value is JSON if it parses, else text). "
        "Repeat for several.",
        metavar="NODE.INPUT=VALUE",
    ),
]


def describe(workflow: dict[str, Any]) -> str:
    """``save-format workflow with 7 nodes`` or ``API-format graph with 7 nodes``."""
    if is_save_format(workflow):
        return f"save-format workflow with {len(workflow['nodes'])} nodes"
    return f"API-format graph with {len(workflow)} nodes"


WorkflowArgument = Annotated[
    Path,
    typer.Argument(
        help="A workflow saved by ComfyUI: a JSON file in the editor's save format or in API "
        "format, or a PNG ComfyUI saved.",
        metavar="WORKFLOW",
        show_default=False,
    ),
]


def validate(
    workflow: WorkflowArgument,
    offline: Annotated[
        bool,
        typer.Option("--offline", help="Check the file only; do not ask the server."),
    ] = False,
    sets: SetOption = None,
    block: BlockOption = None,
) -> None:
    """Check a workflow file: its format here, then its conversion, inputs and nodes on the server.

    A save-format workflow is converted with the server's node catalog. Comfy Cloud checks a graph
    without running it; a self-hosted ComfyUI checks a graph only when it is queued, so for a
    ComfyUIServer block the conversion and the inputs are checked, not the graph.
    """
    loaded = read_workflow(workflow)
    inputs = parse_sets(sets)
    typer.echo(f"{workflow}: {describe(loaded)}")
    if offline:
        if is_save_format(loaded):
            typer.echo(
                "Save format is converted with the server's node catalog: not checked offline."
            )
        elif inputs:
            apply_inputs(loaded, inputs)
            typer.echo(f"The {len(inputs)} input(s) fit the graph.")
        return
    problems, kind = asyncio.run(_server_check(loaded, inputs, block))
    if problems is None:
        typer.echo(f"The server was not asked: {UNCHECKED.get(kind, UNCHECKED['comfyui'])}")
        return
    if problems:
        for problem in problems:
            typer.echo(f"  {problem}", err=True)
        raise UsageProblem(f"The server refused {workflow}: {len(problems)} problem(s), above")
    typer.echo("The server accepts it.")


UNCHECKED = {
    "comfyui": "a self-hosted ComfyUI checks a graph when it runs.",
    "v2": "a Comfy API v2 server checks a graph when it is submitted (it has no separate check).",
}
"""Why a server of each kind was not asked (the default: a kind that cannot check a graph)."""


async def _server_check(
    workflow: dict[str, Any], inputs: dict[str, Any], block: str | None
) -> tuple[list[str] | None, str]:
    """The server's objections (``[]`` for none), or ``None`` for a server that cannot check;
    and the server's kind."""
    from prefect_comfy.orchestration.prepare import prepare_workflow

    async with await backend_for(block) as backend:
        kind = backend.kind
        prepared = await prepare_workflow(backend, workflow, inputs)
        if prepared.converted:
            typer.echo(f"Converted to an API-format graph with {len(prepared.graph)} nodes.")
        if inputs:
            typer.echo(f"The {len(inputs)} input(s) fit the graph and the server's catalog.")
        client = getattr(backend, "client", None)
        if client is None or not hasattr(client, "validate_workflow"):
            return None, kind
        answer = await client.validate_workflow(prepared.graph)
    if answer.valid:
        return [], kind
    lines = []
    for err in answer.errors or [{"message": "invalid workflow"}]:
        where = f"node {err['node_id']}" if err.get("node_id") is not None else "workflow"
        if err.get("class_type"):
            where += f" ({err['class_type']})"
        if err.get("field"):
            where += f", input {err['field']}"
        lines.append(f"{where}: {err.get('message', 'invalid')}")
    return lines, kind
