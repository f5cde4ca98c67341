"""Inputs by name: what a run changes in an API-format graph, said the way people say it.

``{"Positive Prompt.text": "a fox", "KSampler.seed": 7, "3.steps": 20}``: each key is
``<node>.<input>``, where ``<node>`` is the node's id, its title (``_meta.title``), or its class
type where only one node has it (the part after the last dot is the input). Unknown and ambiguous
names are errors that list the candidates, and values are checked against the node catalog
(type, min and max, choices) before anything is sent: `apply_inputs` raises
`InvalidInputs` with every problem at once.

Seeds: a widget the save format marks ``randomize`` gets a fresh value on each run
(`draw_seeds`), within its min and max; an input given by name wins over it. The values
used are returned, so a picture can be made again (pass them back as inputs).

Pure: no I/O. Example:
    >>> graph = {"6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat"},
    ...                "_meta": {"title": "Positive Prompt"}}}
    >>> apply_inputs(graph, {"Positive Prompt.text": "a fox"})["6"]["inputs"]
    {'text': 'a fox'}
    >>> parse_assignment('KSampler.seed=7')
    ('KSampler.seed', 7)
"""

from __future__ import annotations

import copy
import difflib
import json
import random
from collections.abc import Mapping
from typing import Any

from prefect_comfy.exceptions import InvalidInputs
from prefect_comfy.workflows.catalog import InputSpec, NodeCatalog

__all__ = [
    "MAX_RANDOM_SEED",
    "SEED_INPUTS",
    "apply_inputs",
    "draw_seeds",
    "parse_assignment",
    "resolve_inputs",
    "seeds_of",
]

MAX_RANDOM_SEED = 1125899906842624
"""The largest seed a randomize draws (2**50, as the ComfyUI editor does: JavaScript-safe)."""

SEED_INPUTS = frozenset({"seed", "noise_seed"})
"""Input names recorded as seeds in an API-format graph that carries no seed controls."""

_MAX_LISTED = 20


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"Node.input=value"`` -> ``("Node.input", value)``; the value is JSON when it parses as
    JSON, else the text as it is (``text=a fox`` gives the string ``"a fox"``).

    Raises:
        InvalidInputs: no ``=``, or no ``.`` in the name.
    """
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or "." not in name.strip("."):
        raise InvalidInputs(
            f"{text!r} is not an input assignment: write NODE.INPUT=VALUE, such as "
            '"Positive Prompt.text=a fox" or "3.seed=7"'
        )
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


def _title(node: Mapping[str, Any]) -> str | None:
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, Mapping) else None
    return title if isinstance(title, str) and title else None


def _candidates(graph: Mapping[str, Any]) -> list[str]:
    names = []
    for node_id, node in graph.items():
        title = _title(node)
        label = f"{node_id} ({node.get('class_type')}"
        names.append(label + (f", {title!r})" if title else ")"))
    return names


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _resolve_node(graph: Mapping[str, Any], ref: str) -> tuple[str | None, str | None]:
    """``(node id, None)``, or ``(None, why not)``."""
    if ref in graph:
        return ref, None
    for field, of in (("title", _title), ("class type", lambda n: n.get("class_type"))):
        found = [str(i) for i, n in graph.items() if of(n) == ref]
        if len(found) == 1:
            return found[0], None
        if found:
            return None, (
                f"{len(found)} nodes have the {field} {ref!r} (ids {_listed(found)}): name one by "
                "id or by a title of its own"
            )
    names = {str(i) for i in graph} | {t for n in graph.values() if (t := _title(n))}
    names |= {str(n.get("class_type")) for n in graph.values()}
    close = difflib.get_close_matches(ref, sorted(names), n=3)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return None, f"no node has the id, title or class type {ref!r}; {hint}the nodes are: " + (
        _listed(_candidates(graph))
    )


def resolve_inputs(
    graph: Mapping[str, Any], inputs: Mapping[str, Any]
) -> tuple[dict[tuple[str, str], Any], list[dict[str, Any]]]:
    """``{(node id, input): value}`` for names that resolve, and a problem for each that does not."""
    found: dict[tuple[str, str], Any] = {}
    problems: list[dict[str, Any]] = []
    for name, value in inputs.items():
        ref, dot, input_name = str(name).rpartition(".")
        if not dot or not ref or not input_name:
            problems.append(
                {"node_id": None, "field": name, "message": "an input is named NODE.INPUT, such "
                 'as "Positive Prompt.text", "KSampler.seed" or "3.steps"'}
            )  # fmt: skip
            continue
        node_id, why = _resolve_node(graph, ref)
        if node_id is None:
            problems.append({"node_id": None, "field": name, "message": why})
            continue
        found[(node_id, input_name)] = value
    return found, problems


def _type_problem(spec: InputSpec | None, value: Any, current: Any) -> str | None:
    """Why ``value`` does not fit the input, or ``None``."""
    kind = spec.type if spec is not None else _kind_of(current)
    if spec is not None and spec.choices:  # an empty list: the server did not list them
        if value in spec.choices:
            return None
        return f"{value!r} is not one of the {len(spec.choices)} choices: " + _listed(
            [repr(c) for c in spec.choices]
        )
    if kind == "INT":
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok:
            return f"{value!r} is not a whole number"
    elif kind == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{value!r} is not a number"
    elif kind == "STRING":
        if not isinstance(value, str):
            return f"{value!r} is not a string"
    elif kind == "BOOLEAN" and not isinstance(value, bool):
        return f"{value!r} is not true or false"
    if spec is not None and kind in ("INT", "FLOAT"):
        if spec.minimum is not None and value < spec.minimum:
            return f"{value!r} is below the minimum {spec.minimum!r}"
        if spec.maximum is not None and value > spec.maximum:
            return f"{value!r} is above the maximum {spec.maximum!r}"
    return None


def _kind_of(value: Any) -> str | None:
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "INT"
    if isinstance(value, float):
        return "FLOAT"
    if isinstance(value, str):
        return "STRING"
    return None


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
        and isinstance(value[1], int)
    )  # fmt: skip


def apply_inputs(
    graph: Mapping[str, Any],
    inputs: Mapping[str, Any] | None,
    catalog: NodeCatalog | None = None,
) -> dict[str, Any]:
    """A copy of an API-format ``graph`` with the named ``inputs`` set, each checked first.

    Args:
        graph: the API-format graph (left unchanged; nodes that do not change are shared).
        inputs: ``{"<node>.<input>": value}``; see the module docstring.
        catalog: the server's node catalog; without one a value is checked against the type of
            the value it replaces only.

    Raises:
        InvalidInputs: every name that is unknown or ambiguous and every value that does not fit,
            with the candidates; nothing was changed.
    """
    out = dict(graph)  # the nodes that change are copied below: the graph given stays as it was
    if not inputs:
        return out
    found, problems = resolve_inputs(out, inputs)
    copied: set[str] = set()
    for (node_id, input_name), value in found.items():
        if node_id not in copied:
            out[node_id] = copy.deepcopy(graph[node_id])
            copied.add(node_id)
        node = out[node_id]
        class_type = node.get("class_type")
        where = {"node_id": node_id, "class_type": class_type, "field": input_name}
        node_inputs = node.setdefault("inputs", {})
        node_spec = catalog.node(class_type) if catalog is not None else None
        spec = node_spec.input(input_name) if node_spec is not None else None
        if spec is None and input_name not in node_inputs:
            known = [s.name for s in node_spec.inputs] if node_spec else list(node_inputs)
            problems.append(
                {**where, "message": f"{class_type} has no input {input_name!r}; it has "
                 + (_listed(known) or "none")}
            )  # fmt: skip
            continue
        if _is_link(node_inputs.get(input_name)):
            source = node_inputs[input_name][0]
            problems.append(
                {**where, "message": f"this input is fed by node {source}; set that node's value "
                 "instead"}
            )  # fmt: skip
            continue
        if spec is not None and not spec.is_widget:
            problems.append({**where, "message": f"a {spec.type} input takes a link, not a value"})
            continue
        why = _type_problem(spec, value, node_inputs.get(input_name))
        if why:
            problems.append({**where, "message": why})
            continue
        node_inputs[input_name] = value
    if problems:
        raise InvalidInputs(
            f"{len(problems)} input(s) do not fit the workflow; nothing was submitted", problems
        )
    return out


def draw_seeds(
    graph: dict[str, Any],
    controls: Mapping[tuple[str, str], str],
    *,
    catalog: NodeCatalog | None = None,
    keep: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset(),
    rng: random.Random | None = None,
) -> dict[tuple[str, str], int]:
    """Give every widget marked ``randomize`` a fresh value, in place; returns the values drawn.

    Args:
        graph: the API-format graph (changed in place).
        controls: ``(node id, input) -> "fixed" | "increment" | "decrement" | "randomize"``, as
            the conversion found them.
        catalog: for each widget's min and max (else 0 .. `MAX_RANDOM_SEED`).
        keep: widgets given explicitly: an explicit input wins over randomize.
        rng: the randomness (seed it to draw the same values again).
    """
    rng = rng or random.SystemRandom()
    drawn: dict[tuple[str, str], int] = {}
    for (node_id, input_name), control in sorted(controls.items()):
        node = graph.get(node_id)
        if control != "randomize" or (node_id, input_name) in keep or node is None:
            continue
        if not isinstance(node.get("inputs", {}).get(input_name, 0), int):
            continue  # a link (a primitive turned into an input): not this widget's to draw
        low, high = 0, MAX_RANDOM_SEED
        node_spec = catalog.node(node["class_type"]) if catalog is not None else None
        spec = node_spec.input(input_name) if node_spec is not None else None
        if spec is not None:
            low = int(spec.minimum) if spec.minimum is not None else low
            high = min(int(spec.maximum), high) if spec.maximum is not None else high
        value = rng.randint(low, max(low, high))
        node.setdefault("inputs", {})[input_name] = value
        drawn[(node_id, input_name)] = value
    return drawn


def seeds_of(
    graph: Mapping[str, Any], controls: Mapping[tuple[str, str], str] = {}
) -> dict[str, int]:
    """The seeds a graph runs with, ``{"<node id>.<input>": value}``: every widget with a seed
    control, and every whole-number input named ``seed`` or ``noise_seed``."""
    keys = set(controls)
    for node_id, node in graph.items():
        for name in node.get("inputs", {}):
            if name in SEED_INPUTS:
                keys.add((str(node_id), name))
    seeds = {}
    for node_id, name in sorted(keys):
        value = graph.get(node_id, {}).get("inputs", {}).get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            seeds[f"{node_id}.{name}"] = value
    return seeds
