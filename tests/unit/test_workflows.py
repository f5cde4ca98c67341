"""The one check of a workflow graph (:func:`prefect_comfy.workflows.load_workflow`)."""

from __future__ import annotations

import json

import pytest

from prefect_comfy.exceptions import InvalidWorkflow
from prefect_comfy.workflows import load_workflow

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}}}

UI_EXPORT = {  # what ComfyUI's plain "Save" writes, here without its "links"
    "last_node_id": 2,
    "last_link_id": 1,
    "nodes": [
        {"id": 1, "type": "EmptyImage", "widgets_values": [8, 8, 1, 0]},
        {"id": 2, "type": "SaveImage", "widgets_values": ["x"]},
    ],
    "groups": [],
    "config": {},
    "extra": {},
    "version": 0.4,
}


def test_load_workflow_from_dict_text_and_file(tmp_path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(GRAPH))
    assert load_workflow(GRAPH) == GRAPH
    assert load_workflow(json.dumps(GRAPH)) == GRAPH
    assert load_workflow(str(path)) == GRAPH
    assert load_workflow(path) == GRAPH


@pytest.mark.parametrize(
    ("workflow", "needle"),
    [
        ({}, "non-empty dict"),
        ([1, 2], "non-empty dict"),
        ({"nodes": [], "links": []}, "save-format workflow has no nodes"),
        ({"nodes": [1], "links": []}, "not nodes"),
        ({"1": {"inputs": {}}}, "class_type"),
        ({"1": {"class_type": "X", "inputs": [1]}}, "inputs must be a dict"),
        ("{not json", "not JSON"),
        ("/no/such/workflow.json", "No workflow file"),
    ],
)
def test_load_workflow_refuses(workflow, needle) -> None:
    with pytest.raises(InvalidWorkflow, match=needle):
        load_workflow(workflow)


@pytest.mark.parametrize("text", ["[1, 2, 3]", "  [1, 2, 3]", "5", '"a string"', "null"])
def test_json_text_that_is_no_graph_says_so_not_no_file(text) -> None:
    with pytest.raises(InvalidWorkflow, match="non-empty dict") as info:
        load_workflow(text)
    assert "No workflow file" not in str(info.value)


@pytest.mark.parametrize("as_text", [False, True])
def test_a_save_format_export_is_read_as_it_is_for_the_converter(as_text) -> None:
    assert load_workflow(json.dumps(UI_EXPORT) if as_text else UI_EXPORT) == UI_EXPORT


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (float("nan"), "cfg"),
        (float("inf"), "cfg"),
        ([1.0, float("-inf")], "cfg"),
        ({"deep": [float("nan")]}, "cfg"),
    ],
)
def test_nan_in_a_graph_is_an_invalid_workflow_naming_the_input(value, field) -> None:
    graph = {"1": {"class_type": "KSampler", "inputs": {"steps": 20, field: value}}}
    with pytest.raises(InvalidWorkflow) as info:
        load_workflow(graph)
    (error,) = info.value.node_errors
    assert (error["node_id"], error["class_type"], error["field"]) == ("1", "KSampler", field)
    assert "JSON" in str(info.value) and "node 1 (KSampler), input 'cfg'" in str(info.value)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_json_text_is_an_invalid_workflow(constant) -> None:
    text = '{"1": {"class_type": "KSampler", "inputs": {"cfg": VALUE}}}'.replace("VALUE", constant)
    with pytest.raises(InvalidWorkflow, match=f"not JSON: {constant} is not valid JSON"):
        load_workflow(text)


def test_a_value_json_cannot_carry() -> None:
    graph = {"1": {"class_type": "X", "inputs": {"when": object()}}}
    with pytest.raises(InvalidWorkflow, match="JSON cannot carry"):
        load_workflow(graph)


def test_a_file_that_is_not_utf8_is_one_line_saying_what_to_do(tmp_path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(
        json.dumps({"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "caf\u00e9"}}})
        .replace("\\u00e9", "\u00e9")
        .encode("latin-1")
    )
    with pytest.raises(
        InvalidWorkflow, match=r"is not UTF-8 text \(byte 0xe9 at offset \d+\); save"
    ) as info:
        load_workflow(path)
    assert "\n" not in str(info.value)


def test_a_utf8_file_with_a_byte_order_mark_loads(tmp_path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GRAPH).encode())
    assert load_workflow(path) == GRAPH
