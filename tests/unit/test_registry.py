"""The registry: which block goes with which backend, the open credentials type, credentials again."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.blocks.core import Block
from pydantic import BaseModel, ValidationError

from prefect_comfy.backends import registry
from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
from prefect_comfy.backends.comfyui.block import ComfyUIServer
from prefect_comfy.backends.registry import (
    ComfyCredentials,
    backend_of,
    block_types,
    credentials_from_parameter,
    open_backend,
    register,
)
from prefect_comfy.exceptions import ComfyConfigError


class Holder(BaseModel):
    credentials: ComfyCredentials


class LaterKind(Block):
    """A kind registered after ComfyCredentials was built."""

    _block_type_slug = "registry-test-later-kind"
    endpoint: str = "memory"

    def get_backend(self) -> Any:
        raise NotImplementedError


@pytest.fixture
def later_kind():
    register(LaterKind)
    yield LaterKind
    registry._BLOCK_TYPES.remove(LaterKind)


def test_the_shipped_kinds_in_order() -> None:
    assert block_types()[:2] == (ComfyCloudCredentials, ComfyUIServer)


def test_register_refuses_what_cannot_make_a_backend() -> None:
    class NoBackend(Block):
        _block_type_slug = "registry-test-no-backend"

    with pytest.raises(TypeError, match="get_backend"):
        register(NoBackend)
    with pytest.raises(TypeError, match="Block class"):
        register(dict)  # type: ignore[arg-type]


def test_credentials_accept_each_kind_and_refuse_the_rest(later_kind) -> None:
    cloud = ComfyCloudCredentials(api_key="comfyui-registry-key")
    assert Holder(credentials=cloud).credentials is cloud
    assert isinstance(Holder(credentials={"url": "http://127.0.0.1:1"}).credentials, ComfyUIServer)
    later = LaterKind(endpoint="x")
    assert Holder(credentials=later).credentials is later  # registered after Holder was built
    assert isinstance(
        Holder(credentials={"block_type_slug": later_kind.get_block_type_slug()}).credentials,
        LaterKind,
    )
    with pytest.raises(ValidationError):
        Holder(credentials=42)


async def test_credentials_from_the_forms_a_flow_run_stores(monkeypatch, later_kind) -> None:
    monkeypatch.delenv("COMFY_API_KEY", raising=False)
    server = await credentials_from_parameter({"url": "http://127.0.0.1:1", "api_key": None})
    assert isinstance(server, ComfyUIServer) and server.url == "http://127.0.0.1:1"
    cloud = await credentials_from_parameter(
        {"api_key": "**********", "base_url": "http://127.0.0.1:2", "ws_auth": None}
    )
    assert isinstance(cloud, ComfyCloudCredentials) and cloud.base_url == "http://127.0.0.1:2"
    assert isinstance(await credentials_from_parameter({"endpoint": "y"}), LaterKind)
    assert isinstance(await credentials_from_parameter(None), ComfyCloudCredentials)
    same = ComfyUIServer()
    assert await credentials_from_parameter(same) is same


async def test_open_backend_owns_what_it_makes() -> None:
    block = ComfyCloudCredentials(api_key="comfyui-registry-key", base_url="http://127.0.0.1:3")
    backend, owned = await open_backend(block)
    assert isinstance(backend, CloudBackend) and owned
    assert await open_backend(backend) == (backend, False)
    await backend.aclose()
    async with backend_of(block) as made:
        assert isinstance(made, ComfyBackend)
    with pytest.raises(ComfyConfigError, match="ComfyCloudCredentials or ComfyUIServer"):
        await open_backend(object())


async def test_a_slug_that_is_no_kind_says_which_are() -> None:
    with pytest.raises(ValueError, match="'comfy-cloud-credentials', 'comfyui-server'"):
        await registry.load_credentials("secret/some-name")
