"""The node catalog (:mod:`prefect_comfy.workflows.catalog`): what ``/object_info`` says, read once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefect_comfy.workflows.catalog import InputSpec, NodeCatalog, WidgetSlot

OBJECT_INFO = Path(__file__).parents[1] / "fixtures" / "object_info" / "comfyui-0.3.75.json"


@pytest.fixture(scope="module")
def catalog() -> NodeCatalog:
    return NodeCatalog(json.loads(OBJECT_INFO.read_text()))


def slot_names(slots: tuple[WidgetSlot, ...]) -> list[str]:
    return [s.name for s in slots]


def test_a_class_lists_its_inputs_in_catalog_order_and_says_which_are_widgets(catalog) -> None:
    spec = catalog.node("KSampler")
    assert spec is not None
    assert [i.name for i in spec.inputs] == [
        "model", "seed", "steps", "cfg", "sampler_name", "scheduler",
        "positive", "negative", "latent_image", "denoise",
    ]  # fmt: skip
    assert [i.name for i in spec.widgets] == [
        "seed", "steps", "cfg", "sampler_name", "scheduler", "denoise",
    ]  # fmt: skip
    model, seed = spec.input("model"), spec.input("seed")
    assert (model.type, model.is_widget, model.required) == ("MODEL", False, True)
    assert (seed.type, seed.minimum, seed.maximum, seed.default) == ("INT", 0, 2**64 - 1, 0)
    assert seed.control_after_generate
    sampler = spec.input("sampler_name")
    assert sampler.type == "COMBO" and "euler" in sampler.choices
    assert spec.outputs == ("LATENT",) and not spec.output_node
    assert catalog.node("SaveImage").output_node


def test_widgets_values_slots_include_the_editors_own_widgets(catalog) -> None:
    # KSampler: a control_after_generate after seed, which the server never sees.
    assert slot_names(catalog.node("KSampler").widget_slots) == [
        "seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise",
    ]  # fmt: skip
    # RandomNoise's noise_seed gets one by the editor's name rule.
    assert slot_names(catalog.node("RandomNoise").widget_slots) == [
        "noise_seed",
        "control_after_generate",
    ]
    # LoadImage: an upload button after the image combo; it holds a slot but sends nothing.
    slots = catalog.node("LoadImage").widget_slots
    assert slot_names(slots) == ["image", "upload"]
    assert [s.sends for s in slots] == [True, False]


def test_input_order_wins_over_the_mappings_order() -> None:
    catalog = NodeCatalog(
        {
            "N": {
                "input": {
                    "required": {"b": ["INT", {}], "a": ["IMAGE"]},
                    "optional": {"c": ["STRING", {}]},
                },
                "input_order": {"required": ["a", "b"], "optional": ["c"]},
                "output": [],
            }
        }
    )
    spec = catalog.node("N")
    assert [(i.name, i.required) for i in spec.inputs] == [("a", True), ("b", True), ("c", False)]


def test_input_kinds_and_control_rules() -> None:
    catalog = NodeCatalog(
        {
            "N": {
                "input": {
                    "required": {
                        "seed": ["INT", {"control_after_generate": False}],
                        "noise_seed": ["INT", {}],
                        "count": ["INT", {"control_after_generate": True}],
                        "mode": ["COMBO", {"options": ["a", "b"], "control_after_generate": True}],
                        "forced": ["FLOAT", {"forceInput": True}],
                        "flag": ["BOOLEAN", {"default": True}],
                        "any": ["*"],
                    }
                },
                "output": ["IMAGE"],
            }
        }
    )
    spec = catalog.node("N")
    controls = {i.name: i.control_after_generate for i in spec.inputs}
    assert controls == {
        "seed": False,  # an explicit false wins over the name rule
        "noise_seed": True,
        "count": True,
        "mode": True,
        "forced": False,
        "flag": False,
        "any": False,
    }
    assert spec.input("mode").choices == ("a", "b")
    assert not spec.input("forced").is_widget  # forceInput: a socket, no widget
    assert not spec.input("any").is_widget
    # A controlled combo has a control and a filter list after it.
    assert slot_names(spec.widget_slots) == [
        "seed", "noise_seed", "control_after_generate", "count", "control_after_generate",
        "mode", "control_after_generate", "control_filter_list", "flag",
    ]  # fmt: skip
    assert [s.control_of for s in spec.widget_slots if s.control_of] == [
        "noise_seed",
        "count",
        "mode",
    ]


def test_unknown_and_malformed_classes_are_none_and_classes_are_read_once() -> None:
    info = {"Good": {"input": {"required": {}}, "output": []}, "Bad": "not a definition"}
    catalog = NodeCatalog(info)
    assert catalog.node("Missing") is None and "Missing" not in catalog
    assert catalog.node("Bad") is None
    assert catalog.node("Good") is catalog.node("Good")
    assert "Good" in catalog and len(catalog) == 2 and list(catalog) == ["Good", "Bad"]


def test_input_spec_properties_default_to_none() -> None:
    spec = InputSpec("x", "IMAGE")
    assert (spec.default, spec.minimum, spec.maximum, spec.step, spec.choices) == (None,) * 5
