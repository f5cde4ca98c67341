"""ComfyUI API-format workflows: validation, execution order, the execution plan and image sizes.

A workflow is ``{"<node_id>": {"class_type": str, "inputs": {...}, "_meta"?: {...}}}``; an input that
is a link is ``[node_id, output_index]``. Plain code, no I/O: the state passes in what it knows about
the account's inputs and models.

Example:
    >>> from prefect_comfy_emulator.workflow import validate_workflow
    >>> validate_workflow({}, input_ready=lambda n: False, model_ready=lambda n, t: False)[0]["message"]
    'the workflow is empty: it must be an object of nodes'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect_comfy_emulator.nodes import (
    EMULATOR_SLEEP_SLICE,
    MODEL_CATALOGUE,
    NODE_CLASSES,
    SAMPLER_CLASSES,
    InputSpec,
)

NODE_KEYS = frozenset({"class_type", "inputs", "_meta", "is_changed"})
DEFAULT_SIDE = 64
DEFAULT_SAMPLER_STEPS = 20


def _error(node_id: str | None, field: str | None, message: str) -> dict[str, Any]:
    return {"node_id": node_id, "field": field, "message": message}


def is_link(value: Any) -> bool:
    """Whether an input value is a link ``[node_id, output_index]``."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _check_widget(
    spec: InputSpec,
    value: Any,
    input_ready: Callable[[str], bool],
    model_ready: Callable[[str, tuple[str, ...]], bool],
) -> str | None:
    kind = spec.type
    if kind == "INT" and (not isinstance(value, int) or isinstance(value, bool)):
        return f"expects an integer, got {type(value).__name__}"
    if kind == "FLOAT" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        return f"expects a number, got {type(value).__name__}"
    if kind in ("STRING", "COMBO") and not isinstance(value, str):
        return f"expects a string, got {type(value).__name__}"
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return f"expects a boolean, got {type(value).__name__}"
    if spec.min is not None and value < spec.min:
        return f"value {value} is smaller than the minimum {spec.min:g}"
    if spec.max is not None and value > spec.max:
        return f"value {value} is bigger than the maximum {spec.max:g}"
    if spec.choices and value not in spec.choices:
        return f"value {value!r} is not one of the allowed values"
    if spec.model_types and not model_ready(value, spec.model_types):
        return f"model {value!r} of type {'/'.join(spec.model_types)} is not available"
    if spec.uploaded_input and not input_ready(value):
        return f"image {value!r} is not a ready input of this account"
    return None


def _check_link(workflow: dict[str, Any], spec: InputSpec, value: list[Any]) -> str | None:
    target_id = str(value[0])
    target = workflow.get(target_id)
    if not isinstance(target, dict):
        return f"links to node {target_id!r}, which is not in the workflow"
    target_class = NODE_CLASSES.get(target.get("class_type"))  # type: ignore[arg-type]
    if target_class is None:
        return None  # the target's own error says why
    index = value[1]
    if not 0 <= index < len(target_class.outputs):
        return (
            f"links to output {index} of node {target_id!r} ({target_class.name}), which has "
            f"{len(target_class.outputs)} output(s)"
        )
    produced = target_class.outputs[index]
    if produced != spec.type:
        return (
            f"type mismatch: expects {spec.type}, node {target_id!r} output {index} is {produced}"
        )
    return None


def _check_node(
    workflow: dict[str, Any],
    node_id: str,
    node: Any,
    input_ready: Callable[[str], bool],
    model_ready: Callable[[str, tuple[str, ...]], bool],
) -> list[dict[str, Any]]:
    if not isinstance(node, dict):
        return [_error(node_id, None, "a node must be an object with class_type and inputs")]
    errors = [
        _error(node_id, key, f"unknown node key {key!r}") for key in node if key not in NODE_KEYS
    ]
    class_type = node.get("class_type")
    if not isinstance(class_type, str):
        return [*errors, _error(node_id, "class_type", "class_type is missing or not a string")]
    inputs = node.get("inputs", {})
    if not isinstance(inputs, dict):
        return [*errors, _error(node_id, "inputs", "inputs must be an object")]
    node_class = NODE_CLASSES.get(class_type)
    if node_class is None:
        return [*errors, _error(node_id, "class_type", f"unknown node class {class_type!r}")]
    specs = {**node_class.required, **node_class.optional}
    for name in node_class.required:
        if name not in inputs:
            errors.append(_error(node_id, name, f"required input {name!r} is missing"))
    for name, value in inputs.items():
        spec = specs.get(name)
        if spec is None:
            continue  # ComfyUI ignores inputs a class does not declare
        if is_link(value):
            problem = _check_link(workflow, spec, value)
        elif not spec.is_widget:
            problem = f"expects a link [node_id, output_index] to a {spec.type} output"
        else:
            problem = _check_widget(spec, value, input_ready, model_ready)
        if problem:
            errors.append(_error(node_id, name, problem))
    return errors


def validate_workflow(
    workflow: Any,
    *,
    input_ready: Callable[[str], bool],
    model_ready: Callable[[str, tuple[str, ...]], bool],
) -> list[dict[str, Any]]:
    """Every problem of a workflow, as ``[{"node_id", "field", "message"}]``; empty when it can run.

    Args:
        workflow: the graph as sent.
        input_ready: whether the account has a ready input of that name.
        model_ready: whether a model name of one of the types is available (catalogue or uploaded).
    """
    if not isinstance(workflow, dict) or not workflow:
        return [_error(None, "workflow", "the workflow is empty: it must be an object of nodes")]
    errors: list[dict[str, Any]] = []
    for node_id, node in workflow.items():
        errors.extend(_check_node(workflow, node_id, node, input_ready, model_ready))
    outputs = [
        nid
        for nid, node in workflow.items()
        if isinstance(node, dict)
        and node.get("class_type") in NODE_CLASSES
        and NODE_CLASSES[node["class_type"]].output_node
    ]
    if not outputs:
        errors.append(
            _error(None, None, "the workflow has no output node (SaveImage, PreviewImage, …)")
        )
    if not errors and topological_order(workflow) is None:
        errors.append(_error(None, None, "the workflow has a cycle"))
    return errors


def catalogue_has(name: str, types: tuple[str, ...]) -> bool:
    """Whether the built-in catalogue holds ``name`` for one of the model types."""
    return any(name in MODEL_CATALOGUE.get(t, ()) for t in types)


def _sort_key(node_id: str) -> tuple[int, int, str]:
    return (0, int(node_id), "") if node_id.isascii() and node_id.isdigit() else (1, 0, node_id)


def topological_order(workflow: dict[str, Any]) -> list[str] | None:
    """Node ids so that every node comes after the nodes it links to (ties by id); None for a cycle."""
    deps: dict[str, set[str]] = {}
    for node_id, node in workflow.items():
        links = (v for v in node.get("inputs", {}).values() if is_link(v))
        deps[node_id] = {str(v[0]) for v in links if str(v[0]) in workflow}
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(deps):
        ready = sorted((n for n in deps if n not in done and deps[n] <= done), key=_sort_key)
        if not ready:
            return None
        order.extend(ready)
        done.update(ready)
    return order


@dataclass(frozen=True)
class NodeRun:
    """How one node runs: ``steps`` steps of ``step_seconds`` (None: the configured step_duration)."""

    node_id: str
    class_type: str
    steps: int
    step_seconds: float | None = None
    fails: bool = False


def execution_plan(workflow: dict[str, Any]) -> list[NodeRun]:
    """The nodes of a valid workflow in execution order, with their steps."""
    plan: list[NodeRun] = []
    for node_id in topological_order(workflow) or []:
        class_type = workflow[node_id]["class_type"]
        inputs = workflow[node_id].get("inputs", {})
        if class_type in SAMPLER_CLASSES:
            steps = inputs.get("steps")
            plan.append(
                NodeRun(
                    node_id, class_type, steps if isinstance(steps, int) else DEFAULT_SAMPLER_STEPS
                )
            )
        elif class_type == "EmulatorSleep":
            seconds = float(inputs.get("seconds", 0))
            count = max(1, math.ceil(seconds / EMULATOR_SLEEP_SLICE))
            plan.append(NodeRun(node_id, class_type, count, seconds / count))
        elif class_type == "EmulatorFail":
            plan.append(NodeRun(node_id, class_type, int(inputs.get("after_steps", 0)), fails=True))
        else:
            plan.append(NodeRun(node_id, class_type, 1))
    return plan


_PASS_THROUGH = {
    "KSampler": "latent_image",
    "KSamplerAdvanced": "latent_image",
    "VAEDecode": "samples",
    "VAEEncode": "pixels",
    "VAEEncodeForInpaint": "pixels",
    "SetLatentNoiseMask": "samples",
    "ImageBlur": "image",
    "ImageSharpen": "image",
    "ImageInvert": "image",
    "EmulatorSleep": "images",
    "ImageScale": "image",
    "ImageScaleBy": "image",
    "ImageUpscaleWithModel": "image",
    "ImageCrop": "image",
    "LatentUpscale": "samples",
    "LatentUpscaleBy": "samples",
}


def image_size(
    workflow: dict[str, Any],
    node_id: str,
    *,
    input_size: Callable[[str], tuple[int, int] | None],
    max_side: int,
    max_batch: int,
) -> tuple[int, int, int]:
    """``(width, height, count)`` of the images a node's IMAGE/LATENT output carries.

    Sizes come from EmptyImage/EmptyLatentImage (and LoadImage's uploaded PNG), follow scaling nodes,
    default to 64×64, and are cut to ``max_side`` and ``max_batch``.
    """
    w, h, n = _size(workflow, node_id, input_size, depth=0)
    return max(1, min(w, max_side)), max(1, min(h, max_side)), max(1, min(n, max_batch))


def _num(inputs: dict[str, Any], name: str, default: float) -> float:
    value = inputs.get(name, default)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _size(
    workflow: dict[str, Any],
    node_id: str,
    input_size: Callable[[str], tuple[int, int] | None],
    depth: int,
) -> tuple[int, int, int]:
    node = workflow.get(node_id)
    if not isinstance(node, dict) or depth > len(workflow):
        return DEFAULT_SIDE, DEFAULT_SIDE, 1
    class_type, inputs = node.get("class_type"), node.get("inputs", {})
    if class_type in ("EmptyImage", "EmptyLatentImage"):
        return (
            int(_num(inputs, "width", DEFAULT_SIDE)),
            int(_num(inputs, "height", DEFAULT_SIDE)),
            int(_num(inputs, "batch_size", 1)),
        )
    if class_type == "LoadImage":
        found = input_size(inputs.get("image")) if isinstance(inputs.get("image"), str) else None
        return (*(found or (DEFAULT_SIDE, DEFAULT_SIDE)), 1)
    source = inputs.get(_PASS_THROUGH.get(class_type, ""))
    w, h, n = (
        _size(workflow, str(source[0]), input_size, depth + 1)
        if is_link(source)
        else (DEFAULT_SIDE, DEFAULT_SIDE, 1)
    )
    if class_type == "ImageCrop":
        return int(_num(inputs, "width", w)), int(_num(inputs, "height", h)), n
    if class_type in ("ImageScale", "LatentUpscale"):
        new_w, new_h = int(_num(inputs, "width", 0)), int(_num(inputs, "height", 0))
        if new_w == 0 and new_h == 0:
            return w, h, n
        if new_w == 0:
            new_w = max(1, round(w * new_h / h))
        if new_h == 0:
            new_h = max(1, round(h * new_w / w))
        return new_w, new_h, n
    if class_type in ("ImageScaleBy", "LatentUpscaleBy"):
        factor = _num(inputs, "scale_by", 1.0)
        return max(1, round(w * factor)), max(1, round(h * factor)), n
    if class_type == "ImageUpscaleWithModel":
        return w * 4, h * 4, n
    return w, h, n
