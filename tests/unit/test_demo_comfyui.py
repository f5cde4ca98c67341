"""The demo's choice of ComfyUI and checkpoint (`prefect_comfy.cli.demo_comfyui`), on a fake catalog.

The real thing (a ComfyUI with the test checkpoint) is tests/integration/test_demo_comfyui.py; a
ComfyUI without any checkpoint cannot share that session server, so its error is checked here.
"""

from __future__ import annotations

import pytest

from prefect_comfy import ComfyCloudCredentials, ComfyUIServer
from prefect_comfy.backends import catalog as catalog_module
from prefect_comfy.cli import demo_comfyui
from prefect_comfy.cli.connect import use_server
from prefect_comfy.cli.errors import MAX_MESSAGE, UsageProblem
from prefect_comfy.workflows.catalog import NodeCatalog


def object_info(*checkpoints: str) -> dict:
    return {
        "CheckpointLoaderSimple": {
            "input": {"required": {"ckpt_name": [list(checkpoints), {}]}},
            "input_order": {"required": ["ckpt_name"]},
            "output": ["MODEL", "CLIP", "VAE"],
        }
    }


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    """``--url`` names a ComfyUI whose catalog lists what ``serve`` is given."""
    use_server("http://127.0.0.1:8188", None, None)
    answer = {"block": ComfyUIServer(url="http://127.0.0.1:8188"), "info": object_info()}

    async def credentials_for(block):
        return answer["block"]

    async def node_catalog(backend, refresh=False):
        return NodeCatalog(answer["info"]), True

    monkeypatch.setattr(demo_comfyui, "credentials_for", credentials_for)
    monkeypatch.setattr(catalog_module, "node_catalog", node_catalog)
    yield answer
    use_server(None, None, None)


async def test_the_first_checkpoint_the_server_lists_is_the_default(server) -> None:
    server["info"] = object_info("b.safetensors", "a.safetensors")
    block, checkpoint = await demo_comfyui.comfyui_target(None)
    assert (block.url, checkpoint) == ("http://127.0.0.1:8188", "b.safetensors")
    assert (await demo_comfyui.comfyui_target("a.safetensors"))[1] == "a.safetensors"


async def test_a_comfyui_without_a_checkpoint_is_one_line_that_says_how_to_get_one(server) -> None:
    with pytest.raises(UsageProblem) as caught:
        await demo_comfyui.comfyui_target(None)
    text = str(caught.value)
    assert "\n" not in text and "has no checkpoint" in text
    assert len(text) + len("https://a-longer-host.example:8188") < MAX_MESSAGE  # printed whole
    assert "models/checkpoints" in text and "scripts/build-test-checkpoint.py" in text


async def test_a_checkpoint_it_lacks_names_those_it_has(server) -> None:
    server["info"] = object_info("a.safetensors")
    with pytest.raises(UsageProblem, match=r"--checkpoint x\.ckpt: .* it has a\.safetensors"):
        await demo_comfyui.comfyui_target("x.ckpt")


async def test_a_server_of_another_kind_is_refused(server) -> None:
    server["block"] = ComfyCloudCredentials(api_key="k", base_url="http://127.0.0.1:8188")
    with pytest.raises(UsageProblem, match="is not one .it is a cloud server"):
        await demo_comfyui.comfyui_target(None)


def test_the_packaged_graph_loads_the_checkpoint_and_samples_with_the_seed() -> None:
    graph = demo_comfyui.comfyui_txt2img("m.safetensors", seed=5)
    classes = sorted(n["class_type"] for n in graph.values())
    assert classes == sorted(
        ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage"]
        + ["KSampler", "VAEDecode", "SaveImage"]
    )
    assert graph["4"]["inputs"]["ckpt_name"] == "m.safetensors"
    assert graph["3"]["inputs"]["seed"] == 5 and graph["3"]["inputs"]["steps"] == 8
    assert graph["5"]["inputs"]["width"] == graph["5"]["inputs"]["height"] == 64
