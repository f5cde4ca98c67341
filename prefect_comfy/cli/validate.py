"""``prefect-comfy validate WORKFLOW.json``, and how every command reads a workflow file.

A workflow file must hold a graph in ComfyUI's API format (``{"3": {"class_type": "KSampler",
"inputs": {...}}, ...}``): what ComfyUI's "Save (API format)" writes. The graph the editor saves
by default (with ``nodes`` and ``links`` lists) is the UI format, which no server runs: it is told
apart and named, with the way to export the other one.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_comfy.cli.connect import BlockOption, backend_for
from prefect_comfy.cli.errors import UsageProblem

EXPORT_HINT = "open it in ComfyUI and export it with 'Save (API format)' (Workflow menu)"


MAX_WORKFLOW_BYTES = 64 * 2**20
"""The largest workflow file read (checked before reading; as much as one API answer may hold)."""


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number; ComfyUI cannot use it")


def read_workflow(path: Path) -> dict[str, Any]:
    """The API-format graph in a JSON file.

    Raises:
        UsageProblem: no such file, not JSON, a UI-format export, or not a graph of nodes.
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
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is fine
        graph = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise UsageProblem(f"{path}: its JSON is nested too deeply to be a workflow") from None
    except UnicodeDecodeError:
        raise UsageProblem(f"{path} is not a text file; a workflow is JSON") from None
    except json.JSONDecodeError as exc:
        raise UsageProblem(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except ValueError as exc:  # NaN, Infinity
        raise UsageProblem(f"{path}: {exc}") from None
    return check_graph(graph, str(path))


def check_graph(graph: Any, source: str) -> dict[str, Any]:
    """``graph`` if it is an API-format graph, else a :class:`UsageProblem` that says why."""
    if isinstance(graph, dict) and isinstance(graph.get("nodes"), list):
        raise UsageProblem(f"{source} is a UI-format workflow; {EXPORT_HINT}")
    if not isinstance(graph, dict) or not graph:
        raise UsageProblem(
            f"{source} does not hold a workflow graph: expected a JSON object of nodes such as "
            '{"1": {"class_type": "EmptyImage", "inputs": {...}}}; ' + EXPORT_HINT
        )
    bad = [
        str(node_id)
        for node_id, node in graph.items()
        if not isinstance(node, dict)
        or not isinstance(node.get("class_type"), str)
        or not isinstance(node.get("inputs", {}), dict)
    ]
    if bad:
        raise UsageProblem(
            f"{source}: node(s) {', '.join(bad[:5])} have no class_type or no inputs object; "
            f"an API-format graph maps node ids to {{class_type, inputs}} ({EXPORT_HINT})"
        )
    if any(_has_non_finite(node.get("inputs", {})) for node in graph.values()):
        raise UsageProblem(f"{source}: an input is NaN or infinite; ComfyUI cannot use it")
    return graph


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


WorkflowArgument = Annotated[
    Path,
    typer.Argument(
        help="A workflow exported from ComfyUI with 'Save (API format)' (a JSON file).",
        metavar="WORKFLOW.json",
        show_default=False,
    ),
]


def validate(
    workflow: WorkflowArgument,
    offline: Annotated[
        bool,
        typer.Option("--offline", help="Check the file only; do not ask the server."),
    ] = False,
    block: BlockOption = None,
) -> None:
    """Check a workflow file: its format here, then its nodes and inputs on the server.

    Comfy Cloud checks a graph without running it; a self-hosted ComfyUI checks a graph only when
    it is queued, and Comfy API v2 when it is submitted, so for their blocks only the file is
    checked.
    """
    graph = read_workflow(workflow)
    typer.echo(f"{workflow}: API-format graph with {len(graph)} nodes")
    if offline:
        return
    problems, kind = asyncio.run(_server_check(graph, block))
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


async def _server_check(graph: dict[str, Any], block: str | None) -> tuple[list[str] | None, str]:
    """The server's objections (``[]`` for none), or ``None`` for a server that cannot check;
    and the server's kind."""
    async with await backend_for(block) as backend:
        kind = backend.kind
        client = getattr(backend, "client", None)
        if client is None or not hasattr(client, "validate_workflow"):
            return None, kind
        answer = await client.validate_workflow(graph)
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
