"""prefect_comfy.workflows.schema: exposed inputs by name, their JSON schema, applying values."""

from __future__ import annotations

import json

import jsonschema
import pytest

from prefect_comfy.exceptions import InvalidInputs
from prefect_comfy.workflows.catalog import NodeCatalog
from prefect_comfy.workflows.schema import inputs_schema, resolve_input
from prefect_comfy_emulator.catalog import object_info

CATALOG = NodeCatalog(object_info())


def graph() -> dict:
    return {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
        },
        "6": {
            "class_type": "CLIPTextEncode",
            "_meta": {"title": "Positive Prompt"},
            "inputs": {"text": "a lighthouse", "clip": ["4", 1]},
        },
        "7": {
            "class_type": "CLIPTextEncode",
            "_meta": {"title": "v1.5 negative"},  # a title with a dot
            "inputs": {"text": "blurry", "clip": ["4", 1]},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {"seed": 42, "steps": 20, "cfg": 7.0, "sampler_name": "euler"},
        },
    }


def test_a_node_is_found_by_id_title_or_unique_class_type() -> None:
    assert resolve_input(graph(), "3.seed").node_id == "3"
    assert resolve_input(graph(), "Positive Prompt.text").node_id == "6"
    assert resolve_input(graph(), "v1.5 negative.text").node_id == "7"
    found = resolve_input(graph(), "KSampler.seed")
    assert (found.node_id, found.input, found.value, found.title) == ("3", "seed", 42, None)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("seed", "an input is named NODE.INPUT"),
        ("Nope.seed", "no node has the id, title or class type 'Nope'; the nodes are: 4 ("),
        ("CLIPTextEncode.text", "2 nodes have the class type 'CLIPTextEncode' (ids 6, 7)"),
        ("KSampler.nope", "has no input 'nope'; its inputs: cfg, sampler_name, seed, steps"),
        ("Positive Prompt.clip", "fed by a link"),
    ],
)
def test_a_name_that_does_not_resolve_says_what_there_is(name: str, says: str) -> None:
    with pytest.raises(InvalidInputs, match=None) as caught:
        resolve_input(graph(), name)
    assert says in str(caught.value)


def test_the_schema_has_one_typed_field_per_name_in_order_with_the_workflows_values() -> None:
    names = ["Positive Prompt.text", "KSampler.seed", "KSampler.sampler_name", "4.ckpt_name"]
    schema = inputs_schema(graph(), names, CATALOG)
    fields = schema["properties"]
    assert list(fields) == names
    assert [f["position"] for f in fields.values()] == [0, 1, 2, 3]
    assert fields["KSampler.seed"] == {
        "title": "KSampler.seed",
        "description": "Input 'seed' of node 3 (KSampler).",
        "position": 1,
        "type": "integer",
        "minimum": 0,
        "maximum": 0xFFFFFFFFFFFFFFFF,
        "default": 42,
    }
    assert fields["Positive Prompt.text"]["description"] == (
        "Input 'text' of node 6 'Positive Prompt' (CLIPTextEncode)."
    )
    assert fields["KSampler.sampler_name"]["type"] == "string"
    assert "dpmpp_2m" in fields["KSampler.sampler_name"]["enum"]
    assert "sd_xl_base_1.0.safetensors" in fields["4.ckpt_name"]["enum"]
    json.dumps(schema)  # travels as JSON
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"KSampler.seed": 7})  # one left out keeps the workflow's value
    for bad in ({"KSampler.seed": -1}, {"KSampler.sampler_name": "x"}, {"Other.text": "x"}):
        assert not validator.is_valid(bad), bad


def test_without_a_catalog_a_field_is_typed_by_its_value() -> None:
    fields = inputs_schema(graph(), ["KSampler.cfg", "3.steps", "6.text"])["properties"]
    assert [fields[n]["type"] for n in fields] == ["number", "integer", "string"]
    assert "enum" not in fields["6.text"] and "minimum" not in fields["3.steps"]


@pytest.mark.parametrize(
    ("names", "says"),
    [
        ([], "Expose at least one input"),
        (["3.seed", "3.seed"], "more than once: 3.seed"),
        (["3.seed", "KSampler.seed"], "are the same input (3.seed)"),
    ],
)
def test_names_given_twice_or_none_are_refused(names: list[str], says: str) -> None:
    with pytest.raises(InvalidInputs) as caught:
        inputs_schema(graph(), names)
    assert says in str(caught.value)


def test_a_workflow_value_the_catalog_does_not_allow_is_refused() -> None:
    bad = graph()
    bad["4"]["inputs"]["ckpt_name"] = "mine.safetensors"
    with pytest.raises(InvalidInputs, match="'mine.safetensors' is not one the server offers"):
        inputs_schema(bad, ["4.ckpt_name"], CATALOG)
    bad["3"]["inputs"]["steps"] = 0
    with pytest.raises(InvalidInputs, match="value 0 is outside 1..10000"):
        inputs_schema(bad, ["3.steps"], CATALOG)
    with pytest.raises(InvalidInputs, match="no node type 'Mystery'"):
        inputs_schema({"1": {"class_type": "Mystery", "inputs": {"x": 1}}}, ["1.x"], CATALOG)


def test_a_seed_the_save_format_randomizes_has_no_default_so_a_run_draws_it() -> None:
    from prefect_comfy.workflows.convert import convert_workflow
    from tests.support.save_workflows import txt2img

    converted = convert_workflow(txt2img("randomize"), CATALOG)
    randomized = {k for k, control in converted.controls.items() if control == "randomize"}
    assert randomized, "the hand-made workflow marks its seed randomize"
    names = ["Positive Prompt.text", "KSampler.seed"]
    fields = inputs_schema(converted.graph, names, CATALOG, randomized=randomized)["properties"]
    assert "default" not in fields["KSampler.seed"]
    assert "fresh random value" in fields["KSampler.seed"]["description"]
    assert fields["KSampler.seed"]["type"] == "integer"
    assert fields["Positive Prompt.text"]["default"]  # the prompt keeps its value
    fixed = convert_workflow(txt2img("fixed"), CATALOG)
    assert "default" in inputs_schema(fixed.graph, names, CATALOG)["properties"]["KSampler.seed"]
