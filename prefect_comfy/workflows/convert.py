"""Save format -> API format, the way the ComfyUI editor's own ``graphToPrompt()`` does it.

The editor saves a workflow as a litegraph document (``nodes``, ``links``, ``widgets_values``,
``definitions.subgraphs``); the server runs an API-format graph (node id -> ``class_type`` and
``inputs``). `convert_workflow` turns the first into the second without a browser, following
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
setting is returned beside the graph (`ApiWorkflow.controls`) for the run to act on.

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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from prefect_comfy.exceptions import InvalidWorkflow, UnknownNodeType
from prefect_comfy.workflows.catalog import NodeCatalog
from prefect_comfy.workflows.document import (
    MODE_BYPASS,
    MODE_NEVER,
    SUBGRAPH_INPUT_ID,
    SUBGRAPH_OUTPUT_ID,
    VIRTUAL_NODE_TYPES,
    Document,
    Graph,
    Input,
    Link,
    Node,
    where,
)
from prefect_comfy.workflows.topology import (
    ARRAY_INDEX,
    bypass_slot,
    check_acyclic,
    execution_order,
)

__all__ = [
    "VIRTUAL_NODE_TYPES",
    "ApiWorkflow",
    "convert_workflow",
    "is_save_format",
    "to_api_format",
]


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
        object_info: the server's ``/object_info`` mapping, or a `NodeCatalog` of it
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

    See `convert_workflow` for the arguments and errors.
    """
    return convert_workflow(workflow, object_info).graph


class _Step(NamedTuple):
    """The next hop of a link walk: an input (``is_input``) or an output of a node."""

    is_input: bool
    exec_id: str
    slot: int
    want: Any


class _Converter:
    """One conversion: the document flattened into executable nodes, then serialised."""

    def __init__(self, workflow: Mapping[str, Any], catalog: NodeCatalog) -> None:
        self.root = Document(workflow, catalog).root
        # execution id -> (node, graph, subgraph path, containing subgraph node's execution id)
        self.dtos: dict[str, tuple[Node, Graph, tuple[str, ...], str | None]] = {}
        self.overrides: dict[tuple[str, str], tuple[Any, str | None]] = {}

    def run(self) -> ApiWorkflow:
        for node in execution_order(self.root):
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
        check_acyclic(graph)
        ordered = {k: graph[k] for k in sorted((k for k in graph if ARRAY_INDEX.match(k)), key=int)}
        ordered.update((k, v) for k, v in graph.items() if k not in ordered)
        return ApiWorkflow(ordered, {k: v for k, v in controls.items() if k[0] in ordered})

    def _add_dto(
        self,
        node: Node,
        graph: Graph,
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

    def _apply_primitive(self, node: Node, graph: Graph, path: tuple[str, ...]) -> None:
        value = node.widgets["value"]
        control = node.controls.get("value")
        for link_ids in node.output_links[:1]:
            for link_id in link_ids:
                link = graph.links.get(link_id)
                target = graph.nodes.get(link.target_id) if link is not None else None
                if target is None or link is None:
                    continue
                # The editor renumbers a loaded node's inputs, and its links with them; the
                # PrimitiveNode then takes the linked input's widget name. Find it by the link.
                slot = next((i for i in target.inputs if i.link == link.id), None)
                name = slot.widget if slot is not None else None
                if name is not None:
                    target_id = ":".join((*path, target.id))
                    self.overrides[(target_id, name)] = (value, control)

    # -- one node --------------------------------------------------------------------------------

    def _serialize(
        self,
        exec_id: str,
        node: Node,
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
            resolved = self._resolve(exec_id, slot)
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

    def _resolve(self, exec_id: str, slot: int) -> tuple[Any, ...] | None:
        """What input ``slot`` of a node receives, as ``resolveInput`` finds it.

        ``None`` (nothing), ``("link", node id, output slot)``, ``("value", value, control)``
        (a subgraph's promoted widget), or ``("missing", bypassed node id, type)``. The walk
        is a loop, not a recursion, so a chain of ten thousand Reroutes does not overflow.
        """
        visited: set[str] = set()
        step: _Step | tuple[Any, ...] | None = _Step(True, exec_id, slot, None)
        while isinstance(step, _Step):
            if step.is_input:
                step = self._input_step(step.exec_id, step.slot, visited, step.want)
            else:
                step = self._output_step(step.exec_id, step.slot, step.want, visited)
        return step

    def _input_step(
        self, exec_id: str, slot: int, visited: set[str], want: Any
    ) -> _Step | tuple[Any, ...] | None:
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
            return self._from_outside(container, link, node_input)
        origin = graph.nodes.get(link.origin_id)
        if origin is None:
            raise InvalidWorkflow(
                f"Node {exec_id} ({node.title}), input {node_input.name!r}, is linked to node "
                f"{link.origin_id}{where(graph.id)}, which does not exist; reconnect it in ComfyUI"
            )
        origin_id = ":".join((*path, origin.id))
        return _Step(False, origin_id, link.origin_slot, want or node_input.type)

    def _from_outside(
        self, container: str, link: Link, node_input: Input
    ) -> _Step | tuple[Any, ...] | None:
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
        return _Step(True, container, link.origin_slot, None)

    def _output_step(
        self, exec_id: str, slot: int, want: Any, visited: set[str]
    ) -> _Step | tuple[Any, ...] | None:
        node, graph, path, _container = self.dtos[exec_id]
        key = f"{graph.id}:{node.id}[O]{slot}"
        if key in visited:
            raise InvalidWorkflow(
                f"Links form a loop at node {exec_id} ({node.title}), output {slot}; "
                "break the loop in ComfyUI (look for Reroutes or subgraphs wired in a circle)"
            )
        visited.add(key)
        if node.mode == MODE_BYPASS:
            index = bypass_slot(node, slot, want)
            if index == -1:
                return ("missing", exec_id, want)
            return _Step(True, exec_id, index, None)
        if node.subgraph is not None:
            return self._subgraph_output(exec_id, node, slot, want)
        if node.virtual:
            if slot < len(node.inputs) and node.inputs[slot].link is not None:
                return _Step(True, exec_id, slot, want)
            return None
        return ("link", exec_id, slot)

    def _subgraph_output(
        self, exec_id: str, node: Node, slot: int, want: Any
    ) -> _Step | tuple[Any, ...] | None:
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
            return _Step(True, exec_id, link.origin_slot, None)
        inner = ":".join((exec_id, link.origin_id))
        if inner not in self.dtos:
            raise InvalidWorkflow(
                f"Subgraph {subgraph.id} links its output {slot} to node {link.origin_id}, "
                "which does not exist; reconnect it in ComfyUI"
            )
        return _Step(False, inner, link.origin_slot, want)

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
                resolved = self._resolve(exec_id, slot)
                if resolved is not None and resolved[0] == "missing":
                    bypassed = self.dtos[resolved[1]][0]
                    raise InvalidWorkflow(
                        f"Node {exec_id} ({node.title}) needs {node_input.name!r} "
                        f"({node_input.type}) from bypassed node {resolved[1]} "
                        f"({bypassed.title}), which has no input of that type to pass "
                        "through; un-bypass it or connect the input elsewhere"
                    )
