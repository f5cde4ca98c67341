"""The one streaming download (transport/download.py): safe paths, no collisions, limits."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_comfy.backends.cloud.rest import ComfyClient
from prefect_comfy.backends.comfyui import mapping
from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.exceptions import ComfyTransportError, ResponseTooLarge
from prefect_comfy.models import Output
from prefect_comfy.settings import ComfySettings
from prefect_comfy.transport.download import MAX_NAME_BYTES, safe_relative_path
from prefect_comfy.transport.retry import RetryPolicy
from tests.support.rest_fakes import KEY

ORIGIN = "https://comfy.invalid"
FAST = ComfySettings(max_retries=0)


def serve_name_as_body(request: httpx.Request) -> httpx.Response:
    """Storage that answers every path with the path itself: each file says where it came from."""
    return httpx.Response(200, content=request.url.path.encode())


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# -- names --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("same.png", "same.png"),
        ("sub1/same.png", "sub1/same.png"),
        (".", "output"),
        ("..", "output"),
        ("", "output"),
        ("../../etc/passwd", "etc/passwd"),
        ("/abs/x.png", "abs/x.png"),
        ("a\\..\\b.png", "a/b.png"),
        ("nul\x00in\x00name.png", "nulinname.png"),
        ("tab\tand\nnewline.png", "tabandnewline.png"),
    ],
)
def test_safe_relative_path(name: str, expected: str) -> None:
    assert str(safe_relative_path(name)) == expected


def test_a_long_name_is_cut_and_keeps_its_extension() -> None:
    path = safe_relative_path("é" * 400 + ".png")
    assert len(path.name.encode()) <= MAX_NAME_BYTES and path.suffix == ".png"


async def test_same_name_in_two_subfolders_are_two_files(tmp_path: Path) -> None:
    """Item 6: ``same.png`` and ``sub1/same.png`` from ComfyUI no longer land on one path."""

    def server(request: httpx.Request) -> httpx.Response:
        sub = request.url.params.get("subfolder", "")
        return httpx.Response(200, content=f"{sub}|{request.url.params['filename']}".encode())

    outputs = [
        Output(
            id=f"p:9:{sub}",
            name="same.png",
            download_url=mapping.view_url(ORIGIN, "same.png", sub, "output"),
        )
        for sub in ("", "sub1")
    ]
    async with ComfyUIBackend(ORIGIN, transport=httpx.MockTransport(server), settings=FAST) as b:
        paths = [await b.download(o, tmp_path) for o in outputs]
    assert paths == [tmp_path / "same.png", tmp_path / "sub1" / "same.png"]
    assert [p.read_bytes() for p in paths] == [b"|same.png", b"sub1|same.png"]


@pytest.mark.parametrize("name", [".", "..", "a\x00b.png", "x" * 600, "../../escape.png", "/"])
async def test_hostile_comfyui_names_stay_inside(tmp_path: Path, name: str) -> None:
    """Item 6: no IsADirectoryError/OSError/ValueError, and no .part file outside the folder."""
    target = tmp_path / "target"
    target.mkdir()

    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"bytes")

    output = Output(id="o", name=name, download_url=mapping.view_url(ORIGIN, name, "", "output"))
    async with ComfyUIBackend(ORIGIN, transport=httpx.MockTransport(server), settings=FAST) as b:
        path = await b.download(output, target)
    assert path.resolve().is_relative_to(target.resolve()) and path.read_bytes() == b"bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["target"]  # nothing beside the folder
    assert not [p for p in target.rglob("*.part")]


async def test_a_taken_name_gets_a_suffix_and_nothing_is_overwritten(tmp_path: Path) -> None:
    bodies = iter([b"first", b"second", b"third"])

    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=next(bodies))

    async with ComfyClient(KEY, ORIGIN, transport=httpx.MockTransport(server)) as client:
        paths = [await client.download(f"{ORIGIN}/_storage/a.png", tmp_path) for _ in range(3)]
    assert [p.name for p in paths] == ["a.png", "a (1).png", "a (2).png"]
    assert [p.read_bytes() for p in paths] == [b"first", b"second", b"third"]


async def test_the_same_bytes_again_are_the_file_already_there(tmp_path: Path) -> None:
    # `prefect-comfy outputs JOB` twice writes no "a (1).png": the second finds the first.
    bodies = iter([b"same", b"same", b"other"])

    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=next(bodies))

    async with ComfyClient(KEY, ORIGIN, transport=httpx.MockTransport(server)) as client:
        paths = [await client.download(f"{ORIGIN}/_storage/a.png", tmp_path) for _ in range(3)]
    assert [p.name for p in paths] == ["a.png", "a.png", "a (1).png"]
    assert sorted(p.name for p in files_under(tmp_path)) == ["a (1).png", "a.png"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
async def test_a_downloaded_file_gets_the_users_mode(tmp_path: Path, umask: int, mode: int) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"png")

    previous = os.umask(umask)
    try:
        async with ComfyClient(KEY, ORIGIN, transport=httpx.MockTransport(server)) as client:
            in_folder = await client.download(f"{ORIGIN}/_storage/a.png", tmp_path)
            as_file = await client.download(f"{ORIGIN}/_storage/b.png", tmp_path / "b.png")
    finally:
        os.umask(previous)
    assert in_folder.stat().st_mode & 0o777 == mode
    assert as_file.stat().st_mode & 0o777 == mode


async def test_an_explicit_file_path_is_replaced(tmp_path: Path) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"new")

    (tmp_path / "f.png").write_bytes(b"old")
    async with ComfyClient(KEY, ORIGIN, transport=httpx.MockTransport(server)) as client:
        path = await client.download(f"{ORIGIN}/_storage/a.png", tmp_path / "f.png")
    assert path == tmp_path / "f.png" and path.read_bytes() == b"new"


async def test_a_file_where_a_subfolder_should_be_flattens_the_name(tmp_path: Path) -> None:
    (tmp_path / "sub1").write_bytes(b"a file named like the subfolder")
    output = Output(id="o", name="sub1/x.png", download_url=f"{ORIGIN}/_storage/x.png")
    async with ComfyClient(
        KEY, ORIGIN, transport=httpx.MockTransport(serve_name_as_body)
    ) as client:
        path = await client.download(output, tmp_path)
    assert path == tmp_path / "sub1_x.png" and (tmp_path / "sub1").read_bytes().startswith(
        b"a file"
    )


# -- the property --------------------------------------------------------------------------------------
NAMES = st.lists(
    st.one_of(
        st.text(min_size=0, max_size=40),
        st.sampled_from([".", "..", "/", "same.png", "sub1/same.png", "a/../b", "\x00", "x" * 300]),
        st.lists(st.sampled_from(["..", ".", "sub1", "same.png", ""]), max_size=5).map("/".join),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=NAMES)
def test_any_output_names_get_distinct_paths_inside_the_folder(names: list[str]) -> None:
    """Item 6, as a property: every output inside the folder, no two on one path, none lost."""

    async def run(root: Path) -> list[Path]:
        target = root / "target"
        target.mkdir()
        outputs = [
            Output(id=f"o{i}", name=name, download_url=f"{ORIGIN}/_storage/{i}?n={quote(name)}")
            for i, name in enumerate(names)
        ]
        async with ComfyClient(
            KEY, ORIGIN, transport=httpx.MockTransport(serve_name_as_body)
        ) as client:
            return [await client.download(o, target) for o in outputs]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = asyncio.run(run(root))
        target = (root / "target").resolve()
        assert all(p.resolve().is_relative_to(target) for p in paths)
        assert len({p.resolve() for p in paths}) == len(paths)
        assert [p.read_bytes() for p in paths] == [
            f"/_storage/{i}".encode() for i in range(len(paths))
        ]
        assert os.listdir(root) == ["target"]
        assert len(files_under(target)) == len(paths)  # no temporary file left


# -- limits (unit level; the hostile-server versions are in tests/integration/test_http_limits.py) --
async def test_a_download_over_the_size_limit_fails_and_keeps_nothing(tmp_path: Path) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 5000)

    async with ComfyClient(KEY, ORIGIN, transport=httpx.MockTransport(server)) as client:
        with pytest.raises(ResponseTooLarge, match="COMFY_MAX_DOWNLOAD_BYTES"):
            await client.download(f"{ORIGIN}/_storage/big.bin", tmp_path, max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


async def test_a_stalled_download_fails_and_keeps_nothing(tmp_path: Path) -> None:
    async def trickle():
        yield b"first bytes"
        await asyncio.Event().wait()  # then nothing, ever
        yield b"never"

    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=trickle())

    async with ComfyClient(
        KEY, ORIGIN, transport=httpx.MockTransport(server), retry=RetryPolicy(max_retries=0)
    ) as client:
        with pytest.raises(ComfyTransportError, match="stalled"):
            await client.download(f"{ORIGIN}/_storage/slow.bin", tmp_path, stall_timeout=0.2)
    assert list(tmp_path.iterdir()) == []
