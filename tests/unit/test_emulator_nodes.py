"""The node registry and workflow validation, execution order and image sizes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from prefect_comfy_emulator.nodes import MODEL_CATALOGUE, NODE_CLASSES, WIDGET_TYPES
from prefect_comfy_emulator.workflow import (
    execution_plan,
    image_size,
    topological_order,
    validate_workflow,
)

SD15: dict[str, Any] = {
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0],
        },
    },
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "beautiful scenery", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "_meta": {"title": "Save Image"}},
}  # fmt: skip
"""ComfyUI's default SD1.5 text-to-image graph, as exported in API format."""


def check(workflow: Any, inputs: tuple[str, ...] = (), models: tuple[str, ...] = ()) -> list[dict]:
    return validate_workflow(
        workflow,
        input_ready=lambda name: name in inputs,
        model_ready=lambda name, types: (
            name in models or any(name in MODEL_CATALOGUE[t] for t in types)
        ),
    )


def fields(errors: list[dict]) -> set[tuple[Any, Any]]:
    return {(e["node_id"], e["field"]) for e in errors}


def test_registry_is_consistent() -> None:
    for node in NODE_CLASSES.values():
        for spec in {**node.required, **node.optional}.values():
            assert spec.type.isupper()
        assert node.outputs or node.output_node, node.name
    for name in (
        "CheckpointLoaderSimple",
        "KSamplerAdvanced",
        "LoadImage",
        "UNETLoader",
        "EmulatorFail",
    ):
        assert name in NODE_CLASSES
    assert "INT" in WIDGET_TYPES


def test_default_sd15_workflow_is_valid() -> None:
    assert check(SD15) == []
    assert topological_order(SD15) == ["4", "5", "6", "7", "3", "8", "9"]
    plan = execution_plan(SD15)
    assert [run.node_id for run in plan] == ["4", "5", "6", "7", "3", "8", "9"]
    assert plan[4].steps == 20 and all(run.steps == 1 for run in plan if run.node_id != "3")


@pytest.mark.parametrize("workflow", [{}, [], None, "graph"])
def test_empty_or_non_graph(workflow: Any) -> None:
    assert fields(check(workflow)) == {(None, "workflow")}


def test_unknown_class_type() -> None:
    wf = copy.deepcopy(SD15)
    wf["6"]["class_type"] = "NoSuchNode"
    assert ("6", "class_type") in fields(check(wf))


def test_missing_required_input() -> None:
    wf = copy.deepcopy(SD15)
    del wf["3"]["inputs"]["steps"]
    assert fields(check(wf)) == {("3", "steps")}


def test_link_to_missing_node_and_bad_index_and_type() -> None:
    wf = copy.deepcopy(SD15)
    wf["8"]["inputs"]["samples"] = ["42", 0]
    wf["6"]["inputs"]["clip"] = ["4", 7]
    wf["7"]["inputs"]["clip"] = ["4", 0]  # MODEL, not CLIP
    errors = check(wf)
    assert fields(errors) == {("8", "samples"), ("6", "clip"), ("7", "clip")}
    messages = " ".join(e["message"] for e in errors)
    assert (
        "not in the workflow" in messages
        and "output(s)" in messages
        and "type mismatch" in messages
    )


def test_widget_types_ranges_and_choices() -> None:
    wf = copy.deepcopy(SD15)
    wf["3"]["inputs"].update(steps="20", sampler_name="nope", denoise=2.0)
    wf["5"]["inputs"]["width"] = True
    assert fields(check(wf)) == {
        ("3", "steps"),
        ("3", "sampler_name"),
        ("3", "denoise"),
        ("5", "width"),
    }


def test_socket_input_needs_a_link() -> None:
    wf = copy.deepcopy(SD15)
    wf["8"]["inputs"]["vae"] = "vae.safetensors"
    assert fields(check(wf)) == {("8", "vae")}


def test_models_from_catalogue_or_uploaded() -> None:
    wf = copy.deepcopy(SD15)
    wf["4"]["inputs"]["ckpt_name"] = "mine.safetensors"
    assert fields(check(wf)) == {("4", "ckpt_name")}
    assert check(wf, models=("mine.safetensors",)) == []


def test_load_image_needs_ready_input() -> None:
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    assert fields(check(wf)) == {("1", "image")}
    assert check(wf, inputs=("cat.png",)) == []


def test_no_output_node_and_cycle() -> None:
    no_output = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        }
    }
    assert fields(check(no_output)) == {(None, None)}
    cycle = {
        "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    assert "cycle" in check(cycle)[0]["message"]


def test_node_shape_errors() -> None:
    wf = {
        "1": {"class_type": "EmulatorFail", "inputs": {"message": "x"}, "extra": 1},
        "2": "not a node",
    }
    assert fields(check(wf)) == {("1", "extra"), ("2", None)}


def test_emulator_nodes_plan() -> None:
    wf = {
        "1": {"class_type": "EmulatorSleep", "inputs": {"seconds": 0.12}},
        "2": {"class_type": "EmulatorFail", "inputs": {"message": "boom", "after_steps": 3}},
    }
    assert check(wf) == []
    sleep, fail = execution_plan(wf)
    assert sleep.steps == 3 and sleep.step_seconds == pytest.approx(0.04)
    assert fail.steps == 3 and fail.fails


def test_image_size_follows_the_graph() -> None:
    def size(wf: dict, node: str, max_side: int = 1024) -> tuple[int, int, int]:
        return image_size(wf, node, input_size=lambda n: (100, 50), max_side=max_side, max_batch=4)

    assert size(SD15, "8") == (512, 512, 1)
    wf = copy.deepcopy(SD15)
    wf["5"]["inputs"].update(width=2048, batch_size=9)
    assert size(wf, "8") == (1024, 512, 4)
    scaled = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "area", "scale_by": 2.0}},
        "3": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "area", "width": 100, "height": 0, "crop": "disabled"}},
    }  # fmt: skip
    assert size(scaled, "1") == (100, 50, 1)
    assert size(scaled, "2") == (200, 100, 1)
    assert size(scaled, "3") == (100, 50, 1)
    assert size({}, "missing") == (64, 64, 1)
