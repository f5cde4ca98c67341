"""The emulator's node classes as a ComfyUI ``GET /object_info`` mapping, for tests of code that
reads a node catalog (types, ranges, choices) before the emulator serves one itself."""

from __future__ import annotations

from typing import Any

from prefect_comfy.emulator.nodes import MODEL_CATALOGUE, NODE_CLASSES, InputSpec


def _entry(spec: InputSpec) -> list[Any]:
    if spec.type == "COMBO":
        choices = list(spec.choices) or [
            name for kind in spec.model_types for name in MODEL_CATALOGUE.get(kind, ())
        ]
        return [choices, {}]
    options = {
        key: value for key, value in (("min", spec.min), ("max", spec.max)) if value is not None
    }
    if spec.type == "STRING":
        options["multiline"] = True
    return [spec.type, options]


def emulator_object_info() -> dict[str, Any]:
    """``{class_type: {"input": {"required": {...}, "optional": {...}}, "output": [...]}}``."""
    return {
        name: {
            "input": {
                "required": {k: _entry(v) for k, v in node.required.items()},
                "optional": {k: _entry(v) for k, v in node.optional.items()},
            },
            "output": list(node.outputs),
            "output_node": node.output_node,
        }
        for name, node in NODE_CLASSES.items()
    }
