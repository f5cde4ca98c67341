"""Save-format workflows built in code: a large graph for the converter's benchmark and tests.

The nodes are the model-free image nodes every ComfyUI has (``EmptyImage``, ``ImageInvert``,
``ImageBlur``, ``SaveImage``) plus the editor's own ``Reroute`` and ``PrimitiveNode``, so the
graph exercises every path of the converter: links, reroutes, primitives, bypass and mute.
"""

from __future__ import annotations

from typing import Any

UNIT_NODES = 8
"""Nodes in one repeated unit of :func:`large_workflow`."""


def large_workflow(units: int) -> dict[str, Any]:
    """A save-format workflow of ``units`` independent units, ``UNIT_NODES`` nodes each.

    One unit: a PrimitiveNode feeding EmptyImage's width, EmptyImage -> Reroute -> Reroute ->
    ImageInvert (bypassed) -> ImageBlur -> SaveImage, and a muted ImageInvert on the side.
    """
    nodes: list[dict[str, Any]] = []
    links: list[list[Any]] = []

    def link(origin: int, origin_slot: int, target: int, target_slot: int, kind: str) -> int:
        links.append([len(links) + 1, origin, origin_slot, target, target_slot, kind])
        return len(links)

    def slot(name: str, kind: str, link_id: int | None, widget: bool = False) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "type": kind, "link": link_id}
        if widget:
            entry["widget"] = {"name": name}
        return entry

    for unit in range(units):
        base = unit * UNIT_NODES + 1
        prim, empty, r1, r2, inv, blur, save, muted = range(base, base + UNIT_NODES)
        l_prim = link(prim, 0, empty, 0, "INT")
        l_empty = link(empty, 0, r1, 0, "*")
        l_r1 = link(r1, 0, r2, 0, "*")
        l_r2 = link(r2, 0, inv, 0, "IMAGE")
        l_inv = link(inv, 0, blur, 0, "IMAGE")
        l_blur = link(blur, 0, save, 0, "IMAGE")
        l_side = link(empty, 0, muted, 0, "IMAGE")
        int_widgets = ("width", "height", "batch_size", "color")
        nodes += [
            _node(prim, "PrimitiveNode", [], [("INT", "INT", [l_prim])], [64 + unit % 7, "fixed"]),
            _node(
                empty,
                "EmptyImage",
                [slot(n, "INT", l_prim if n == "width" else None, True) for n in int_widgets],
                [("IMAGE", "IMAGE", [l_empty, l_side])],
                [64, 32, 1, unit],
            ),
            _node(r1, "Reroute", [slot("", "*", l_empty)], [("", "IMAGE", [l_r1])], None),
            _node(r2, "Reroute", [slot("", "*", l_r1)], [("", "IMAGE", [l_r2])], None),
            _node(
                inv,
                "ImageInvert",
                [slot("image", "IMAGE", l_r2)],
                [("IMAGE", "IMAGE", [l_inv])],
                [],
                mode=4,
            ),
            _node(
                blur,
                "ImageBlur",
                [
                    slot("image", "IMAGE", l_inv),
                    slot("blur_radius", "INT", None, True),
                    slot("sigma", "FLOAT", None, True),
                ],
                [("IMAGE", "IMAGE", [l_blur])],
                [1 + unit % 5, 0.5],
            ),
            _node(save, "SaveImage", [slot("images", "IMAGE", l_blur)], [], [f"unit{unit}"]),
            _node(
                muted,
                "ImageInvert",
                [slot("image", "IMAGE", l_side)],
                [("IMAGE", "IMAGE", [])],
                [],
                mode=2,
            ),
        ]
    return {
        "id": "00000000-0000-0000-0000-00000000b16",
        "revision": 0,
        "last_node_id": units * UNIT_NODES,
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def _node(
    node_id: int,
    kind: str,
    inputs: list[dict[str, Any]],
    outputs: list[tuple[str, str, list[int]]],
    widgets: list[Any] | None,
    mode: int = 0,
) -> dict[str, Any]:
    node: dict[str, Any] = {
        "id": node_id,
        "type": kind,
        "pos": [0, node_id * 10],
        "size": [200, 80],
        "flags": {},
        "order": node_id,
        "mode": mode,
        "inputs": inputs,
        "outputs": [{"name": n, "type": t, "links": links} for n, t, links in outputs],
        "properties": {},
    }
    if widgets is not None:
        node["widgets_values"] = widgets
    return node
