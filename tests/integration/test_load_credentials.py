"""A saved block's name alone chooses the backend (the listener's --block, the cancel hook)."""

from __future__ import annotations

import pytest

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.backends.comfyui.block import ComfyUIServer
from prefect_comfy.backends.registry import load_credentials
from prefect_comfy.listener.run import _backend_from
from prefect_comfy.orchestration.flows import credentials_from_parameter
from tests.support.keys import API_KEY


async def test_either_kind_of_block_loads_by_name(prefect_api_url: str) -> None:
    await ComfyCloudCredentials(api_key=API_KEY, base_url="http://127.0.0.1:9").save(
        "names-cloud", overwrite=True
    )
    await ComfyUIServer(url="http://127.0.0.1:8188").save("names-comfyui", overwrite=True)

    assert isinstance(await load_credentials("names-cloud"), ComfyCloudCredentials)
    server = await load_credentials("names-comfyui")
    assert isinstance(server, ComfyUIServer) and server.url == "http://127.0.0.1:8188"
    assert isinstance(await load_credentials("comfyui-server/names-comfyui"), ComfyUIServer)
    assert isinstance(await credentials_from_parameter("names-comfyui"), ComfyUIServer)

    backend = await _backend_from("names-comfyui")
    assert isinstance(backend, ComfyUIBackend)
    await backend.aclose()
    backend = await _backend_from("names-cloud")
    assert isinstance(backend, CloudBackend) and backend.address == "http://127.0.0.1:9"
    await backend.aclose()


async def test_an_unknown_name_says_which_kinds_were_tried(prefect_api_url: str) -> None:
    with pytest.raises(ValueError, match="ComfyCloudCredentials or ComfyUIServer.*'no-such-block'"):
        await load_credentials("no-such-block")
