"""Hand-made workflows in the ComfyUI editor's save format, for tests of every door (issue 16).

- :func:`txt2img`: the emulator's text-to-image (checkpoint, two titled prompts, a KSampler whose
  seed is marked ``randomize``, a Reroute before the SaveImage, a Note);
- :func:`invert`: model-free, runs on a real ComfyUI: EmptyImage -> Reroute -> ImageInvert ->
  SaveImage, and a Note.

Each call returns a fresh dict, so a test may change it.
"""

from __future__ import annotations

from typing import Any


def _node(
    node_id: int,
    type_: str,
    widgets: list[Any] | None = None,
    *,
    inputs: list[tuple[str, str, int | None]] = (),  # type: ignore[assignment]
    outputs: list[tuple[str, str, list[int]]] = (),  # type: ignore[assignment]
    title: str | None = None,
    mode: int = 0,
) -> dict[str, Any]:
    node: dict[str, Any] = {
        "id": node_id,
        "type": type_,
        "pos": [node_id * 100, 0],
        "size": [200, 100],
        "flags": {},
        "order": node_id,
        "mode": mode,
        "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
        "outputs": [
            {"name": n, "type": t, "links": links, "slot_index": i}
            for i, (n, t, links) in enumerate(outputs)
        ],
        "properties": {"Node name for S&R": type_},
        "widgets_values": list(widgets or []),
    }
    if title:
        node["title"] = title
    return node


def _document(nodes: list[dict[str, Any]], links: list[list[Any]]) -> dict[str, Any]:
    return {
        "id": "00000000-0000-4000-8000-000000000016",
        "revision": 0,
        "last_node_id": max(n["id"] for n in nodes),
        "last_link_id": max((link[0] for link in links), default=0),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def txt2img(seed_control: str = "randomize") -> dict[str, Any]:
    """Text to image on the emulator's nodes; the KSampler's seed is ``seed_control``."""
    nodes = [
        _node(
            1,
            "CheckpointLoaderSimple",
            ["v1-5-pruned-emaonly.safetensors"],
            outputs=[("MODEL", "MODEL", [1]), ("CLIP", "CLIP", [2, 3]), ("VAE", "VAE", [8])],
        ),
        _node(
            2,
            "CLIPTextEncode",
            ["a lighthouse at dusk"],
            inputs=[("clip", "CLIP", 2)],
            outputs=[("CONDITIONING", "CONDITIONING", [4])],
            title="Positive Prompt",
        ),
        _node(
            3,
            "CLIPTextEncode",
            ["blurry"],
            inputs=[("clip", "CLIP", 3)],
            outputs=[("CONDITIONING", "CONDITIONING", [5])],
            title="Negative Prompt",
        ),
        _node(4, "EmptyLatentImage", [512, 512, 1], outputs=[("LATENT", "LATENT", [6])]),
        _node(
            5,
            "KSampler",
            [42, seed_control, 4, 7.0, "euler", "normal", 1.0],
            inputs=[
                ("model", "MODEL", 1),
                ("positive", "CONDITIONING", 4),
                ("negative", "CONDITIONING", 5),
                ("latent_image", "LATENT", 6),
            ],
            outputs=[("LATENT", "LATENT", [7])],
        ),
        _node(
            6,
            "VAEDecode",
            inputs=[("samples", "LATENT", 7), ("vae", "VAE", 8)],
            outputs=[("IMAGE", "IMAGE", [9])],
        ),
        _node(8, "Reroute", inputs=[("", "*", 9)], outputs=[("", "IMAGE", [10])]),
        _node(7, "SaveImage", ["fox"], inputs=[("images", "IMAGE", 10)]),
        _node(9, "Note", ["Made by hand for the tests of issue 16"]),
    ]
    links = [
        [1, 1, 0, 5, 0, "MODEL"],
        [2, 1, 1, 2, 0, "CLIP"],
        [3, 1, 1, 3, 0, "CLIP"],
        [4, 2, 0, 5, 1, "CONDITIONING"],
        [5, 3, 0, 5, 2, "CONDITIONING"],
        [6, 4, 0, 5, 3, "LATENT"],
        [7, 5, 0, 6, 0, "LATENT"],
        [8, 1, 2, 6, 1, "VAE"],
        [9, 6, 0, 8, 0, "IMAGE"],
        [10, 8, 0, 7, 0, "IMAGE"],
    ]
    return _document(nodes, links)


def invert(prefix: str = "inverted") -> dict[str, Any]:
    """Model-free: a 64x64 image of one colour, inverted and saved; a Reroute and a Note."""
    nodes = [
        _node(
            1,
            "EmptyImage",
            [64, 64, 1, 0x336699],
            outputs=[("IMAGE", "IMAGE", [1])],
            title="Canvas",
        ),
        _node(2, "Reroute", inputs=[("", "*", 1)], outputs=[("", "IMAGE", [2])]),
        _node(
            3,
            "ImageInvert",
            inputs=[("image", "IMAGE", 2)],
            outputs=[("IMAGE", "IMAGE", [3])],
        ),
        _node(4, "SaveImage", [prefix], inputs=[("images", "IMAGE", 3)], title="Save"),
        _node(5, "Note", ["A note vanishes in the conversion"]),
    ]
    links = [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"]]
    return _document(nodes, links)
