"""The credentials block: Prefect's block standards, fallback to COMFY_*, and a key that never shows."""

from __future__ import annotations

from urllib.error import URLError

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.backends.cloud.block import ComfyCloudCredentials, is_masked
from prefect_comfy.backends.cloud.rest import ComfyClient
from prefect_comfy.exceptions import ComfyConfigError

KEY = "comfyui-unit-credentials-key"


class TestStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[ComfyCloudCredentials]:
        return ComfyCloudCredentials

    def test_has_a_valid_image(self, block) -> None:
        try:
            super().test_has_a_valid_image(block)
        except URLError as exc:  # the suite downloads the logo: no network, no check
            pytest.skip(f"logo not reachable: {exc}")


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("COMFY_API_KEY", "COMFY_BASE_URL", "COMFY_WS_AUTH", "COMFY_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_block_type_name_and_slug() -> None:
    assert ComfyCloudCredentials.get_block_type_name() == "Comfy Cloud Credentials"
    assert ComfyCloudCredentials.get_block_type_slug() == "comfy-cloud-credentials"


def test_fields_override_the_environment(clean_env) -> None:
    clean_env.setenv("COMFY_API_KEY", "comfyui-from-env")
    clean_env.setenv("COMFY_BASE_URL", "http://env.example:1")
    creds = ComfyCloudCredentials(
        api_key=KEY, base_url="http://block.example:2/", ws_auth="query", request_timeout=3
    )
    settings = creds.get_settings()
    assert settings.api_key.get_secret_value() == KEY
    assert settings.base_url == "http://block.example:2"
    assert (settings.ws_auth, settings.request_timeout) == ("query", 3)


def test_unset_fields_fall_back_to_the_environment(clean_env) -> None:
    clean_env.setenv("COMFY_API_KEY", "comfyui-from-env")
    clean_env.setenv("COMFY_BASE_URL", "http://env.example:1")
    clean_env.setenv("COMFY_WS_AUTH", "query")
    settings = ComfyCloudCredentials().get_settings()
    assert settings.api_key.get_secret_value() == "comfyui-from-env"
    assert settings.base_url == "http://env.example:1"
    assert settings.ws_auth == "query"
    assert settings.request_timeout == 30.0


def test_a_masked_key_counts_as_unset(clean_env) -> None:
    clean_env.setenv("COMFY_API_KEY", "comfyui-from-env")
    for masked in ("**********", "********"):
        assert is_masked(masked)
        creds = ComfyCloudCredentials(api_key=masked)
        assert creds.get_settings().api_key.get_secret_value() == "comfyui-from-env"
    assert not is_masked("") and not is_masked("comfyui-*")


async def test_get_client_and_get_backend(clean_env) -> None:
    creds = ComfyCloudCredentials(api_key=KEY, base_url="http://127.0.0.1:9", ws_auth="query")
    client = creds.get_client()
    backend = creds.get_backend()
    try:
        assert isinstance(client, ComfyClient) and client.base_url == "http://127.0.0.1:9"
        assert client.api_key.get_secret_value() == KEY
        assert isinstance(backend, CloudBackend)
        assert backend.address == "http://127.0.0.1:9" and backend.ws_auth == "query"
        assert creds.get_client() is not client  # a new client each time
    finally:
        await client.aclose()
        await backend.aclose()


def test_no_key_anywhere_is_a_config_error(clean_env) -> None:
    with pytest.raises(ComfyConfigError):
        ComfyCloudCredentials().get_client()


async def test_the_key_never_shows(clean_env) -> None:
    creds = ComfyCloudCredentials(api_key=KEY, base_url="http://127.0.0.1:9")
    async with creds.get_backend() as backend:
        shown = [repr(creds), str(creds), creds.model_dump_json(), repr(backend)]
    shown.append(repr(creds.get_settings()))
    for text in shown:
        assert KEY not in text
    assert isinstance(creds.api_key, SecretStr)


def test_request_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ComfyCloudCredentials(request_timeout=0)
