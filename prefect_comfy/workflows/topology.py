"""The order and shape of a graph: litegraph's execution order, its type matching, and cycles."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from typing import Any

from prefect_comfy.exceptions import InvalidWorkflow
from prefect_comfy.workflows.document import Graph, Node

__all__ = ["ARRAY_INDEX", "bypass_slot", "check_acyclic", "execution_order", "valid_connection"]

ARRAY_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")
"""Keys a JavaScript object orders first, by number (so the editor's graph lists them so)."""


def valid_connection(a: Any, b: Any) -> bool:
    """``LiteGraph.isValidConnection``: ``*`` and empty match anything; lists split on commas."""
    a = 0 if a in ("", "*") else a
    b = 0 if b in ("", "*") else b
    if not a or not b or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(valid_connection(x, y) for x in a.split(",") for y in b.split(","))


def bypass_slot(node: Node, slot: int, want: Any) -> int:
    """Which input a bypassed node passes to its output ``slot`` for a consumer of type ``want``."""
    inputs = node.inputs
    if want in ("*", ""):
        return slot if len(inputs) > slot else 0
    same = inputs[slot] if slot < len(inputs) else None
    out_type = node.output_types[slot] if slot < len(node.output_types) else None
    if (
        same is not None
        and valid_connection(same.type, out_type)
        and valid_connection(same.type, want)
    ):
        return slot
    for index, candidate in enumerate(inputs):
        if candidate.type == want:
            return index
    for index, candidate in enumerate(inputs):
        if valid_connection(candidate.type, out_type) and valid_connection(candidate.type, want):
            return index
    return -1


def execution_order(graph: Graph) -> list[Node]:
    """litegraph's ``computeExecutionOrder``: Kahn's order, nodes left in a loop at the end."""
    remaining: dict[str, int] = {}
    ready: deque[Node] = deque()
    for node in graph.nodes.values():
        count = sum(1 for i in node.inputs if i.link is not None)
        if count:
            remaining[node.id] = count
        else:
            ready.append(node)
    order: list[Node] = []
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
    rest.sort(key=lambda n: (0, int(n.id), "") if ARRAY_INDEX.match(n.id) else (1, 0, ""))
    return order + rest


def check_acyclic(graph: dict[str, Any]) -> None:
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
