"""A workflow's exposed inputs as a JSON schema: the typed form of a deployment.

An *exposed input* is named ``NODE.INPUT``, where ``NODE`` is a node's id (``"6"``), its title in
the editor (``"Positive Prompt"``, the node's ``_meta.title``) or its class type where only one
node has it (``"KSampler"``). `inputs_schema` turns a list of such names into the JSON
schema of one object with a property per name, which Prefect's run form draws: its type, the
workflow's value as default, the range and the choices (a dropdown) from the server's node catalog,
and a description naming the node. Names resolve as `prefect_comfy.workflows.inputs` resolves
them when a run sets them, so a name the form offers is one a run accepts.

Pure code, no I/O.

Example:
    >>> graph = {"6": {"class_type": "CLIPTextEncode", "_meta": {"title": "Positive Prompt"},
    ...                "inputs": {"text": "a fox", "clip": ["4", 1]}}}
    >>> field = inputs_schema(graph, ["Positive Prompt.text"])["properties"]["Positive Prompt.text"]
    >>> field["type"], field["default"]
    ('string', 'a fox')
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prefect_comfy.exceptions import InvalidInputs
from prefect_comfy.workflows.catalog import InputSpec, NodeCatalog
from prefect_comfy.workflows.inputs import resolve_inputs

__all__ = ["ExposedInput", "inputs_schema", "resolve_input"]

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
    return title if isinstance(title, str) and title else None


def _label(node_id: str, node: Mapping[str, Any]) -> str:
    title = _title(node)
    named = f" {title!r}" if title and title != node.get("class_type") else ""
    return f"{node_id}{named} ({node.get('class_type')})"


def _refused(name: str, message: str, node_id: str | None = None) -> InvalidInputs:
    del node_id  # the message names the node; node_errors would print it twice
    return InvalidInputs(f"Cannot expose {name!r}: {message}")


def resolve_input(graph: Mapping[str, Any], name: str) -> ExposedInput:
    """Where the input called ``name`` (``NODE.INPUT``) is in an API-format ``graph``.

    The node is found as `resolve_inputs` finds it (by id,
    title, or a class type only one node has); the input must hold a value in the graph.

    Raises:
        InvalidInputs: the name names no node or several, an input the node lacks, or an input
            fed by a link (which holds no value); the message lists the candidates.
    """
    found, problems = resolve_inputs(graph, {name: None})
    if problems:
        raise _refused(name, problems[0]["message"])
    [(node_id, input_name)] = found
    node = graph[node_id]
    inputs = node.get("inputs", {})
    values = ", ".join(sorted(k for k, v in inputs.items() if not _is_link(v))) or "none"
    if input_name not in inputs:
        message = f"node {_label(node_id, node)} has no input {input_name!r}; its inputs: {values}"
        raise _refused(name, message, node_id)
    if _is_link(inputs[input_name]):
        message = (
            f"input {input_name!r} of node {_label(node_id, node)} is fed by a link from node "
            f"{inputs[input_name][0]} and holds no value; inputs with values: {values}"
        )
        raise _refused(name, message, node_id)
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


def _spec(catalog: NodeCatalog | None, exposed: ExposedInput) -> InputSpec | None:
    """The input's entry in the catalog, or ``None`` without a catalog."""
    if catalog is None:
        return None
    node = catalog.node(exposed.class_type)
    if node is None:
        raise _refused(
            exposed.name,
            f"the server's node catalog has no node type {exposed.class_type!r}; install the "
            "custom node that provides it",
            exposed.node_id,
        )
    return node.input(exposed.input)


def _field(
    exposed: ExposedInput, spec: InputSpec | None, position: int, randomized: bool
) -> dict[str, Any]:
    where = f"node {exposed.node_id}" + (f" {exposed.title!r}" if exposed.title else "")
    field: dict[str, Any] = {
        "title": exposed.name,
        "description": f"Input {exposed.input!r} of {where} ({exposed.class_type}).",
        "position": position,
    }
    if randomized:
        field["description"] += " Leave it empty for a fresh random value on each run."
    if spec is not None and spec.choices:  # an empty list: the server did not list them
        field["enum"] = list(spec.choices)
        if all(isinstance(c, str) for c in spec.choices):
            field["type"] = "string"
    elif spec is not None and spec.type in _JSON_TYPES:
        field["type"] = _JSON_TYPES[spec.type]
        for limit, keyword in ((spec.minimum, "minimum"), (spec.maximum, "maximum")):
            if isinstance(limit, (int, float)) and not isinstance(limit, bool):
                field[keyword] = limit
        if spec.type == "STRING" and spec.options.get("multiline"):
            field["format"] = "textarea"  # Prefect's form draws a text area
    else:  # no catalog, or a type it does not describe: the workflow's value says
        field.update(_type_of_value(exposed.value))
    _check_default(exposed, field)
    if not randomized:  # a default would be sent with every run, and fix the seed
        field["default"] = exposed.value
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
        shown = ", ".join(map(str, field["enum"][:20]))
        raise _refused(
            exposed.name,
            f"the workflow's value {value!r} is not one the server offers; it has: {shown}",
            exposed.node_id,
        )
    low, high = field.get("minimum"), field.get("maximum")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and ((low is not None and value < low) or (high is not None and value > high)):
        raise _refused(
            exposed.name,
            f"the workflow's value {value!r} is outside {low}..{high}",
            exposed.node_id,
        )


def inputs_schema(
    graph: Mapping[str, Any],
    names: Iterable[str],
    catalog: NodeCatalog | None = None,
    *,
    randomized: Collection[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The JSON schema of an object holding the exposed inputs ``names`` of an API-format ``graph``.

    One property per name, in the order given (``position``), keyed by the name itself: its
    ``type``, the workflow's value as ``default``, ``minimum`` and ``maximum``, ``enum`` for
    choices and a ``description`` naming the node. Types, ranges and choices come from the
    server's node ``catalog``; without one, the type is that of the workflow's value. No property
    is required: one left out keeps the workflow's value. Other names are refused
    (``additionalProperties: false``). An input in ``randomized`` (``(node id, input)``, a seed
    the save format marks randomize) has no default, so that a run that leaves it out draws it.

    Raises:
        InvalidInputs: no names, a name given twice, a name that does not resolve (see
            `resolve_input`), a node type the catalog lacks, or a workflow value outside
            what the catalog allows.
    """
    names = list(names)
    if not names:
        raise InvalidInputs("Expose at least one input, such as 'KSampler.seed'")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidInputs(f"Inputs exposed more than once: {', '.join(twice)}")
    resolved = [resolve_input(graph, name) for name in names]
    seen: dict[tuple[str, str], str] = {}
    for one in resolved:
        earlier = seen.setdefault((one.node_id, one.input), one.name)
        if earlier != one.name:
            raise InvalidInputs(
                f"{one.name!r} and {earlier!r} are the same input ({one.node_id}.{one.input}); "
                "expose it once"
            )
    properties = {
        one.name: _field(one, _spec(catalog, one), position, (one.node_id, one.input) in randomized)
        for position, one in enumerate(resolved)
    }
    return {"type": "object", "properties": properties, "additionalProperties": False}
