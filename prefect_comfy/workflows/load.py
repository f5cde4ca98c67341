"""Reading and checking a workflow before anything is sent: the one place that does it.

Every door the Prefect layer opens (the flow, the job block, ``submit_comfy_job``, the CLI) calls
`load_workflow` once, so a bad workflow raises
`InvalidWorkflow` everywhere, with a message that says what to do,
before any request. It reads both formats ComfyUI writes, from a dict, JSON text, a JSON file or a
PNG that ComfyUI saved (see `prefect_comfy.workflows.png`):

- the **API format** (``{"3": {"class_type": ..., "inputs": {...}}}``), checked node by node;
- the editor's **save format** (``nodes`` and ``links`` lists), checked for its shape only: it is
  converted against the server's node catalog at submit
  (`prefect_comfy.workflows.convert.convert_workflow`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect_comfy.exceptions import InvalidWorkflow
from prefect_comfy.workflows.convert import is_save_format
from prefect_comfy.workflows.png import PNG_SIGNATURE, workflow_of_png

__all__ = ["MAX_WORKFLOW_BYTES", "load_workflow"]

MAX_WORKFLOW_BYTES = 64 * 2**20
"""The largest workflow file (or PNG) read; the size is checked before reading."""

API_FORMAT_HINT = (
    "export it in API format with 'Save (API format)' (Workflow > Export (API)) in ComfyUI"
)
"""What to do with a graph that is in neither format."""

_SHAPE = (
    "A workflow must be a non-empty dict: ComfyUI's API format "
    '({"1": {"class_type": ..., "inputs": {...}}, ...}) or the editor\'s save format '
    '({"nodes": [...], "links": [...]})'
)


def load_workflow(workflow: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """A workflow, API or save format, from a dict, a JSON text, a JSON file or a ComfyUI PNG.

    Checked locally before any request. An API-format graph must be a non-empty mapping of node
    ids to nodes, each with a ``class_type`` and an ``inputs`` mapping, holding only what JSON can
    carry (no NaN or infinity). A save-format workflow must have a ``nodes`` list of objects; it
    comes back as it is, to be converted against the server's catalog. A file is read as UTF-8
    (a byte-order mark is skipped), at most `MAX_WORKFLOW_BYTES`; a PNG gives its
    ``workflow`` chunk, else its ``prompt`` chunk.

    Raises:
        InvalidWorkflow: neither format, not JSON, not UTF-8, too large, no such file, or a PNG
            without a workflow.

    Example:
        >>> load_workflow({"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64}}})
        {'1': {'class_type': 'EmptyLatentImage', 'inputs': {'width': 64}}}
    """
    graph: Any = workflow
    if isinstance(workflow, (str, os.PathLike)):
        graph = _read(workflow)
    if is_save_format(graph):
        _check_save_format(graph)
        return dict(graph)
    _check_graph(graph)
    return dict(graph)


def _read(workflow: str | os.PathLike[str]) -> Any:
    """The JSON given as text, or read from the file (JSON or a ComfyUI PNG) named."""
    if isinstance(workflow, str) and workflow.lstrip("\ufeff \t\r\n")[:1] in ("{", "["):
        return _parse("The workflow text", workflow.lstrip("\ufeff"))
    path = Path(workflow).expanduser()
    if path.is_file():
        return _read_file(path)
    if isinstance(workflow, str):
        try:  # JSON that is no graph ("5", "null", a quoted string): say so, not "no file"
            json.loads(workflow)
        except ValueError:
            pass
        else:
            raise InvalidWorkflow(f"The workflow text is JSON but not a graph. {_SHAPE}")
    raise InvalidWorkflow(
        f"No workflow file at {str(path)!r} (give a graph as a dict, as JSON text, or the path "
        "of a JSON file or of a PNG saved by ComfyUI)"
    )


def _read_file(path: Path) -> Any:
    size = path.stat().st_size
    if size > MAX_WORKFLOW_BYTES:
        raise InvalidWorkflow(
            f"{path} is {size} bytes, more than the {MAX_WORKFLOW_BYTES} a workflow file may be"
        )
    data = path.read_bytes()
    if data.startswith(PNG_SIGNATURE):
        return workflow_of_png(data, str(path))
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is skipped
    except UnicodeDecodeError as exc:
        raise InvalidWorkflow(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save "
            "the workflow as UTF-8 JSON, or give the PNG ComfyUI saved"
        ) from None
    return _parse(str(path), text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse(source: str, text: str) -> Any:
    try:
        # A byte-order mark (Windows editors write one) is no reason to refuse a file.
        return json.loads(text.removeprefix("\ufeff"), parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidWorkflow(f"{source}: its JSON is nested too deeply to be a workflow") from None
    except ValueError as exc:
        raise InvalidWorkflow(f"{source} is not JSON: {exc}") from None


def _check_save_format(workflow: Mapping[str, Any]) -> None:
    if not workflow["nodes"]:
        raise InvalidWorkflow("This save-format workflow has no nodes: there is nothing to run")
    bad = [i for i, node in enumerate(workflow["nodes"]) if not isinstance(node, Mapping)]
    if bad:
        raise InvalidWorkflow(
            f"This save-format workflow's nodes list holds {len(bad)} entries that are not nodes "
            f"(first at index {bad[0]}); {API_FORMAT_HINT}, or save it again from ComfyUI"
        )
    if "links" in workflow and not isinstance(workflow["links"], list):
        raise InvalidWorkflow("This save-format workflow's links are not a list")


def _check_graph(graph: Any) -> None:
    if not isinstance(graph, Mapping) or not graph:
        raise InvalidWorkflow(f"{_SHAPE}; got {type(graph).__name__}")
    problems = [p for node_id, node in graph.items() if (p := _node_problem(str(node_id), node))]
    if problems:
        raise InvalidWorkflow("The workflow is not a graph in API format", problems)


def _node_problem(node_id: str, node: Any) -> dict[str, Any] | None:
    if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
        return {"node_id": node_id, "message": "not a node with a class_type"}
    where = {"node_id": node_id, "class_type": node["class_type"]}
    inputs = node.get("inputs", {})
    if not isinstance(inputs, Mapping):
        return {**where, "field": "inputs", "message": "inputs must be a dict"}
    for name, value in inputs.items():
        message = _not_json(value)
        if message:
            return {**where, "field": str(name), "message": message}
    return None


def _not_json(value: Any) -> str | None:
    """Why a value cannot travel as JSON, or ``None`` if it can."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not valid JSON (give a finite number)"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return None
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return "holds NaN or infinity, which is not valid JSON (give finite numbers)"
    except RecursionError:
        return "is nested too deeply"
    except TypeError as exc:
        return f"holds a value JSON cannot carry: {exc}"
    return None
