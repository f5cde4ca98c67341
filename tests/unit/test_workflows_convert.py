"""Save format -> API format (:mod:`prefect_comfy.workflows.convert`), checked against the editor.

The hand-made cases under ``tests/fixtures/workflows/cases`` were converted by the real ComfyUI
frontend (1.32.9) in headless Chromium (``scripts/workflow_oracle.py``): each ``NAME.json`` is a
save-format file and ``NAME.api.json`` the graph the editor's ``graphToPrompt()`` made of it. The
bad cases under ``tests/fixtures/workflows/bad`` each name the error and message they must give.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

import prefect_comfy
from prefect_comfy.exceptions import InvalidWorkflow, UnknownNodeType
from prefect_comfy.workflows import (
    ApiWorkflow,
    NodeCatalog,
    convert_workflow,
    is_save_format,
    to_api_format,
)
from tests.support.save_format import UNIT_NODES, large_workflow

FIXTURES = Path(__file__).parents[1] / "fixtures"
CASES = FIXTURES / "workflows" / "cases"
BAD = FIXTURES / "workflows" / "bad"
CASE_MANIFEST = json.loads((CASES / "manifest.json").read_text())
BAD_MANIFEST = json.loads((BAD / "manifest.json").read_text())


@pytest.fixture(scope="module")
def object_info() -> dict[str, Any]:
    return json.loads((FIXTURES / "object_info" / "comfyui-0.3.75.json").read_text())


def load(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", sorted(CASE_MANIFEST))
def test_hand_made_case_is_identical_to_the_editors_graph(name, object_info) -> None:
    expected = load(CASES / f"{name}.api.json")
    converted = convert_workflow(load(CASES / f"{name}.json"), object_info)
    assert converted.graph == expected
    assert list(converted.graph) == list(expected)  # the editor's key order too
    for node_id, node in expected.items():
        assert list(converted.graph[node_id]["inputs"]) == list(node["inputs"]), node_id
    # The editor's "control after generate" inputs are those the run may change.
    moving = {f"{n}.{i}" for (n, i), c in converted.controls.items() if c != "fixed"}
    assert moving == set(CASE_MANIFEST[name]["controlled"])


@pytest.mark.parametrize("name", sorted(BAD_MANIFEST))
def test_bad_input_is_one_line_that_says_what_to_do(name, object_info) -> None:
    expect = BAD_MANIFEST[name]
    with pytest.raises(InvalidWorkflow, match=expect["match"]) as info:
        convert_workflow(load(BAD / f"{name}.json"), object_info)
    assert type(info.value).__name__ == expect["error"]
    assert "\n" not in str(info.value)


def test_unknown_node_type_names_the_node_its_title_and_class(object_info) -> None:
    with pytest.raises(UnknownNodeType) as info:
        convert_workflow(load(BAD / "unknown_type.json"), object_info)
    assert (info.value.node_id, info.value.title, info.value.class_type) == (
        "1",
        "Upscale x2",
        "FancyUpscaler",
    )
    assert isinstance(info.value, InvalidWorkflow)


def test_a_muted_or_bypassed_node_of_an_unknown_type_is_no_error(object_info) -> None:
    workflow = load(BAD / "unknown_type.json")
    workflow["nodes"][0]["mode"] = 2
    assert to_api_format(workflow, object_info) == {
        "2": {"inputs": {"filename_prefix": "bad"}, "class_type": "SaveImage",
              "_meta": {"title": "Save Image"}},
    }  # fmt: skip


def test_seed_controls_are_returned_and_the_graph_keeps_the_saved_value(object_info) -> None:
    converted = convert_workflow(load(CASES / "seeds.json"), object_info)
    assert converted.controls[("5", "seed")] == "randomize"
    assert converted.controls[("12", "seed")] == "fixed"
    assert converted.controls[("19", "seed")] == "increment"
    # a PrimitiveNode set to randomize feeds KSampler 27, whose own control says fixed
    assert converted.controls[("27", "seed")] == "randomize"
    assert converted.graph["5"]["inputs"]["seed"] == 123456789  # nothing randomized here
    assert converted.graph["27"]["inputs"]["seed"] == 777


def test_conversion_is_pure_and_deterministic(object_info) -> None:
    workflow = load(CASES / "subgraph.json")
    before = copy.deepcopy(workflow)
    first = convert_workflow(workflow, object_info)
    assert workflow == before
    assert convert_workflow(workflow, NodeCatalog(object_info)) == first
    assert isinstance(first, ApiWorkflow)
    assert to_api_format(workflow, object_info) == first.graph
    assert prefect_comfy.to_api_format is to_api_format
    assert "to_api_format" in prefect_comfy.__all__
    assert "UnknownNodeType" in prefect_comfy.__all__


def test_is_save_format() -> None:
    assert is_save_format({"nodes": [], "links": []})
    assert not is_save_format({"1": {"class_type": "SaveImage", "inputs": {}}})
    assert not is_save_format([{"nodes": []}])
    with pytest.raises(InvalidWorkflow, match="save format"):
        to_api_format({"1": {"class_type": "SaveImage", "inputs": {}}}, {})


def _one_node(node_type: str, widgets: Any, inputs: list[dict[str, Any]] | None = None) -> dict:
    node = {"id": 1, "type": node_type, "mode": 0, "inputs": inputs or [], "outputs": []}
    if widgets is not None:
        node["widgets_values"] = widgets
    return {"nodes": [node], "links": []}


def test_missing_widget_values_take_the_editors_defaults(object_info) -> None:
    inputs = to_api_format(_one_node("KSampler", [5, "fixed", 30]), object_info)["1"]["inputs"]
    assert inputs == {
        "seed": 5,
        "steps": 30,
        "cfg": 8.0,
        "sampler_name": "euler",  # a combo without a default takes its first choice
        "scheduler": "simple",
        "denoise": 1.0,
    }


def test_dict_widgets_values_are_matched_by_name(object_info) -> None:
    workflow = _one_node("SaveImage", {"filename_prefix": "by-name"})
    assert to_api_format(workflow, object_info)["1"]["inputs"] == {"filename_prefix": "by-name"}


def test_a_list_widget_value_is_wrapped_so_it_is_not_read_as_a_link(object_info) -> None:
    inputs = to_api_format(_one_node("SaveImage", [["a", "b"]]), object_info)["1"]["inputs"]
    assert inputs == {"filename_prefix": {"__value__": ["a", "b"]}}


def test_a_ten_thousand_node_graph_converts(object_info) -> None:
    # Timing is measured by benchmarks/bench_convert.py; here: the result and no stack overflow.
    units = 10_000 // UNIT_NODES
    graph = to_api_format(large_workflow(units), object_info)
    assert len(graph) == units * 3  # EmptyImage, ImageBlur, SaveImage per unit
    first_empty, first_blur, first_save = (str(i) for i in (2, 6, 7))
    assert graph[first_empty]["inputs"]["width"] == 64  # the PrimitiveNode's value
    assert graph[first_blur]["inputs"]["image"] == [first_empty, 0]  # reroutes and bypass
    assert graph[first_save]["inputs"]["images"] == [first_blur, 0]


def test_a_long_reroute_chain_does_not_overflow_the_stack(object_info) -> None:
    length = 5_000
    nodes: list[dict[str, Any]] = [
        {"id": 1, "type": "EmptyImage", "mode": 0, "widgets_values": [8, 8, 1, 0],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}]},
    ]  # fmt: skip
    for i in range(length):
        nodes.append(
            {"id": i + 2, "type": "Reroute", "mode": 0,
             "inputs": [{"name": "", "type": "*", "link": i + 1}],
             "outputs": [{"name": "", "type": "IMAGE", "links": [i + 2]}]}
        )  # fmt: skip
    nodes.append(
        {"id": length + 2, "type": "SaveImage", "mode": 0, "widgets_values": ["x"],
         "inputs": [{"name": "images", "type": "IMAGE", "link": length + 1}]}
    )  # fmt: skip
    links = [[i + 1, i + 1, 0, i + 2, 0, "IMAGE"] for i in range(length + 1)]
    graph = to_api_format({"nodes": nodes, "links": links}, object_info)
    assert graph[str(length + 2)]["inputs"]["images"] == ["1", 0]


def test_a_muted_source_drops_the_consumers_input_but_keeps_the_consumer(object_info) -> None:
    workflow = load(CASES / "muted_branch.json")
    graph = to_api_format(workflow, object_info)
    expected = load(CASES / "muted_branch.api.json")
    assert graph == expected
    muted = {str(n["id"]) for n in workflow["nodes"] if n.get("mode") == 2}
    assert muted and not muted & set(graph)
    for node in graph.values():
        for value in node["inputs"].values():
            assert not (isinstance(value, list) and value[0] in muted)


def test_messages_quote_a_node_title_exactly() -> None:
    error = UnknownNodeType("4:7", "Foo", "My (odd) title")
    assert re.search(r"Node 4:7 'My \(odd\) title' is of type 'Foo'", str(error))


# Rules found by comparing the official templates with the editor's graphs (regression tests).


def test_a_primitive_reaches_a_widget_input_saved_before_the_widgets(object_info) -> None:
    # Saved inputs list the linked widget "width" at slot 1; the editor rebuilds the node's inputs
    # (model, max_shift, base_shift, width, height), so slot 1 is no longer "width".
    workflow = {
        "nodes": [
            {"id": 1, "type": "PrimitiveNode", "mode": 0, "widgets_values": [768, "fixed"],
             "outputs": [{"name": "INT", "type": "INT", "links": [1]}]},
            {"id": 2, "type": "ModelSamplingFlux", "mode": 0, "widgets_values": [1.15, 0.5, 1, 1],
             "inputs": [{"name": "model", "type": "MODEL", "link": None},
                        {"name": "width", "type": "INT", "widget": {"name": "width"}, "link": 1}]},
        ],
        "links": [[1, 1, 0, 2, 1, "INT"]],
    }  # fmt: skip
    converted = convert_workflow(workflow, object_info)
    assert converted.graph["2"]["inputs"] == {
        "max_shift": 1.15,
        "base_shift": 0.5,
        "width": 768,
        "height": 1,
    }
    assert converted.controls[("2", "width")] == "fixed"


def test_the_editors_3d_viewer_widget_is_sent_and_titles_follow_its_locale(object_info) -> None:
    workflow = {
        "nodes": [
            {"id": 1, "type": "SaveGLB", "mode": 0, "widgets_values": ["mesh/x", ""],
             "inputs": [{"name": "mesh", "type": "MESH", "link": None}]},
            {"id": 2, "type": "EmptyHunyuanLatentVideo", "mode": 0,
             "widgets_values": [848, 480, 25, 1]},
        ],
        "links": [],
    }  # fmt: skip
    graph = to_api_format(workflow, object_info)
    assert graph["1"]["inputs"] == {"filename_prefix": "mesh/x", "image": ""}
    assert graph["2"]["_meta"]["title"] == "EmptyHunyuanLatentVideo"  # not the server's name


def test_a_subgraph_instance_matches_saved_inputs_by_name(object_info) -> None:
    workflow = load(CASES / "subgraph.json")
    instance = next(n for n in workflow["nodes"] if n["type"] == workflow["definitions"][
        "subgraphs"][0]["id"])  # fmt: skip
    instance["inputs"] = list(reversed(instance.get("inputs") or []))
    assert to_api_format(workflow, object_info) == load(CASES / "subgraph.api.json")


# Edge cases probed on the real frontend (scripts/workflow_probe.py): identical, but for two
# deliberate differences.
PROBED = FIXTURES / "workflows" / "probed"
PROBED_MANIFEST = json.loads((PROBED / "manifest.json").read_text())
DELIBERATE = {
    # The core frontend ignores dict-form widgets_values (it only reads lists) and sends the
    # defaults; dict form is written by custom nodes whose own editor extension reads it by name,
    # which is what the converter does.
    "dict_widgets": {"1": {"width": 16, "height": 8}},
}


@pytest.mark.parametrize("name", sorted(set(PROBED_MANIFEST) - {"bypass_loader"}))
def test_probed_edge_case_matches_the_frontend(name, object_info) -> None:
    expected = load(PROBED / f"{name}.api.json")
    for node_id, inputs in DELIBERATE.get(name, {}).items():
        expected[node_id]["inputs"].update(inputs)
    converted = convert_workflow(load(PROBED / f"{name}.json"), object_info)
    assert converted.graph == expected
    assert list(converted.graph) == list(expected)
    moving = {f"{n}.{i}" for (n, i), c in converted.controls.items() if c != "fixed"}
    assert moving == set(PROBED_MANIFEST[name]["controlled"])


def test_a_bypassed_loader_nothing_can_replace_is_an_error_not_a_graph_the_server_refuses(
    object_info,
) -> None:
    # The frontend sends the consumers without their "clip"/"model" inputs (the server then
    # refuses the graph); the converter says which bypassed node is the cause.
    frontend = load(PROBED / "bypass_loader.api.json")
    assert "clip" not in frontend["2"]["inputs"]
    with pytest.raises(InvalidWorkflow, match=r"from bypassed node 1 \(Load Checkpoint\)"):
        convert_workflow(load(PROBED / "bypass_loader.json"), object_info)


def test_a_legacy_group_node_says_to_make_it_a_subgraph(object_info) -> None:
    workflow = _one_node("workflow>Upscale", [])
    workflow["extra"] = {"groupNodes": {"Upscale": {"nodes": [], "links": []}}}
    with pytest.raises(InvalidWorkflow, match="legacy group node.*convert the group node to a"):
        to_api_format(workflow, object_info)
