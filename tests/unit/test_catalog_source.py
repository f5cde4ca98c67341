"""Where a kind of server without a catalog route reads its node catalog (:mod:`prefect_comfy.backends.catalog`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefect_comfy.backends.catalog import catalog_route, read_catalog_source
from prefect_comfy.exceptions import CatalogUnavailable


@pytest.mark.parametrize(
    ("url", "route"),
    [
        ("http://127.0.0.1:8188", ("http://127.0.0.1:8188", "/api/object_info")),
        ("http://127.0.0.1:8188/", ("http://127.0.0.1:8188", "/api/object_info")),
        ("https://cloud.comfy.org/api", ("https://cloud.comfy.org", "/api/object_info")),
        ("http://h.invalid/object_info", ("http://h.invalid", "/object_info")),
        ("http://h.invalid/comfy", ("http://h.invalid", "/comfy/api/object_info")),
    ],
)
def test_catalog_route(url: str, route: tuple[str, str]) -> None:
    assert catalog_route(url) == route


async def test_a_saved_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "object_info.json"
    path.write_text(json.dumps({"EmptyImage": {"input": {"required": {}}}}))
    assert await read_catalog_source(str(path), kind="v2", server="s") == {
        "EmptyImage": {"input": {"required": {}}}
    }


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "No catalog file at"),
        (b"\xff\xfe{}", "is not UTF-8 JSON"),
        (b"[1, 2]", "did not give a node catalog"),
        (b"{}", "did not give a node catalog"),
    ],
)
async def test_a_bad_file_says_what_is_wrong(
    tmp_path: Path, content: bytes | None, needle: str
) -> None:
    path = tmp_path / "object_info.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CatalogUnavailable, match=needle):
        await read_catalog_source(str(path), kind="v2", server="s")


async def test_no_source_says_what_to_set() -> None:
    with pytest.raises(CatalogUnavailable) as info:
        await read_catalog_source(None, kind="cloud", server="https://cloud.comfy.org")
    message = str(info.value)
    assert "The cloud server https://cloud.comfy.org serves no node catalog" in message
    assert "catalog_source" in message and "COMFY_CATALOG_SOURCE" in message
