"""The editor's save format, read as the editor holds a workflow once it has loaded it.

ComfyUI's frontend does not send what the file says as it is: loading a node rebuilds its inputs
from the node's class (link sockets first, then one socket per widget, then any saved input the
class no longer has) and fills its widgets from ``widgets_values`` in the order it built them.
`Document` does the same, once per workflow, so that the converter
(`prefect_comfy.workflows.convert`) can walk links the way ``graphToPrompt()`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect_comfy.exceptions import InvalidWorkflow
from prefect_comfy.workflows.catalog import SEED_NAMES, NodeCatalog, NodeSpec, WidgetSlot

__all__ = [
    "FRONTEND_DISPLAY_NAMES",
    "MODE_BYPASS",
    "MODE_NEVER",
    "SUBGRAPH_INPUT_ID",
    "SUBGRAPH_OUTPUT_ID",
    "VIRTUAL_NODE_TYPES",
    "Document",
    "Graph",
    "Input",
    "Link",
    "Node",
    "where",
]

VIRTUAL_NODE_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
"""Node types that live only in the editor: they are never sent to a server."""

MODE_NEVER = 2
"""A muted node: dropped, with every input linked to it."""
MODE_BYPASS = 4
"""A bypassed node: dropped, its consumers wired to its matching input."""

FRONTEND_DISPLAY_NAMES = {
    "EmptyHunyuanLatentVideo": "EmptyHunyuanLatentVideo",
    "Preview3D": "Preview 3D",
    "PreviewAny": "Preview Any",
}
"""Titles the editor's English locale (frontend 1.32.9) gives a new node instead of the server's
``display_name`` (ComfyUI 0.3.75): the only three classes of its catalog where the two differ."""

SUBGRAPH_INPUT_ID = -10
"""The id a subgraph's links give its input node."""
SUBGRAPH_OUTPUT_ID = -20
"""The id a subgraph's links give its output node."""


@dataclass(slots=True)
class Link:
    id: Any
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: Any


@dataclass(slots=True)
class Input:
    name: str
    type: Any
    link: Any
    widget: str | None


@dataclass(slots=True)
class Node:
    """One node as the editor holds it after ``configure``: inputs reordered by its class."""

    id: str
    type: str
    mode: int
    title: str
    inputs: list[Input]
    output_types: list[Any]
    output_links: list[list[Any]]
    spec: NodeSpec | None
    subgraph: Graph | None
    widgets: dict[str, Any]  # widget name -> value (value widgets and subgraph promotions)
    controls: dict[str, str]  # value widget name -> control_after_generate
    raw: Mapping[str, Any]

    @property
    def virtual(self) -> bool:
        return self.subgraph is not None or (self.spec is None and self.type in VIRTUAL_NODE_TYPES)


@dataclass(slots=True)
class Graph:
    """The root graph or one subgraph definition."""

    id: str | None
    nodes: dict[str, Node]
    links: dict[Any, Link]
    inputs: list[Mapping[str, Any]] = field(default_factory=list)
    outputs: list[Mapping[str, Any]] = field(default_factory=list)


def where(graph_id: str | None) -> str:
    return f" in subgraph {graph_id}" if graph_id else ""


def _node_id(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise InvalidWorkflow(
            f"{what} has no valid id ({value!r}); re-save the workflow in ComfyUI"
        )
    return str(value)


def _read_links(raw: Any, graph_id: str | None) -> dict[Any, Link]:
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        raw = list(raw.values())
    if not isinstance(raw, list):
        raise InvalidWorkflow(f'"links"{where(graph_id)} must be a list; re-save the workflow')
    links: dict[Any, Link] = {}
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
            link = Link(
                fields[0],
                str(fields[1]),
                int(fields[2]),
                str(fields[3]),
                int(fields[4]),
                fields[5],
            )
        except (KeyError, TypeError, ValueError, IndexError):
            raise InvalidWorkflow(
                f"Malformed link {str(entry)[:80]}{where(graph_id)}: a link is "
                "[id, origin_id, origin_slot, target_id, target_slot, type]; re-save the workflow"
            ) from None
        links[link.id] = link
    return links


class Document:
    """A save-format workflow read once: its root graph and the subgraph definitions it uses.

    Args:
        workflow: the save-format mapping.
        catalog: the node classes, to put each node's inputs and widgets in the editor's order.

    Raises:
        InvalidWorkflow: a malformed node, link or subgraph.
    """

    def __init__(self, workflow: Mapping[str, Any], catalog: NodeCatalog) -> None:
        self.catalog = catalog
        definitions = workflow.get("definitions")
        subgraphs = definitions.get("subgraphs") if isinstance(definitions, Mapping) else None
        self.raw_subgraphs: dict[str, Mapping[str, Any]] = {}
        for sub in subgraphs or ():
            if isinstance(sub, Mapping) and isinstance(sub.get("id"), str):
                self.raw_subgraphs[sub["id"]] = sub
        self.subgraphs: dict[str, Graph] = {}
        self.building: set[str] = set()
        self._layouts: dict[
            str, tuple[tuple[tuple[str, str, str | None], ...], frozenset[str]]
        ] = {}
        extra = workflow.get("extra")
        groups = extra.get("groupNodes") if isinstance(extra, Mapping) else None
        # legacy group nodes, typed "workflow>NAME"
        self.group_nodes = (
            {f"workflow>{g}" for g in groups} if isinstance(groups, Mapping) else set()
        )
        self.root = self._graph(None, workflow)

    def _graph(self, graph_id: str | None, raw: Mapping[str, Any]) -> Graph:
        nodes_raw = raw.get("nodes")
        if not isinstance(nodes_raw, list):
            raise InvalidWorkflow(f'"nodes"{where(graph_id)} must be a list; re-save the workflow')
        graph = Graph(graph_id, {}, _read_links(raw.get("links"), graph_id))
        if graph_id is not None:
            graph.inputs = [i for i in raw.get("inputs") or () if isinstance(i, Mapping)]
            graph.outputs = [o for o in raw.get("outputs") or () if isinstance(o, Mapping)]
        for raw_node in nodes_raw:
            if not isinstance(raw_node, Mapping):
                raise InvalidWorkflow(
                    f"A node{where(graph_id)} is not an object ({str(raw_node)[:60]}); "
                    "re-save the workflow"
                )
            node_id = _node_id(raw_node.get("id"), f"A node{where(graph_id)}")
            if node_id in graph.nodes:
                raise InvalidWorkflow(
                    f"Two nodes{where(graph_id)} have the id {node_id}; re-save the workflow"
                )
            graph.nodes[node_id] = self._node(node_id, raw_node, graph_id)
        return graph

    def _subgraph(self, subgraph_id: str) -> Graph:
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

    def _node(self, node_id: str, raw: Mapping[str, Any], graph_id: str | None) -> Node:
        node_type = raw.get("type")
        if not isinstance(node_type, str) or not node_type:
            raise InvalidWorkflow(
                f"Node {node_id}{where(graph_id)} has no type; re-save the workflow in ComfyUI"
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
                title = FRONTEND_DISPLAY_NAMES.get(node_type, spec.display_name)
            elif subgraph is not None:
                title = str(self.raw_subgraphs[node_type].get("name") or node_type)
            else:
                title = node_type
        if spec is None and node_type in self.group_nodes:
            raise InvalidWorkflow(
                f"Node {node_id} ({title}) is a legacy group node, which is not converted; "
                "open the workflow in ComfyUI and convert the group node to a subgraph"
            )
        node = Node(
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
        node: Node,
        spec: NodeSpec,
        saved_inputs: list[Mapping[str, Any]],
        saved_outputs: list[Mapping[str, Any]],
    ) -> None:
        layout = self._layouts.get(spec.class_type)
        if layout is None:  # the editor's socket order, once per class: links, then widgets
            order = [i for i in spec.inputs if not i.is_widget]
            order += [i for i in spec.inputs if i.is_widget]
            slots = tuple((i.name, i.type, i.name if i.is_widget else None) for i in order)
            layout = (slots, frozenset(i.name for i in order))
            self._layouts[spec.class_type] = layout
        slots, known = layout
        links = {s.get("name"): s.get("link") for s in saved_inputs}
        node.inputs = [Input(name, kind, links.get(name), widget) for name, kind, widget in slots]
        # a saved input the class no longer has stays, after the class's own
        node.inputs += [_input_of(s) for s in saved_inputs if s.get("name") not in known]
        node.output_types = list(spec.outputs) + [
            s.get("type") for s in saved_outputs[len(spec.outputs) :]
        ]
        node.output_links = [_links_of(s) for s in saved_outputs]
        values = _migrate(spec, node.raw.get("widgets_values"))
        _assign_widgets(node, spec.widget_slots, values)

    def _configure_subgraph_node(
        self,
        node: Node,
        subgraph: Graph,
        saved_inputs: list[Mapping[str, Any]],
        saved_outputs: list[Mapping[str, Any]],
    ) -> None:
        by_name = {s.get("name"): s for s in saved_inputs}
        promoted: list[tuple[str, Any]] = []
        for index, sub_input in enumerate(subgraph.inputs):
            name = str(sub_input.get("name", ""))
            # by name only: an instance saves just the inputs it shows as sockets
            saved = by_name.get(name) or {}
            widget = _promoted_widget(subgraph, index, sub_input)
            node.inputs.append(
                Input(name, sub_input.get("type"), saved.get("link"), name if widget else None)
            )
            if widget is not None:
                # A promoted widget is a copy of the inner one without its control widget: the
                # editor (1.32.9) never changes it after a run, whatever the inner control says.
                promoted.append((name, widget[0]))
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


def _saved_slots(raw: Any, node_id: str, what: str) -> list[Mapping[str, Any]]:
    if raw is None:
        return []
    if type(raw) is not list or not all(type(s) is dict or isinstance(s, Mapping) for s in raw):
        raise InvalidWorkflow(
            f"Node {node_id} has malformed {what} (a list of objects is expected); "
            "re-save the workflow in ComfyUI"
        )
    return raw


def _input_of(saved: Mapping[str, Any]) -> Input:
    widget = saved.get("widget")
    name = widget.get("name") if isinstance(widget, Mapping) else None
    return Input(str(saved.get("name", "")), saved.get("type"), saved.get("link"), name)


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
        2 if i.options.get("control_after_generate") or i.name in SEED_NAMES else 1 for i in counted
    )
    if size != len(values):
        return values
    return [v for i, v in zip(counted, values, strict=False) if not i.options.get("forceInput")]


def _assign_widgets(node: Node, slots: tuple[WidgetSlot, ...], values: Any) -> None:
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
    subgraph: Graph, index: int, sub_input: Mapping[str, Any]
) -> tuple[Any, str | None] | None:
    """The inner widget a subgraph input stands for (the first linked inner widget input): its
    value and control."""
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
