"""A workflow's exposed inputs as a JSON schema: the typed form of a deployment.

An *exposed input* is named ``NODE.INPUT``, where ``NODE`` is a node's id (``"6"``), its title in
the editor (``"Positive Prompt"``, the node's ``_meta.title``) or its class type where only one
node has it (``"KSampler"``). :func:`inputs_schema` turns a list of such names into the JSON
schema of one object with a property per name, which Prefect's run form draws: its type, the
workflow's value as default, the range and the choices (a dropdown) from the server's node catalog
(the mapping ``GET /object_info`` returns), and a description naming the node.
:func:`apply_inputs` writes values given under those names into a copy of the graph.

Pure code, no I/O.

Example:
    >>> graph = {"6": {"class_type": "CLIPTextEncode", "_meta": {"title": "Positive Prompt"},
    ...                "inputs": {"text": "a fox", "clip": ["4", 1]}}}
    >>> inputs_schema(graph, ["Positive Prompt.text"])["properties"]["Positive Prompt.text"]["default"]
    'a fox'
    >>> apply_inputs(graph, {"Positive Prompt.text": "an owl"})["6"]["inputs"]["text"]
    'an owl'
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prefect_comfy.exceptions import ComfyConfigError

__all__ = ["ExposedInput", "apply_inputs", "inputs_schema", "resolve_input"]

_JSON_TYPES = {"INT": "integer", "FLOAT": "number", "STRING": "string", "BOOLEAN": "boolean"}
"""Catalog widget types and the JSON schema type of their values."""


@dataclass(frozen=True)
class ExposedInput:
    """Where an exposed name points in a graph.

    Attributes:
        name: the name as given (``"Positive Prompt.text"``).
        node_id: the node's id in the graph.
        input: the input's name on that node.
        class_type: the node's class.
        title: the node's title in the editor, or ``None``.
        value: the workflow's value of that input.
    """

    name: str
    node_id: str
    input: str
    class_type: str
    title: str | None
    value: Any


def _title(node: Mapping[str, Any]) -> str | None:
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, Mapping) else None
    return title if isinstance(title, str) else None


def _label(node_id: str, node: Mapping[str, Any]) -> str:
    title = _title(node)
    named = f" {title!r}" if title and title != node["class_type"] else ""
    return f"{node_id}{named} ({node['class_type']})"


def _find_node(graph: Mapping[str, Any], ref: str, name: str) -> str:
    """The id of the node ``ref`` names: an id, a title, or a class type only one node has."""
    if ref in graph:
        return ref
    for key, attribute in (("title", _title), ("class type", lambda n: n["class_type"])):
        found = [node_id for node_id, node in graph.items() if attribute(node) == ref]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            nodes = ", ".join(_label(i, graph[i]) for i in found)
            raise ComfyConfigError(
                f"{name!r}: {len(found)} nodes have the {key} {ref!r} ({nodes}); "
                f"name one by its id, such as '{found[0]}.{name.rpartition('.')[2]}'"
            )
    nodes = ", ".join(_label(i, n) for i, n in graph.items())
    raise ComfyConfigError(
        f"{name!r}: no node has the id, title or class type {ref!r}; the workflow has {nodes}"
    )


def resolve_input(graph: Mapping[str, Any], name: str) -> ExposedInput:
    """Where the input called ``name`` (``NODE.INPUT``) is in an API-format ``graph``.

    Raises:
        ComfyConfigError: the name has no dot, names no node or several, names an input the node
            lacks, or an input fed by a link (which holds no value); the message lists the
            candidates.
    """
    ref, dot, input_name = name.rpartition(".")  # a title may hold dots, an input name does not
    if not dot or not ref or not input_name:
        raise ComfyConfigError(
            f"{name!r} is not an input name: write NODE.INPUT, where NODE is a node's id, title "
            "or class type (such as 'KSampler.seed' or '6.text')"
        )
    node_id = _find_node(graph, ref, name)
    node = graph[node_id]
    inputs = node.get("inputs", {})
    values = sorted(k for k, v in inputs.items() if not _is_link(v))
    if input_name not in inputs:
        raise ComfyConfigError(
            f"{name!r}: node {_label(node_id, node)} has no input {input_name!r}; "
            f"its inputs with values: {', '.join(values) or 'none'}"
        )
    if _is_link(inputs[input_name]):
        raise ComfyConfigError(
            f"{name!r}: input {input_name!r} of node {_label(node_id, node)} is fed by a link "
            f"and holds no value; inputs with values: {', '.join(values) or 'none'}"
        )
    return ExposedInput(
        name, node_id, input_name, node["class_type"], _title(node), inputs[input_name]
    )


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def _catalog_entry(object_info: Mapping[str, Any] | None, exposed: ExposedInput) -> Any:
    """``[type, options]`` of the input in the catalog, or ``None`` if the catalog lacks it."""
    if object_info is None:
        return None
    node = object_info.get(exposed.class_type)
    if not isinstance(node, Mapping):
        raise ComfyConfigError(
            f"{exposed.name!r}: the server's node catalog has no node type "
            f"{exposed.class_type!r}; install the custom node that provides it"
        )
    groups = node.get("input", {})
    for group in ("required", "optional"):
        entry = (groups.get(group) or {}).get(exposed.input)
        if entry is not None:
            return entry if isinstance(entry, (list, tuple)) else [entry]
    return None


def _field(exposed: ExposedInput, entry: Any, position: int) -> dict[str, Any]:
    where = f"node {exposed.node_id}" + (f" {exposed.title!r}" if exposed.title else "")
    field: dict[str, Any] = {
        "title": exposed.name,
        "description": f"Input {exposed.input!r} of {where} ({exposed.class_type}).",
        "position": position,
    }
    kind = entry[0] if entry else None
    options = entry[1] if entry and len(entry) > 1 and isinstance(entry[1], Mapping) else {}
    if isinstance(kind, (list, tuple)) or kind == "COMBO":
        choices = (
            list(kind) if isinstance(kind, (list, tuple)) else list(options.get("options", []))
        )
        field["enum"] = choices
        if choices and all(isinstance(c, str) for c in choices):
            field["type"] = "string"
    elif kind in _JSON_TYPES:
        field["type"] = _JSON_TYPES[kind]
        for option, keyword in (("min", "minimum"), ("max", "maximum")):
            if isinstance(options.get(option), (int, float)):
                field[keyword] = options[option]
        if kind == "STRING" and options.get("multiline"):
            field["format"] = "textarea"
    else:  # no catalog, or a type it does not describe: the workflow's value says
        field.update(_type_of_value(exposed.value))
    field["default"] = exposed.value
    _check_default(exposed, field)
    return field


def _type_of_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    return {}


def _check_default(exposed: ExposedInput, field: dict[str, Any]) -> None:
    """The workflow's own value must fit what the catalog allows, or no run could keep it."""
    value = exposed.value
    if "enum" in field and value not in field["enum"]:
        shown = ", ".join(map(str, field["enum"][:20])) or "none"
        raise ComfyConfigError(
            f"{exposed.name!r}: the workflow's value {value!r} is not one the server offers; "
            f"it has: {shown}"
        )
    low, high = field.get("minimum"), field.get("maximum")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and ((low is not None and value < low) or (high is not None and value > high)):
        raise ComfyConfigError(
            f"{exposed.name!r}: the workflow's value {value!r} is outside {low}..{high}"
        )


def inputs_schema(
    graph: Mapping[str, Any],
    names: Iterable[str],
    object_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON schema of an object holding the exposed inputs ``names`` of ``graph``.

    One property per name, in the order given (``position``), keyed by the name itself: its
    ``type``, the workflow's value as ``default``, ``minimum`` and ``maximum``, ``enum`` for
    choices and a ``description`` naming the node. Types, ranges and choices come from
    ``object_info`` (the node catalog, as ``GET /object_info`` returns it); without one, the type
    is that of the workflow's value. No property is required: one left out keeps the workflow's
    value. Other names are refused (``additionalProperties: false``).

    Raises:
        ComfyConfigError: no names, a name given twice, a name that does not resolve (see
            :func:`resolve_input`), a node type the catalog lacks, or a workflow value outside
            what the catalog allows.
    """
    names = list(names)
    if not names:
        raise ComfyConfigError("Expose at least one input, such as 'KSampler.seed'")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ComfyConfigError(f"Inputs exposed more than once: {', '.join(twice)}")
    resolved = [resolve_input(graph, name) for name in names]
    seen: dict[tuple[str, str], str] = {}
    for one in resolved:
        earlier = seen.setdefault((one.node_id, one.input), one.name)
        if earlier != one.name:
            raise ComfyConfigError(
                f"{one.name!r} and {earlier!r} are the same input ({one.node_id}.{one.input}); "
                "expose it once"
            )
    properties = {
        one.name: _field(one, _catalog_entry(object_info, one), position)
        for position, one in enumerate(resolved)
    }
    return {"type": "object", "properties": properties, "additionalProperties": False}


def apply_inputs(graph: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``graph`` with each value written to the input its name resolves to.

    Raises:
        ComfyConfigError: a name that does not resolve (see :func:`resolve_input`).
    """
    out = copy.deepcopy(dict(graph))
    for name, value in values.items():
        one = resolve_input(out, name)
        out[one.node_id]["inputs"][one.input] = value
    return out
