"""Reading and checking a workflow graph before anything is sent: the one place that does it.

Every door the Prefect layer opens (the flow, the job block, ``submit_comfy_job``) calls
:func:`load_workflow` once, so a bad graph raises :class:`~prefect_comfy.exceptions.InvalidWorkflow`
everywhere, with a message that says what to do, before any request.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect_comfy.exceptions import InvalidWorkflow

__all__ = ["load_workflow"]

API_FORMAT_HINT = (
    "export it in API format with 'Save (API format)' (Workflow > Export (API)) in ComfyUI"
)
"""What to do with a graph that is not in API format."""

_SHAPE = (
    "A workflow must be a non-empty dict of nodes in ComfyUI API format "
    '({"1": {"class_type": ..., "inputs": {...}}, ...})'
)


def load_workflow(workflow: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """An API-format workflow graph from a dict, a JSON text, or the path of a JSON file.

    Checked locally before any request: the graph must be a non-empty mapping of node ids to nodes,
    each with a ``class_type`` and an ``inputs`` mapping, and hold only what JSON can carry (no
    NaN or infinity).

    Raises:
        InvalidWorkflow: not a graph in API format (a UI-format export says so in one line), not
            JSON, or no such file.

    Example:
        >>> load_workflow({"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64}}})
        {'1': {'class_type': 'EmptyLatentImage', 'inputs': {'width': 64}}}
    """
    graph: Any = workflow
    if isinstance(workflow, (str, os.PathLike)):
        graph = _parse(*_text_of(workflow))
    _check_graph(graph)
    return dict(graph)


def _text_of(workflow: str | os.PathLike[str]) -> tuple[str, str]:
    """``(source, text)``: the JSON text given, or read from the file named."""
    if isinstance(workflow, str) and workflow.lstrip()[:1] in ("{", "["):
        return "The workflow text", workflow
    path = Path(workflow).expanduser()
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8")
    if isinstance(workflow, str):
        try:  # JSON that is no graph ("5", "null", a quoted string): say so, not "no file"
            json.loads(workflow)
        except ValueError:
            pass
        else:
            raise InvalidWorkflow(f"The workflow text is JSON but not a graph. {_SHAPE}")
    raise InvalidWorkflow(
        f"No workflow file at {str(path)!r} (give a graph as a dict, as JSON text, or the path "
        "of a JSON file)"
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse(source: str, text: str) -> Any:
    try:
        # A byte-order mark (Windows editors write one) is no reason to refuse a file.
        return json.loads(text.removeprefix("\ufeff"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidWorkflow(f"{source} is not JSON: {exc}") from None


def _check_graph(graph: Any) -> None:
    if isinstance(graph, Mapping) and isinstance(graph.get("nodes"), list):
        raise InvalidWorkflow(
            f'This is a UI-format workflow (it has a "nodes" list); {API_FORMAT_HINT}'
        )
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
