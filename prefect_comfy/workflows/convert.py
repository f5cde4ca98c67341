"""Save format -> API format, the way the ComfyUI editor's own ``graphToPrompt()`` does it.

The editor saves a workflow as a litegraph document (``nodes``, ``links``, ``widgets_values``,
``definitions.subgraphs``); the server runs an API-format graph (node id -> ``class_type`` and
``inputs``). :func:`convert_workflow` turns the first into the second without a browser, following
the semantics of the frontend that ships with ComfyUI 0.3.75 (``comfyui-frontend-package``
1.32.9), which the oracle fixtures check:

- the nodes are flattened the way the editor executes them: a subgraph's nodes get the id
  ``outer:inner`` and its inputs and outputs are wired through;
- virtual nodes (Note, MarkdownNote, Reroute, PrimitiveNode, a subgraph's own node) vanish: a link
  through a Reroute is followed to its source, and a PrimitiveNode's value is written into the
  widgets it feeds;
- a bypassed node (mode 4) is skipped: a consumer is wired to the bypassed node's first input of
  the matching type; a muted node (mode 2) is dropped, and so are the inputs linked to it;
- ``widgets_values`` are matched to input names in the catalog's order, past the widgets the
  editor adds on its own (``control_after_generate``, ``control_filter_list``, upload buttons);
  a widget whose input is linked takes the link;
- ``_meta.title`` is the node's title (its class's display name when the title was not changed).

Pure and deterministic: no I/O, and nothing is randomized. A seed's ``control_after_generate``
setting is returned beside the graph (:attr:`ApiWorkflow.controls`) for the run to act on.

Example:
    >>> object_info = {
    ...     "EmptyImage": {"input": {"required": {"width": ["INT", {"default": 512}]}},
    ...                    "output": ["IMAGE"], "display_name": "EmptyImage"},
    ...     "SaveImage": {"input": {"required": {"images": ["IMAGE"]}}, "output": [],
    ...                   "output_node": True, "display_name": "Save Image"},
    ... }
    >>> workflow = {"nodes": [
    ...     {"id": 1, "type": "EmptyImage", "mode": 0, "widgets_values": [64],
    ...      "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}]},
    ...     {"id": 2, "type": "SaveImage", "mode": 0,
    ...      "inputs": [{"name": "images", "type": "IMAGE", "link": 1}]},
    ... ], "links": [[1, 1, 0, 2, 0, "IMAGE"]]}
    >>> to_api_format(workflow, object_info)["2"]
    {'inputs': {'images': ['1', 0]}, 'class_type': 'SaveImage', '_meta': {'title': 'Save Image'}}
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect_comfy.exceptions import InvalidWorkflow, UnknownNodeType
from prefect_comfy.workflows.catalog import NodeCatalog, NodeSpec, WidgetSlot

__all__ = [
    "VIRTUAL_NODE_TYPES",
    "ApiWorkflow",
    "convert_workflow",
    "is_save_format",
    "to_api_format",
]

VIRTUAL_NODE_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
"""Node types that live only in the editor: they are never sent to a server."""

MODE_NEVER = 2
"""A muted node: dropped, with every input linked to it."""
MODE_BYPASS = 4
"""A bypassed node: dropped, its consumers wired to its matching input."""

SUBGRAPH_INPUT_ID = -10
"""The id a subgraph's links give its input node."""
SUBGRAPH_OUTPUT_ID = -20
"""The id a subgraph's links give its output node."""

_ARRAY_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")


@dataclass(frozen=True)
class ApiWorkflow:
    """A converted workflow.

    Attributes:
        graph: the API-format graph (node id -> ``{"inputs", "class_type", "_meta"}``), its keys
            in the order the editor sends them.
        controls: ``(api node id, input name) -> control`` for every widget value in the graph
            that has a ``control_after_generate`` setting (its own, or that of the PrimitiveNode
            feeding it): ``"fixed"``, ``"increment"``, ``"decrement"`` or ``"randomize"``. A run
            gives the ``"randomize"`` ones a fresh value; the graph holds the saved value.
    """

    graph: dict[str, Any]
    controls: dict[tuple[str, str], str] = field(default_factory=dict)


def is_save_format(obj: Any) -> bool:
    """Whether ``obj`` is a workflow in the editor's save format (it has a ``nodes`` list).

    Example:
        >>> is_save_format({"nodes": [], "links": []}), is_save_format({"1": {"class_type": "X"}})
        (True, False)
    """
    return isinstance(obj, Mapping) and isinstance(obj.get("nodes"), list)


def convert_workflow(
    workflow: Mapping[str, Any], object_info: Mapping[str, Any] | NodeCatalog
) -> ApiWorkflow:
    """Convert a save-format workflow into an API-format graph, with its seed controls.

    Args:
        workflow: the editor's save format (a mapping with ``nodes`` and ``links``).
        object_info: the server's ``/object_info`` mapping, or a :class:`NodeCatalog` of it
            (reuse one catalog across calls: it interprets each class once).

    Returns:
        The graph and the ``control_after_generate`` setting of each of its widget values.

    Raises:
        UnknownNodeType: a node that would be sent is of a class the catalog lacks.
        InvalidWorkflow: not a save-format workflow, a malformed node or link, a link to a
            node that does not exist, a cycle, or a bypassed node with no input of the type a
            required input needs.
    """
    if not is_save_format(workflow):
        raise InvalidWorkflow(
            'Not a workflow in the editor\'s save format (no "nodes" list); give the JSON that '
            "ComfyUI's Save or Export writes"
        )
    catalog = object_info if isinstance(object_info, NodeCatalog) else NodeCatalog(object_info)
    return _Converter(workflow, catalog).run()


def to_api_format(
    workflow: Mapping[str, Any], object_info: Mapping[str, Any] | NodeCatalog
) -> dict[str, Any]:
    """The API-format graph of a save-format workflow: ``convert_workflow(...).graph``.

    See :func:`convert_workflow` for the arguments and errors.
    """
    return convert_workflow(workflow, object_info).graph


# --- the document, read once --------------------------------------------------------------------


@dataclass
class _Link:
    id: Any
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: Any


@dataclass
class _Input:
    name: str
    type: Any
    link: Any
    widget: str | None


@dataclass
class _Node:
    """One node as the editor holds it after ``configure``: inputs reordered by its class."""

    id: str
    type: str
    mode: int
    title: str
    inputs: list[_Input]
    output_types: list[Any]
    output_links: list[list[Any]]
    spec: NodeSpec | None
    subgraph: _Graph | None
    widgets: dict[str, Any]  # widget name -> value (value widgets and subgraph promotions)
    controls: dict[str, str]  # value widget name -> control_after_generate
    raw: Mapping[str, Any]

    @property
    def virtual(self) -> bool:
        return self.subgraph is not None or (self.spec is None and self.type in VIRTUAL_NODE_TYPES)

    def label(self) -> str:
        return f"{self.id} ({self.title})" if self.title and self.title != self.type else self.id


@dataclass
class _Graph:
    """The root graph or one subgraph definition."""

    id: str | None
    nodes: dict[str, _Node]
    links: dict[Any, _Link]
    inputs: list[Mapping[str, Any]] = field(default_factory=list)
    outputs: list[Mapping[str, Any]] = field(default_factory=list)


def _where(graph_id: str | None) -> str:
    return f" in subgraph {graph_id}" if graph_id else ""


def _node_id(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise InvalidWorkflow(
            f"{what} has no valid id ({value!r}); re-save the workflow in ComfyUI"
        )
    return str(value)


def _read_links(raw: Any, graph_id: str | None) -> dict[Any, _Link]:
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        raw = list(raw.values())
    if not isinstance(raw, list):
        raise InvalidWorkflow(f'"links"{_where(graph_id)} must be a list; re-save the workflow')
    links: dict[Any, _Link] = {}
    for entry in raw:
        if entry is None:
            continue
        try:
            if isinstance(entry, Mapping):
                fields = (
                    entry["id"],
                    entry["origin_id"],
                    entry["origin_slot"],
                    entry["target_id"],
                    entry["target_slot"],
                    entry.get("type"),
                )
            else:
                fields = tuple(entry[:6]) if len(entry) >= 6 else (*entry[:5], None)
            link = _Link(
                fields[0],
                str(fields[1]),
                int(fields[2]),
                str(fields[3]),
                int(fields[4]),
                fields[5],
            )
        except (KeyError, TypeError, ValueError, IndexError):
            raise InvalidWorkflow(
                f"Malformed link {str(entry)[:80]}{_where(graph_id)}: a link is "
                "[id, origin_id, origin_slot, target_id, target_slot, type]; re-save the workflow"
            ) from None
        links[link.id] = link
    return links


class _Converter:
    def __init__(self, workflow: Mapping[str, Any], catalog: NodeCatalog) -> None:
        self.catalog = catalog
        definitions = workflow.get("definitions")
        subgraphs = definitions.get("subgraphs") if isinstance(definitions, Mapping) else None
        self.raw_subgraphs: dict[str, Mapping[str, Any]] = {}
        for sub in subgraphs or ():
            if isinstance(sub, Mapping) and isinstance(sub.get("id"), str):
                self.raw_subgraphs[sub["id"]] = sub
        self.subgraphs: dict[str, _Graph] = {}
        self.building: set[str] = set()
        self.root = self._graph(None, workflow)
        # execution id -> (node, graph, subgraph path, containing subgraph node's execution id)
        self.dtos: dict[str, tuple[_Node, _Graph, tuple[str, ...], str | None]] = {}
        self.overrides: dict[tuple[str, str], tuple[Any, str | None]] = {}

    # -- reading ---------------------------------------------------------------------------------

    def _graph(self, graph_id: str | None, raw: Mapping[str, Any]) -> _Graph:
        nodes_raw = raw.get("nodes")
        if not isinstance(nodes_raw, list):
            raise InvalidWorkflow(f'"nodes"{_where(graph_id)} must be a list; re-save the workflow')
        graph = _Graph(graph_id, {}, _read_links(raw.get("links"), graph_id))
        if graph_id is not None:
            graph.inputs = [i for i in raw.get("inputs") or () if isinstance(i, Mapping)]
            graph.outputs = [o for o in raw.get("outputs") or () if isinstance(o, Mapping)]
        for raw_node in nodes_raw:
            if not isinstance(raw_node, Mapping):
                raise InvalidWorkflow(
                    f"A node{_where(graph_id)} is not an object ({str(raw_node)[:60]}); "
                    "re-save the workflow"
                )
            node_id = _node_id(raw_node.get("id"), f"A node{_where(graph_id)}")
            if node_id in graph.nodes:
                raise InvalidWorkflow(
                    f"Two nodes{_where(graph_id)} have the id {node_id}; re-save the workflow"
                )
            graph.nodes[node_id] = self._node(node_id, raw_node, graph_id)
        return graph

    def _subgraph(self, subgraph_id: str) -> _Graph:
        graph = self.subgraphs.get(subgraph_id)
        if graph is None:
            if subgraph_id in self.building:
                raise InvalidWorkflow(
                    f"Subgraph {subgraph_id} contains itself; remove the nested copy in ComfyUI"
                )
            self.building.add(subgraph_id)
            graph = self._graph(subgraph_id, self.raw_subgraphs[subgraph_id])
            self.building.discard(subgraph_id)
            self.subgraphs[subgraph_id] = graph
        return graph

    def _node(self, node_id: str, raw: Mapping[str, Any], graph_id: str | None) -> _Node:
        node_type = raw.get("type")
        if not isinstance(node_type, str) or not node_type:
            raise InvalidWorkflow(
                f"Node {node_id}{_where(graph_id)} has no type; re-save the workflow in ComfyUI"
            )
        mode = raw.get("mode", 0)
        mode = mode if isinstance(mode, int) and not isinstance(mode, bool) else 0
        saved_inputs = _saved_slots(raw.get("inputs"), node_id, "inputs")
        saved_outputs = _saved_slots(raw.get("outputs"), node_id, "outputs")
        spec = None if node_type in self.raw_subgraphs else self.catalog.node(node_type)
        subgraph = self._subgraph(node_type) if node_type in self.raw_subgraphs else None
        title = raw.get("title")
        if not isinstance(title, str):
            if spec is not None:
                title = spec.display_name
            elif subgraph is not None:
                title = str(self.raw_subgraphs[node_type].get("name") or node_type)
            else:
                title = node_type
        node = _Node(
            id=node_id,
            type=node_type,
            mode=mode,
            title=title,
            inputs=[],
            output_types=[],
            output_links=[],
            spec=spec,
            subgraph=subgraph,
            widgets={},
            controls={},
            raw=raw,
        )
        if spec is not None:
            self._configure_known(node, spec, saved_inputs, saved_outputs)
        elif subgraph is not None:
            self._configure_subgraph_node(node, subgraph, saved_inputs, saved_outputs)
        else:
            node.inputs = [_input_of(s) for s in saved_inputs]
            node.output_types = [s.get("type") for s in saved_outputs]
            node.output_links = [_links_of(s) for s in saved_outputs]
            if node_type == "PrimitiveNode":
                values = raw.get("widgets_values")
                if isinstance(values, list) and values:
                    node.widgets["value"] = values[0]
                    if len(values) > 1 and isinstance(values[1], str):
                        node.controls["value"] = values[1]
        return node

    def _configure_known(
        self,
        node: _Node,
        spec: NodeSpec,
        saved_inputs: list[Mapping[str, Any]],
        saved_outputs: list[Mapping[str, Any]],
    ) -> None:
        by_name = {s.get("name"): s for s in saved_inputs}
        sockets = [i for i in spec.inputs if not i.is_widget]
        widget_inputs = [i for i in spec.inputs if i.is_widget]
        inputs: list[_Input] = []
        for spec_input in sockets + widget_inputs:
            saved = by_name.get(spec_input.name)
            link = saved.get("link") if saved is not None else None
            widget = spec_input.name if spec_input.is_widget else None
            inputs.append(_Input(spec_input.name, spec_input.type, link, widget))
        known = {i.name for i in inputs}
        inputs += [_input_of(s) for s in saved_inputs if s.get("name") not in known]
        node.inputs = inputs
        node.output_types = list(spec.outputs) + [
            s.get("type") for s in saved_outputs[len(spec.outputs) :]
        ]
        node.output_links = [_links_of(s) for s in saved_outputs]
        values = _migrate(spec, node.raw.get("widgets_values"))
        _assign_widgets(node, spec.widget_slots, values)

    def _configure_subgraph_node(
        self,
        node: _Node,
        subgraph: _Graph,
        saved_inputs: list[Mapping[str, Any]],
        saved_outputs: list[Mapping[str, Any]],
    ) -> None:
        by_name = {s.get("name"): s for s in saved_inputs}
        promoted: list[tuple[str, Any]] = []
        for index, sub_input in enumerate(subgraph.inputs):
            name = str(sub_input.get("name", ""))
            saved = by_name.get(name) or (saved_inputs[index] if index < len(saved_inputs) else {})
            widget = _promoted_widget(subgraph, index, sub_input)
            node.inputs.append(
                _Input(name, sub_input.get("type"), saved.get("link"), name if widget else None)
            )
            if widget is not None:
                promoted.append((name, widget[0]))
                if widget[1] is not None:
                    node.controls[name] = widget[1]
        node.output_types = [o.get("type") for o in subgraph.outputs]
        node.output_links = [_links_of(s) for s in saved_outputs]
        values = node.raw.get("widgets_values")
        values = values if isinstance(values, list) else []
        for index, (name, value) in enumerate(promoted):
            node.widgets[name] = values[index] if index < len(values) else value
        proxies = (node.raw.get("properties") or {}).get("proxyWidgets")
        if isinstance(proxies, list):  # promoted widgets listed by the newer promotion UI
            for index, value in enumerate(values):
                entry = proxies[index] if index < len(proxies) else None
                if (
                    isinstance(entry, list)
                    and len(entry) == 2
                    and str(entry[0]) == "-1"
                    and value is not None
                    and entry[1] in node.widgets
                ):
                    node.widgets[entry[1]] = value

    # -- flattening ------------------------------------------------------------------------------

    def run(self) -> ApiWorkflow:
        for node in _execution_order(self.root):
            self._add_dto(node, self.root, (), None, set())
        for node, graph, path, _container in self.dtos.values():
            if node.type == "PrimitiveNode" and node.spec is None and "value" in node.widgets:
                self._apply_primitive(node, graph, path)
        graph: dict[str, Any] = {}
        controls: dict[tuple[str, str], str] = {}
        for exec_id, (node, _graph, path, _container) in self.dtos.items():
            if node.virtual or node.mode in (MODE_NEVER, MODE_BYPASS):
                continue
            if node.spec is None:
                raise UnknownNodeType(exec_id, node.type, node.title)
            graph[exec_id] = self._serialize(exec_id, node, path, controls)
        for entry in graph.values():
            inputs = entry["inputs"]
            for name in [
                n
                for n, v in inputs.items()
                if isinstance(v, list) and len(v) == 2 and v[0] not in graph
            ]:
                del inputs[name]
        self._check_required(graph)
        _check_acyclic(graph)
        ordered = {
            k: graph[k] for k in sorted((k for k in graph if _ARRAY_INDEX.match(k)), key=int)
        }
        ordered.update((k, v) for k, v in graph.items() if k not in ordered)
        return ApiWorkflow(ordered, {k: v for k, v in controls.items() if k[0] in ordered})

    def _add_dto(
        self,
        node: _Node,
        graph: _Graph,
        path: tuple[str, ...],
        container: str | None,
        visiting: set[str],
    ) -> None:
        exec_id = ":".join((*path, node.id))
        self.dtos.setdefault(exec_id, (node, graph, path, container))
        if node.subgraph is None:
            return
        if node.type in visiting:
            raise InvalidWorkflow(
                f"Subgraph {node.type} contains itself (node {exec_id}); remove the nested copy"
            )
        inner_path = (*path, node.id)
        for inner in node.subgraph.nodes.values():
            self._add_dto(inner, node.subgraph, inner_path, exec_id, visiting | {node.type})

    def _apply_primitive(self, node: _Node, graph: _Graph, path: tuple[str, ...]) -> None:
        value = node.widgets["value"]
        control = node.controls.get("value")
        for link_ids in node.output_links[:1]:
            for link_id in link_ids:
                link = graph.links.get(link_id)
                target = graph.nodes.get(link.target_id) if link is not None else None
                if target is None or link is None:
                    continue
                slot = (
                    target.inputs[link.target_slot]
                    if link.target_slot < len(target.inputs)
                    else None
                )
                # the editor's PrimitiveNode finds the target input by slot, then its widget by name
                name = slot.widget if slot is not None else None
                if name is not None:
                    target_id = ":".join((*path, target.id))
                    self.overrides[(target_id, name)] = (value, control)

    # -- one node --------------------------------------------------------------------------------

    def _serialize(
        self,
        exec_id: str,
        node: _Node,
        path: tuple[str, ...],
        controls: dict[tuple[str, str], str],
    ) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        for name, value in node.widgets.items():
            control = node.controls.get(name)
            override = self.overrides.get((exec_id, name))
            if override is not None:
                value, control = override
            inputs[name] = {"__value__": value} if isinstance(value, list) else value
            if control is not None:
                controls[(exec_id, name)] = control
        for slot, node_input in enumerate(node.inputs):
            resolved = self._resolve_input(exec_id, slot, set(), None)
            if resolved is None or resolved[0] == "missing":
                continue
            if resolved[0] == "value":
                value = resolved[1]
                inputs[node_input.name] = {"__value__": value} if isinstance(value, list) else value
                if resolved[2] is not None:
                    controls[(exec_id, node_input.name)] = resolved[2]
                else:
                    controls.pop((exec_id, node_input.name), None)
                continue
            inputs[node_input.name] = [resolved[1], resolved[2]]
            controls.pop((exec_id, node_input.name), None)
        return {"inputs": inputs, "class_type": node.type, "_meta": {"title": node.title}}

    def _resolve_input(
        self, exec_id: str, slot: int, visited: set[str], want: Any
    ) -> tuple[Any, ...] | None:
        node, graph, path, container = self.dtos[exec_id]
        key = f"{graph.id}:{node.id}[I]{slot}"
        if key in visited:
            raise InvalidWorkflow(
                f"Links form a loop at node {exec_id} ({node.title}), input {slot}; "
                "break the loop in ComfyUI (look for Reroutes or subgraphs wired in a circle)"
            )
        visited.add(key)
        node_input = node.inputs[slot] if slot < len(node.inputs) else None
        if node_input is None or node_input.link is None:
            return None
        link = graph.links.get(node_input.link)
        if link is None:
            raise InvalidWorkflow(
                f"Node {exec_id} ({node.title}), input {node_input.name!r}, names link "
                f"{node_input.link} which does not exist; reconnect that input in ComfyUI"
            )
        if container is not None and link.origin_id == str(SUBGRAPH_INPUT_ID):
            return self._resolve_from_outside(container, link, node_input, visited)
        origin = graph.nodes.get(link.origin_id)
        if origin is None:
            raise InvalidWorkflow(
                f"Node {exec_id} ({node.title}), input {node_input.name!r}, is linked to node "
                f"{link.origin_id}{_where(graph.id)}, which does not exist; reconnect it in ComfyUI"
            )
        origin_id = ":".join((*path, origin.id))
        return self._resolve_output(origin_id, link.origin_slot, want or node_input.type, visited)

    def _resolve_from_outside(
        self, container: str, link: _Link, node_input: _Input, visited: set[str]
    ) -> tuple[Any, ...] | None:
        outer, _graph, _path, _container = self.dtos[container]
        if link.origin_slot >= len(outer.inputs):
            raise InvalidWorkflow(
                f"Subgraph node {container} has no input {link.origin_slot} for "
                f"{node_input.name!r}; re-save the workflow in ComfyUI"
            )
        outer_input = outer.inputs[link.origin_slot]
        if outer_input.link is None:
            if outer_input.widget is not None and outer_input.widget in outer.widgets:
                override = self.overrides.get((container, outer_input.widget))
                if override is not None:
                    return ("value", *override)
                return (
                    "value",
                    outer.widgets[outer_input.widget],
                    outer.controls.get(outer_input.widget),
                )
            return None
        return self._resolve_input(container, link.origin_slot, visited, None)

    def _resolve_output(
        self, exec_id: str, slot: int, want: Any, visited: set[str]
    ) -> tuple[Any, ...] | None:
        node, graph, path, _container = self.dtos[exec_id]
        key = f"{graph.id}:{node.id}[O]{slot}"
        if key in visited:
            raise InvalidWorkflow(
                f"Links form a loop at node {exec_id} ({node.title}), output {slot}; "
                "break the loop in ComfyUI (look for Reroutes or subgraphs wired in a circle)"
            )
        visited.add(key)
        if node.mode == MODE_BYPASS:
            index = _bypass_slot(node, slot, want)
            if index == -1:
                return ("missing", exec_id, want)
            return self._resolve_input(exec_id, index, visited, None)
        if node.subgraph is not None:
            return self._resolve_subgraph_output(exec_id, node, slot, want, visited)
        if node.virtual:
            if slot < len(node.inputs) and node.inputs[slot].link is not None:
                return self._resolve_input(exec_id, slot, visited, want)
            return None
        return ("link", exec_id, slot)

    def _resolve_subgraph_output(
        self, exec_id: str, node: _Node, slot: int, want: Any, visited: set[str]
    ) -> tuple[Any, ...] | None:
        subgraph = node.subgraph
        assert subgraph is not None
        if slot >= len(subgraph.outputs):
            raise InvalidWorkflow(
                f"Subgraph node {exec_id} ({node.title}) has no output {slot}; re-save the workflow"
            )
        link = None
        for link_id in subgraph.outputs[slot].get("linkIds") or ():
            link = subgraph.links.get(link_id)
            if link is not None:
                break
        if link is None:
            link = next(
                (
                    candidate
                    for candidate in subgraph.links.values()
                    if candidate.target_id == str(SUBGRAPH_OUTPUT_ID)
                    and candidate.target_slot == slot
                ),
                None,
            )
        if link is None:
            return None
        if link.origin_id == str(SUBGRAPH_INPUT_ID):  # an input wired straight to an output
            return self._resolve_input(exec_id, link.origin_slot, visited, None)
        inner = ":".join((exec_id, link.origin_id))
        if inner not in self.dtos:
            raise InvalidWorkflow(
                f"Subgraph {subgraph.id} links its output {slot} to node {link.origin_id}, "
                "which does not exist; reconnect it in ComfyUI"
            )
        return self._resolve_output(inner, link.origin_slot, want, visited)

    def _check_required(self, graph: dict[str, Any]) -> None:
        # A bypass the frontend could not pass through leaves a consumer's input empty: the
        # server would refuse the graph, so say which bypassed node is the cause.
        for exec_id, entry in graph.items():
            node = self.dtos[exec_id][0]
            for slot, node_input in enumerate(node.inputs):
                if node_input.name in entry["inputs"] or node_input.link is None:
                    continue
                spec_input = node.spec.input(node_input.name) if node.spec else None
                if spec_input is None or not spec_input.required:
                    continue
                resolved = self._resolve_input(exec_id, slot, set(), None)
                if resolved is not None and resolved[0] == "missing":
                    bypassed = self.dtos[resolved[1]][0]
                    raise InvalidWorkflow(
                        f"Node {exec_id} ({node.title}) needs {node_input.name!r} "
                        f"({node_input.type}) from bypassed node {resolved[1]} "
                        f"({bypassed.title}), which has no input of that type to pass "
                        "through; un-bypass it or connect the input elsewhere"
                    )


def _saved_slots(raw: Any, node_id: str, what: str) -> list[Mapping[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(s, Mapping) for s in raw):
        raise InvalidWorkflow(
            f"Node {node_id} has malformed {what} (a list of objects is expected); "
            "re-save the workflow in ComfyUI"
        )
    return raw


def _input_of(saved: Mapping[str, Any]) -> _Input:
    widget = saved.get("widget")
    name = widget.get("name") if isinstance(widget, Mapping) else None
    return _Input(str(saved.get("name", "")), saved.get("type"), saved.get("link"), name)


def _links_of(saved: Mapping[str, Any]) -> list[Any]:
    links = saved.get("links")
    return list(links) if isinstance(links, list) else []


def _migrate(spec: NodeSpec, values: Any) -> Any:
    """Old saves held a value for each ``forceInput`` input too: drop those, as the editor does."""
    if not isinstance(values, list):
        return values
    counted = [
        i for i in spec.inputs if i.is_widget or i.options.get("forceInput")
    ]  # the editor counts the inputs that have a widget, or that are forced to a socket
    if not any(i.options.get("forceInput") for i in counted):
        return values
    size = sum(
        2 if i.options.get("control_after_generate") or i.name in ("seed", "noise_seed") else 1
        for i in counted
    )
    if size != len(values):
        return values
    return [v for i, v in zip(counted, values, strict=False) if not i.options.get("forceInput")]


def _assign_widgets(node: _Node, slots: tuple[WidgetSlot, ...], values: Any) -> None:
    if isinstance(values, Mapping):  # a custom node's dict form: match by name
        by_index = [values.get(s.name, _MISSING) for s in slots]
    elif isinstance(values, list):
        by_index = values
    else:
        by_index = []
    for index, slot in enumerate(slots):
        value = by_index[index] if index < len(by_index) else _MISSING
        if slot.control_of is not None:
            node.controls[slot.control_of] = value if isinstance(value, str) else "randomize"
            continue
        if not slot.sends or slot.input is None:
            continue
        node.widgets[slot.name] = _default(slot) if value is _MISSING else value


_MISSING = object()


def _default(slot: WidgetSlot) -> Any:
    spec = slot.input
    assert spec is not None
    default = spec.options.get("default")
    if spec.type == "COMBO":
        if default:
            return default
        return spec.choices[0] if spec.choices else None
    if default is not None:
        return default
    return {"INT": 0, "FLOAT": 0, "BOOLEAN": False}.get(spec.type, "")


def _promoted_widget(
    subgraph: _Graph, index: int, sub_input: Mapping[str, Any]
) -> tuple[Any, str | None] | None:
    """The inner widget a subgraph input stands for: the first linked inner widget input."""
    link_ids = sub_input.get("linkIds")
    if isinstance(link_ids, list):
        links = [subgraph.links[i] for i in link_ids if i in subgraph.links]
    else:
        links = [
            link
            for link in subgraph.links.values()
            if link.origin_id == str(SUBGRAPH_INPUT_ID) and link.origin_slot == index
        ]
    for link in links:
        target = subgraph.nodes.get(link.target_id)
        if target is None:
            continue
        target_input = next((i for i in target.inputs if i.link == link.id), None)
        if target_input is None or target_input.widget is None:
            continue
        if target_input.widget in target.widgets:
            return target.widgets[target_input.widget], target.controls.get(target_input.widget)
    return None


def _valid(a: Any, b: Any) -> bool:
    """``LiteGraph.isValidConnection``: ``*`` and empty match anything; lists split on commas."""
    a = 0 if a in ("", "*") else a
    b = 0 if b in ("", "*") else b
    if not a or not b or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(_valid(x, y) for x in a.split(",") for y in b.split(","))


def _bypass_slot(node: _Node, slot: int, want: Any) -> int:
    """Which input a bypassed node passes to its output ``slot`` for a consumer of type ``want``."""
    inputs = node.inputs
    if want in ("*", ""):
        return slot if len(inputs) > slot else 0
    same = inputs[slot] if slot < len(inputs) else None
    out_type = node.output_types[slot] if slot < len(node.output_types) else None
    if same is not None and _valid(same.type, out_type) and _valid(same.type, want):
        return slot
    for index, candidate in enumerate(inputs):
        if candidate.type == want:
            return index
    for index, candidate in enumerate(inputs):
        if _valid(candidate.type, out_type) and _valid(candidate.type, want):
            return index
    return -1


def _execution_order(graph: _Graph) -> list[_Node]:
    """litegraph's ``computeExecutionOrder``: Kahn's order, nodes left in a loop at the end."""
    remaining: dict[str, int] = {}
    ready: deque[_Node] = deque()
    for node in graph.nodes.values():
        count = sum(1 for i in node.inputs if i.link is not None)
        if count:
            remaining[node.id] = count
        else:
            ready.append(node)
    order: list[_Node] = []
    placed: set[str] = set()
    seen_links: set[Any] = set()
    while ready:
        node = ready.popleft()
        order.append(node)
        placed.add(node.id)
        for link_ids in node.output_links:
            for link_id in link_ids:
                link = graph.links.get(link_id)
                if link is None or link.id in seen_links:
                    continue
                seen_links.add(link.id)
                if link.target_id not in graph.nodes:
                    continue
                left = remaining.get(link.target_id)
                if left is None:
                    continue
                remaining[link.target_id] = left - 1
                if left - 1 == 0:
                    ready.append(graph.nodes[link.target_id])
    rest = [n for n in graph.nodes.values() if n.id not in placed]
    rest.sort(key=lambda n: (0, int(n.id), "") if _ARRAY_INDEX.match(n.id) else (1, 0, ""))
    return order + rest


def _check_acyclic(graph: dict[str, Any]) -> None:
    """The server refuses a graph whose links loop; say which node is in the loop."""
    state: dict[str, int] = {}
    for start in graph:
        if start in state:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, _sources(graph, start))]
        state[start] = 1
        while stack:
            node_id, sources = stack[-1]
            source = next(sources, None)
            if source is None:
                state[node_id] = 2
                stack.pop()
                continue
            seen = state.get(source)
            if seen == 1:
                raise InvalidWorkflow(
                    f"The workflow's links form a cycle through node {source} "
                    f"({graph[source]['_meta']['title']}); break the cycle in ComfyUI"
                )
            if seen is None:
                state[source] = 1
                stack.append((source, _sources(graph, source)))


def _sources(graph: dict[str, Any], node_id: str) -> Iterator[str]:
    for value in graph[node_id]["inputs"].values():
        if isinstance(value, list) and len(value) == 2 and value[0] in graph:
            yield value[0]
