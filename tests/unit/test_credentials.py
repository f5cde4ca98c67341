"""The credentials block: Prefect's block standards, fallback to COMFY_*, and a key that never shows."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.error import URLError

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr, ValidationError

from prefect_comfy import ComfyUIServer, ComfyV2Credentials, ComfyWorkflow
from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.backends.cloud.block import ComfyCloudCredentials, is_masked
from prefect_comfy.backends.cloud.rest import ComfyClient
from prefect_comfy.exceptions import ComfyConfigError
from prefect_comfy.settings import DOCS_URL

KEY = "comfyui-unit-credentials-key"
ROOT = Path(__file__).resolve().parents[2]


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


# Issue 19.10: how the blocks present themselves, and what they refuse.

BLOCKS = [ComfyCloudCredentials, ComfyUIServer, ComfyV2Credentials, ComfyWorkflow]


def _heading_anchors(page: Path) -> set[str]:
    """The anchors mkdocs gives a page's headings (its toc slugify: lowercase, words joined by -)."""
    anchors = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().replace("`", "").lower()
            anchors.add(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", text)).strip("-"))
    return anchors


@pytest.mark.parametrize("block", BLOCKS)
def test_view_docs_opens_this_projects_docs_page(block) -> None:
    """Not docs.comfy.org: a page and heading of this project's site, whose site_url is DOCS_URL."""
    site_url = re.search(r"^site_url: (\S+)$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert site_url and site_url.group(1) == DOCS_URL
    url = block._documentation_url
    assert url.startswith(DOCS_URL), url
    page, _, anchor = url.removeprefix(DOCS_URL).partition("#")
    source = ROOT / "docs" / f"{page.rstrip('/')}.md"
    assert source.is_file(), url
    assert anchor in _heading_anchors(source), url


@pytest.mark.parametrize(
    ("block", "usage"),
    [
        (ComfyCloudCredentials, 'run_comfy_workflow(credentials, "workflow.json")'),
        (ComfyUIServer, 'run_comfy_workflow(server, "workflow.json")'),
        (ComfyV2Credentials, 'run_comfy_workflow(credentials, "workflow.json")'),
    ],
)
def test_the_code_example_shows_the_usual_use(block, usage) -> None:
    """The UI's snippet runs a workflow with the block, as Prefect's standard wants it loaded."""
    example = block.get_code_example()
    assert usage in example and f'{block.__name__}.load("BLOCK_NAME")' in example
    assert "get_backend" not in example


@pytest.mark.parametrize("block", [ComfyCloudCredentials, ComfyUIServer, ComfyV2Credentials])
def test_booleans_have_a_real_default(block) -> None:
    """The UI showed "None" for a bool left unset; a block saved with null still loads."""
    for name, field in block.model_fields.items():
        if field.annotation is bool or field.annotation == bool | None:
            assert field.annotation is bool and field.default is False, name
    assert block(allow_insecure_http=None).allow_insecure_http is False
    assert block.model_json_schema()["properties"]["allow_insecure_http"]["default"] is False


def test_an_unset_insecure_flag_leaves_it_to_the_environment(clean_env) -> None:
    clean_env.setenv("COMFY_ALLOW_INSECURE_HTTP", "1")
    assert ComfyCloudCredentials().get_settings().allow_insecure_http is True


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (lambda: ComfyUIServer(urll="http://127.0.0.1:9", api_key=KEY), "did you mean url?"),
        (lambda: ComfyCloudCredentials(api_key=KEY, base_ulr="http://x"), "did you mean base_url?"),
        (lambda: ComfyV2Credentials(api_key=KEY, endpiont="http://x"), "did you mean endpoint?"),
        (lambda: ComfyUIServer.model_validate({"api_key": KEY, "zzz": 1}), "the fields are: "),
    ],
)
def test_an_unknown_field_is_refused_naming_the_right_one(make, hint) -> None:
    with pytest.raises(ValidationError) as caught:
        make()
    message = str(caught.value)
    assert "has no field" in message and hint in message
    assert KEY not in message and KEY not in repr(caught.value)


def test_the_v2_block_takes_comfy_sdks_base_url(clean_env) -> None:
    block = ComfyV2Credentials(base_url="http://127.0.0.1:8189", api_key=KEY)
    assert block.endpoint == "http://127.0.0.1:8189"
    assert block.resolved() == ("http://127.0.0.1:8189", KEY)
    assert "base_url" not in block.model_dump()
    with pytest.raises(ValidationError, match="give only endpoint"):
        ComfyV2Credentials(base_url="http://a.invalid", endpoint="http://b.invalid")


def test_a_saved_document_still_loads() -> None:
    """Prefect's own keys in a block document are not unknown fields."""
    data = {"url": "http://127.0.0.1:8188", "block_type_slug": "comfyui-server"}
    assert ComfyUIServer.model_validate(data).url == "http://127.0.0.1:8188"
