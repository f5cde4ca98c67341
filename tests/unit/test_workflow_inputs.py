"""Inputs by name and seeds (:mod:`prefect_comfy.workflows.inputs`), and the one path that
prepares a workflow for a server (:mod:`prefect_comfy.orchestration.prepare`) on an in-memory backend."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from prefect_comfy.backends.base import Capabilities
from prefect_comfy.backends.catalog import forget_catalogs
from prefect_comfy.exceptions import (
    CatalogUnavailable,
    InvalidInputs,
    UnknownNodeType,
)
from prefect_comfy.orchestration.job_steps import submit_job
from prefect_comfy.orchestration.prepare import prepare_workflow
from prefect_comfy.workflows.catalog import NodeCatalog
from prefect_comfy.workflows.inputs import (
    MAX_RANDOM_SEED,
    apply_inputs,
    draw_seeds,
    parse_assignment,
    seeds_of,
)
from prefect_comfy_emulator.catalog import object_info
from tests.support.memory import MemoryBackend
from tests.support.save_workflows import txt2img

CATALOG = NodeCatalog(object_info())

GRAPH = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]},
          "_meta": {"title": "Positive Prompt"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]},
          "_meta": {"title": "Negative Prompt"}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 7.0,
          "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
          "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
}  # fmt: skip


# -- names -----------------------------------------------------------------------------------------
def test_a_node_is_named_by_id_title_or_unique_class_type() -> None:
    out = apply_inputs(
        GRAPH,
        {"Positive Prompt.text": "a fox", "KSampler.seed": 7, "3.steps": 30, "5.width": 768},
        CATALOG,
    )
    assert out["6"]["inputs"]["text"] == "a fox"
    assert out["3"]["inputs"]["seed"] == 7 and out["3"]["inputs"]["steps"] == 30
    assert out["5"]["inputs"]["width"] == 768
    assert GRAPH["6"]["inputs"]["text"] == "a cat", "the graph given is left as it was"


def test_a_title_with_dots_and_the_input_after_the_last_dot() -> None:
    graph = copy.deepcopy(GRAPH)
    graph["6"]["_meta"]["title"] = "Prompt v1.5"
    assert apply_inputs(graph, {"Prompt v1.5.text": "x"})["6"]["inputs"]["text"] == "x"


def test_an_unknown_node_lists_the_candidates_and_a_close_match() -> None:
    with pytest.raises(InvalidInputs) as info:
        apply_inputs(GRAPH, {"Positive Promt.text": "x"}, CATALOG)
    message = str(info.value)
    assert "did you mean 'Positive Prompt'" in message
    assert "6 (CLIPTextEncode, 'Positive Prompt')" in message and "3 (KSampler)" in message
    assert "nothing was submitted" in message


def test_an_ambiguous_class_type_lists_the_ids() -> None:
    with pytest.raises(
        InvalidInputs, match=r"2 nodes have the class type 'CLIPTextEncode' \(ids 6, 7\)"
    ):
        apply_inputs(GRAPH, {"CLIPTextEncode.text": "x"}, CATALOG)


def test_an_unknown_input_lists_the_inputs_of_the_node() -> None:
    with pytest.raises(
        InvalidInputs, match="KSampler has no input 'sed'; it has model, seed, steps"
    ):
        apply_inputs(GRAPH, {"KSampler.sed": 3}, CATALOG)


def test_a_linked_input_names_its_source() -> None:
    with pytest.raises(InvalidInputs, match="fed by node 4"):
        apply_inputs(GRAPH, {"Positive Prompt.clip": "x"}, CATALOG)


# -- values ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("KSampler.seed", "seven", "'seven' is not a whole number"),
        ("KSampler.seed", True, "True is not a whole number"),
        ("KSampler.steps", 2.5, "2.5 is not a whole number"),
        ("KSampler.steps", 0, "0 is below the minimum 1"),
        ("KSampler.cfg", 1000, "1000 is above the maximum 100"),
        ("KSampler.cfg", "7", "'7' is not a number"),
        ("KSampler.sampler_name", "eulr", "'eulr' is not one of the 37 choices: 'euler'"),
        ("Positive Prompt.text", 5, "5 is not a string"),
    ],
)
def test_values_are_checked_against_the_catalog(name: str, value: Any, needle: str) -> None:
    with pytest.raises(InvalidInputs) as info:
        apply_inputs(GRAPH, {name: value}, CATALOG)
    assert needle in str(info.value)


def test_a_checkpoint_the_server_lacks_lists_the_ones_it_has() -> None:
    with pytest.raises(InvalidInputs) as info:
        apply_inputs(GRAPH, {"4.ckpt_name": "dreamshaper_8.safetensors"}, CATALOG)
    assert "'dreamshaper_8.safetensors' is not one of the 4 choices" in str(info.value)
    assert "'sd_xl_base_1.0.safetensors'" in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidInputs) as info:
        apply_inputs(GRAPH, {"KSampler.steps": 0, "Nope.x": 1, "nodot": 2}, CATALOG)
    assert len(info.value.node_errors) == 3


def test_without_a_catalog_the_value_is_checked_against_the_one_it_replaces() -> None:
    assert apply_inputs(GRAPH, {"3.steps": 5})["3"]["inputs"]["steps"] == 5
    with pytest.raises(InvalidInputs, match="not a whole number"):
        apply_inputs(GRAPH, {"3.steps": "five"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Positive Prompt.text=a fox", ("Positive Prompt.text", "a fox")),
        ("KSampler.seed=7", ("KSampler.seed", 7)),
        ("KSampler.cfg=6.5", ("KSampler.cfg", 6.5)),
        ('3.text="42"', ("3.text", "42")),
        ("3.flag=true", ("3.flag", True)),
        ("3.text=a=b", ("3.text", "a=b")),
    ],
)
def test_parse_assignment(text: str, expected: tuple[str, Any]) -> None:
    assert parse_assignment(text) == expected


@pytest.mark.parametrize("text", ["seed=7", "KSampler.seed", ".seed=1"])
def test_parse_assignment_refuses(text: str) -> None:
    with pytest.raises(InvalidInputs, match="NODE.INPUT=VALUE"):
        parse_assignment(text)


# -- seeds -----------------------------------------------------------------------------------------
def test_randomize_draws_within_the_catalog_range_and_keeps_explicit_ones() -> None:
    graph = copy.deepcopy(GRAPH)
    controls = {("3", "seed"): "randomize"}
    drawn = draw_seeds(graph, controls, catalog=CATALOG, rng=random.Random(1))
    assert 0 <= drawn[("3", "seed")] <= MAX_RANDOM_SEED and graph["3"]["inputs"]["seed"] != 1
    again = copy.deepcopy(GRAPH)
    assert draw_seeds(again, controls, catalog=CATALOG, rng=random.Random(1)) == drawn
    kept = copy.deepcopy(GRAPH)
    assert draw_seeds(kept, controls, keep={("3", "seed")}) == {}
    assert draw_seeds(copy.deepcopy(GRAPH), {("3", "seed"): "fixed"}) == {}


def test_seeds_of_names_seed_inputs_and_controlled_widgets() -> None:
    assert seeds_of(GRAPH) == {"3.seed": 1}
    assert seeds_of(GRAPH, {("5", "width"): "fixed"}) == {"3.seed": 1, "5.width": 512}


# -- prepare and submit, on the memory server -----------------------------------------------------
def catalog_server(info: dict[str, Any]) -> MemoryBackend:
    """A memory server that serves ``info`` as its node catalog (and runs those nodes only)."""
    backend = MemoryBackend(capabilities=Capabilities(node_catalog=True))
    backend.server.catalog = info
    return backend


def submitted(backend: MemoryBackend) -> list[dict[str, Any]]:
    return [s["workflow"] for s in backend.server.submits]


@pytest.fixture(autouse=True)
def _fresh_catalogs():
    forget_catalogs()
    yield
    forget_catalogs()


async def test_save_format_is_converted_seeded_and_given_its_inputs() -> None:
    backend = catalog_server(object_info())
    prepared = await prepare_workflow(
        backend, txt2img(), {"Positive Prompt.text": "a fox", "KSampler.steps": 8}, seed_key="k"
    )
    assert prepared.converted and prepared.graph["2"]["inputs"]["text"] == "a fox"
    seed = prepared.graph["5"]["inputs"]["seed"]
    assert prepared.seeds == {"5.seed": seed} and seed != 42, "randomize draws a fresh seed"
    again = await prepare_workflow(backend, txt2img(), seed_key="k")
    assert again.seeds == prepared.seeds, "the same key (a Prefect retry) draws the same seed"
    other = await prepare_workflow(backend, txt2img(), seed_key="other")
    assert other.seeds != prepared.seeds
    fixed = await prepare_workflow(backend, txt2img(), {"KSampler.seed": 7})
    assert fixed.seeds == {"5.seed": 7}, "an explicit input wins over randomize"
    assert (await prepare_workflow(backend, txt2img("fixed"))).seeds == {"5.seed": 42}
    assert backend.server.catalog_reads == 1, "the catalog is read once per server and process"


async def test_an_api_graph_without_inputs_needs_no_catalog() -> None:
    backend = catalog_server(object_info())
    prepared = await prepare_workflow(backend, GRAPH)
    assert prepared.graph == GRAPH and backend.server.catalog_reads == 0


async def test_an_unreachable_catalog_is_a_clear_error_and_nothing_is_submitted() -> None:
    from prefect_comfy.exceptions import ComfyTransportError

    backend = catalog_server(object_info())
    backend.server.fail("object_info", ComfyTransportError("connection refused"))
    with pytest.raises(CatalogUnavailable) as info:
        await submit_job(backend, txt2img(), emit_events=False)
    message = str(info.value)
    assert "save format" in message and "connection refused" in message
    assert backend.address in message and "Save (API format)" in message
    assert submitted(backend) == []


async def test_a_node_the_cached_catalog_lacks_reads_it_once_more() -> None:
    info = object_info()
    fancy = info.pop("ImageInvert")
    backend = catalog_server(info)
    await backend.node_catalog()  # cached without ImageInvert
    workflow = txt2img()
    workflow["nodes"][5]["type"] = "ImageInvert"  # VAEDecode's place: IMAGE in, IMAGE out
    workflow["nodes"][5]["inputs"] = [{"name": "image", "type": "IMAGE", "link": None}]
    backend.server.catalog["ImageInvert"] = fancy  # the server gained the node since
    prepared = await prepare_workflow(backend, workflow)
    assert prepared.graph["6"]["class_type"] == "ImageInvert"
    assert backend.server.catalog_reads == 2, "exactly one re-read"


async def test_a_node_the_server_really_lacks_is_named_with_the_server() -> None:
    info = object_info()
    del info["KSampler"]
    backend = catalog_server(info)
    with pytest.raises(UnknownNodeType) as caught:
        await submit_job(backend, txt2img(), emit_events=False)
    exc = caught.value
    assert (exc.node_id, exc.class_type) == ("5", "KSampler")
    assert backend.address in str(exc)
    assert backend.server.catalog_reads == 1 and submitted(backend) == []


async def test_a_stale_catalog_the_server_refuses_is_read_again_once_and_the_node_named() -> None:
    backend = catalog_server(object_info())
    backend.server.node_types = set(object_info()) - {"KSampler"}
    await backend.node_catalog()  # cached while the server still had KSampler
    del backend.server.catalog["KSampler"]  # the custom node was removed
    with pytest.raises(UnknownNodeType, match="'KSampler'") as caught:
        await submit_job(backend, txt2img(), emit_events=False)
    assert caught.value.node_id == "5"
    assert backend.server.catalog_reads == 2, "one re-read, then the right error"
    assert submitted(backend) == []


async def test_a_model_the_cached_catalog_lacks_reads_it_once_more() -> None:
    backend = catalog_server(object_info())
    await backend.node_catalog()
    loader = backend.server.catalog["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
    loader[0].append("new.safetensors")  # uploaded since
    job = await submit_job(
        backend, txt2img(), inputs={"1.ckpt_name": "new.safetensors"}, emit_events=False
    )
    assert submitted(backend)[0]["1"]["inputs"]["ckpt_name"] == "new.safetensors"
    assert backend.server.catalog_reads == 2 and job.seeds == {
        "5.seed": submitted(backend)[0]["5"]["inputs"]["seed"]
    }


async def test_bad_inputs_submit_nothing() -> None:
    backend = catalog_server(object_info())
    with pytest.raises(InvalidInputs):
        await submit_job(backend, txt2img(), inputs={"KSampler.steps": -1}, emit_events=False)
    assert submitted(backend) == []


async def test_a_kind_without_catalog_says_what_to_set() -> None:
    backend = MemoryBackend(capabilities=Capabilities())  # no catalog route, no catalog_source
    with pytest.raises(CatalogUnavailable, match="set catalog_source on the credentials block"):
        await submit_job(backend, txt2img(), emit_events=False)
    # an API graph with inputs goes on, checked against its own values
    job = await submit_job(backend, GRAPH, inputs={"3.steps": 9}, emit_events=False)
    assert job.id == "job_1" and submitted(backend)[0]["3"]["inputs"]["steps"] == 9
