"""The emulator's node catalog, in the shape of ComfyUI's ``GET /object_info``.

Served, like a local ComfyUI's, without authentication at ``/object_info`` and
``/api/object_info`` of the emulator's origin, so the emulator's address works as the
``catalog_source`` of a block of either face (the developer API and v2 have no catalog route of
their own). It lists `NODE_CLASSES`; a model name's choices are
the built-in `MODEL_CATALOGUE`, and an uploaded image's are
left empty (the emulator does not list an account's inputs here).

Example:
    >>> object_info()["KSampler"]["input"]["required"]["seed"][1]["control_after_generate"]
    True
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from prefect_comfy_emulator.nodes import MODEL_CATALOGUE, NODE_CLASSES, InputSpec, NodeClass

__all__ = ["catalog_routes", "object_info"]

SEED_NAMES = frozenset({"seed", "noise_seed"})
"""Inputs the ComfyUI editor gives a ``control_after_generate`` widget."""


def _input(name: str, spec: InputSpec) -> list[Any]:
    options: dict[str, Any] = {}
    if spec.min is not None:
        options["min"] = int(spec.min) if spec.type == "INT" else spec.min
    if spec.max is not None:
        options["max"] = int(spec.max) if spec.type == "INT" else spec.max
    if spec.type == "INT" and name in SEED_NAMES:
        options["control_after_generate"] = True
    if spec.type == "COMBO":
        choices = list(spec.choices)
        for model_type in spec.model_types:
            choices += [c for c in MODEL_CATALOGUE.get(model_type, ()) if c not in choices]
        if spec.uploaded_input:
            options["image_upload"] = True
        return [choices, options]
    if spec.type == "STRING" and name == "text":
        options["multiline"] = True
    return [spec.type, options] if options else [spec.type]


def _node(node: NodeClass) -> dict[str, Any]:
    return {
        "input": {
            "required": {n: _input(n, s) for n, s in node.required.items()},
            "optional": {n: _input(n, s) for n, s in node.optional.items()},
        },
        "input_order": {"required": list(node.required), "optional": list(node.optional)},
        "output": list(node.outputs),
        "output_is_list": [False] * len(node.outputs),
        "output_name": list(node.outputs),
        "name": node.name,
        "display_name": node.name,
        "description": node.description,
        "category": "emulator",
        "output_node": node.output_node,
    }


def object_info() -> dict[str, Any]:
    """Every node class of the emulator, as ComfyUI's ``/object_info`` describes its nodes."""
    return {name: _node(node) for name, node in NODE_CLASSES.items()}


async def _object_info(request: Request) -> Response:
    return JSONResponse(object_info())


def catalog_routes() -> list[BaseRoute]:
    """``GET /object_info`` and ``GET /api/object_info``, open like a local ComfyUI's."""
    return [Route(p, _object_info, methods=["GET"]) for p in ("/object_info", "/api/object_info")]
