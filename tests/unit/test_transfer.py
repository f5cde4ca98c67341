"""Uploads and downloads of ComfyClient (prefect_comfy/transport/transfer.py) on httpx.MockTransport."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from prefect_comfy.backends.cloud.rest import ComfyClient
from prefect_comfy.exceptions import (
    AuthenticationError,
    ComfyAPIError,
    ComfyConfigError,
)
from prefect_comfy.models import Input, Model, Output
from tests.support.rest_fakes import (
    API,
    INPUT,
    ORIGIN,
    PNG,
    FakeAPI,
    assert_authorized,
    err,
    multipart_fields,
)

# Fixtures api, sleeps and client: tests/unit/conftest.py


# -- inputs and models ----------------------------------------------------------------------------


async def test_upload_input_from_path_is_multipart(
    api: FakeAPI, client: ComfyClient, tmp_path: Path
) -> None:
    api.on("POST", "/developer/api/v1/inputs", httpx.Response(201, json=INPUT))
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    created = await client.upload_input(path, tags=["t", "u"], idempotency_key="k1")
    assert isinstance(created, Input) and created.id == "inp_1"
    request = api.requests[0]
    assert_authorized(request)
    assert request.headers["Idempotency-Key"] == "k1"
    assert request.headers["Content-Type"].startswith("multipart/form-data")
    fields = multipart_fields(request, api.bodies[0])
    assert fields["file"] == PNG
    assert fields["file.filename"] == b"cat.png"
    assert fields["name"] == b"cat.png"
    assert fields["tags"] == b"t,u"


async def test_upload_bytes_needs_a_name_and_retries_resend_the_file(
    api: FakeAPI, client: ComfyClient
) -> None:
    with pytest.raises(ComfyConfigError, match="name"):
        await client.upload_input(PNG)
    api.on(
        "POST",
        "/developer/api/v1/inputs",
        err(502, None),
        httpx.Response(201, json=INPUT),
    )
    await client.upload_input(PNG, name="dog.png")
    assert len(api.requests) == 2
    first, second = (multipart_fields(r, b) for r, b in zip(api.requests, api.bodies, strict=True))
    assert first["file"] == second["file"] == PNG and second["name"] == b"dog.png"
    assert "tags" not in second
    assert api.requests[0].headers["Idempotency-Key"] == api.requests[1].headers["Idempotency-Key"]


async def test_upload_missing_file_is_a_config_error(client: ComfyClient, tmp_path: Path) -> None:
    with pytest.raises(ComfyConfigError, match="No file"):
        await client.upload_input(tmp_path / "absent.png")


async def test_input_from_url_get_list_delete(api: FakeAPI, client: ComfyClient) -> None:
    api.on(
        "POST",
        "/developer/api/v1/inputs/from-url",
        httpx.Response(202, json={**INPUT, "status": "downloading"}),
    )
    api.on("GET", "/developer/api/v1/inputs/inp_1", httpx.Response(200, json=INPUT))
    api.on(
        "GET",
        "/developer/api/v1/inputs",
        httpx.Response(200, json={"inputs": [INPUT], "total": 1, "has_more": False}),
    )
    api.on("DELETE", "/developer/api/v1/inputs/inp_1", httpx.Response(204))
    created = await client.create_input_from_url("https://img.test/c.png", name="c.png", tags=["t"])
    assert created.status == "downloading"
    assert json.loads(api.bodies[0]) == {
        "url": "https://img.test/c.png",
        "name": "c.png",
        "tags": ["t"],
    }
    assert api.requests[0].headers["Idempotency-Key"]
    assert (await client.get_input("inp_1")).status == "ready"
    assert [i.id async for i in client.iter_inputs(tags=["t"])] == ["inp_1"]
    assert api.requests[-1].url.params["tags"] == "t"
    await client.delete_input("inp_1")
    assert api.requests[-1].method == "DELETE"


async def test_presigned_upload_puts_without_the_key(
    api: FakeAPI, client: ComfyClient, tmp_path: Path
) -> None:
    storage = "https://storage.test/bucket/inp_9?sig=abc"
    api.on(
        "POST",
        "/developer/api/v1/inputs/get-upload-url",
        httpx.Response(
            201, json={"id": "inp_9", "status": "pending_upload", "upload_url": storage}
        ),
    )
    api.on("PUT", "/bucket/inp_9", err(503, None), httpx.Response(200))
    api.on(
        "POST",
        "/developer/api/v1/inputs/inp_9/complete",
        httpx.Response(200, json={**INPUT, "id": "inp_9"}),
    )
    path = tmp_path / "big.png"
    path.write_bytes(PNG)
    created = await client.upload_input_presigned(path, name="big.png", tags=["t"])
    assert created.id == "inp_9"
    ticket, put1, put2, complete = api.requests
    assert json.loads(api.bodies[0]) == {
        "name": "big.png",
        "mime_type": "image/png",
        "size": len(PNG),
        "tags": ["t"],
    }
    assert ticket.headers["Idempotency-Key"]
    for put, body in ((put1, api.bodies[1]), (put2, api.bodies[2])):
        assert put.method == "PUT" and str(put.url) == storage
        assert "Authorization" not in put.headers
        assert put.headers["Content-Type"] == "image/png"
        assert put.headers["Content-Length"] == str(len(PNG))
        assert body == PNG
    assert_authorized(complete)


async def test_presigned_upload_to_the_api_origin_still_has_no_key(
    api: FakeAPI, client: ComfyClient
) -> None:
    api.on(
        "POST",
        "/developer/api/v1/models/get-upload-url",
        httpx.Response(
            201,
            json={
                "id": "mdl_1",
                "status": "pending_upload",
                "upload_url": "/developer/api/v1/_upload/mdl_1",
            },
        ),
    )
    api.on("PUT", "/developer/api/v1/_upload/mdl_1", httpx.Response(200))
    api.on(
        "POST",
        "/developer/api/v1/models/mdl_1/complete",
        httpx.Response(200, json={**INPUT, "id": "mdl_1", "type": "lora"}),
    )
    model = await client.upload_model_presigned(
        b"weights", name="x.safetensors", type="lora", metadata={"base_model": "sd15"}
    )
    assert isinstance(model, Model) and model.type == "lora"
    assert json.loads(api.bodies[0]) == {
        "name": "x.safetensors",
        "mime_type": "application/octet-stream",
        "size": 7,
        "tags": [],
        "type": "lora",
        "metadata": {"base_model": "sd15"},
    }
    put = api.requests[1]
    assert str(put.url) == API + "/_upload/mdl_1" and "Authorization" not in put.headers


async def test_model_calls(api: FakeAPI, client: ComfyClient) -> None:
    model = {**INPUT, "id": "mdl_1", "name": "m.safetensors", "type": "checkpoint", "metadata": {}}
    api.on("POST", "/developer/api/v1/models", httpx.Response(201, json=model))
    api.on("POST", "/developer/api/v1/models/from-url", httpx.Response(202, json=model))
    api.on("GET", "/developer/api/v1/models/mdl_1", httpx.Response(200, json=model))
    api.on(
        "GET",
        "/developer/api/v1/models",
        httpx.Response(200, json={"models": [model], "total": 1, "has_more": False}),
    )
    api.on("DELETE", "/developer/api/v1/models/mdl_1", httpx.Response(204))
    api.on(
        "GET",
        "/developer/api/v1/models/types",
        httpx.Response(200, json={"types": ["lora", "vae"]}),
    )

    created = await client.upload_model(
        b"abc", type="checkpoint", name="m.safetensors", tags=["t"], metadata={"k": 1}
    )
    assert isinstance(created, Model) and created.type == "checkpoint"
    fields = multipart_fields(api.requests[0], api.bodies[0])
    assert fields["type"] == b"checkpoint" and fields["file"] == b"abc"
    assert json.loads(fields["metadata"]) == {"k": 1} and fields["tags"] == b"t"
    assert api.requests[0].headers["Idempotency-Key"]

    await client.create_model_from_url("https://hf.test/m", type="lora", metadata={"a": "b"})
    assert json.loads(api.bodies[1]) == {
        "url": "https://hf.test/m",
        "type": "lora",
        "tags": [],
        "metadata": {"a": "b"},
    }
    assert (await client.get_model("mdl_1")).id == "mdl_1"
    page = await client.list_models(type="checkpoint")
    assert (
        page.items[0].type == "checkpoint" and api.requests[-1].url.params["type"] == "checkpoint"
    )
    assert [m.id async for m in client.iter_models()] == ["mdl_1"]
    await client.delete_model("mdl_1")
    assert await client.model_types() == ["lora", "vae"]
    for request in api.requests:
        assert_authorized(request)


# -- downloads ------------------------------------------------------------------------------------
def storage_reply(request: httpx.Request) -> httpx.Response:
    if "Authorization" in request.headers:
        return httpx.Response(400, json={"error": {"code": "invalid_request", "message": "auth"}})
    return httpx.Response(200, content=PNG)


async def test_download_to_a_directory_uses_the_output_name(
    api: FakeAPI, client: ComfyClient, tmp_path: Path
) -> None:
    api.on("GET", "/_storage/abc/ComfyUI_0001.png", storage_reply)
    output = Output(
        id="out_1", download_url=ORIGIN + "/_storage/abc/ComfyUI_0001.png?sig=1", name="a.png"
    )
    path = await client.download(output, tmp_path)
    assert path == tmp_path / "a.png" and path.read_bytes() == PNG
    assert "Authorization" not in api.requests[0].headers
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temp file left


async def test_download_to_a_file_path_and_from_a_url(
    api: FakeAPI, client: ComfyClient, tmp_path: Path
) -> None:
    api.on("GET", "/f/x.png", storage_reply)
    target = tmp_path / "sub" / "named.png"
    assert await client.download("https://cdn.test/f/x.png", target) == target
    assert target.read_bytes() == PNG
    assert "Authorization" not in api.requests[0].headers
    assert await client.download("https://cdn.test/f/x.png", tmp_path) == tmp_path / "x.png"


@pytest.mark.parametrize(
    "url",
    [
        "https://comfy.test:9999/developer/api/v1/outputs/o/content",  # other port
        "http://comfy.test:8765/developer/api/v1/outputs/o/content",  # other scheme
        "https://evil.test:8765/developer/api/v1/outputs/o/content",  # other host
        "https://comfy.test:8765/_storage/o.png",  # same origin, not the API
        "https://comfy.test:8765/developer/api/v1/../../_storage/o.png",  # sneaking out
        "https://comfy.test:8765/developer/api/v10/o.png",  # a prefix that is not the API
    ],
)
async def test_download_never_sends_the_key_outside_the_api(
    api: FakeAPI, client: ComfyClient, tmp_path: Path, url: str
) -> None:
    def any_path(request: httpx.Request) -> httpx.Response:
        return storage_reply(request)

    api.on("GET", httpx.URL(url).path, any_path)
    await client.download(url, tmp_path / "o.png")
    assert "Authorization" not in api.requests[0].headers


async def test_download_from_the_api_carries_the_key(
    api: FakeAPI, client: ComfyClient, tmp_path: Path
) -> None:
    api.on("GET", "/developer/api/v1/outputs/out_1/content", httpx.Response(200, content=PNG))
    await client.download(API + "/outputs/out_1/content", tmp_path / "o.png")
    assert_authorized(api.requests[0])


async def test_download_redirect_drops_the_key(
    api: FakeAPI, client: ComfyClient, tmp_path: Path
) -> None:
    api.on(
        "GET",
        "/developer/api/v1/outputs/out_1/content",
        httpx.Response(302, headers={"Location": "https://storage.test/b/o.png?sig=s"}),
    )
    api.on("GET", "/b/o.png", storage_reply)
    path = await client.download(API + "/outputs/out_1/content", tmp_path / "o.png")
    assert path.read_bytes() == PNG
    first, second = api.requests
    assert_authorized(first)
    assert str(second.url) == "https://storage.test/b/o.png?sig=s"
    assert "Authorization" not in second.headers


async def test_download_without_url_reads_the_output_again(
    api: FakeAPI, client: ComfyClient, tmp_path: Path
) -> None:
    api.on(
        "GET",
        "/developer/api/v1/outputs/out_1",
        httpx.Response(200, json={"id": "out_1", "download_url": "/_storage/z.png"}),
    )
    api.on("GET", "/_storage/z.png", storage_reply)
    path = await client.download(Output(id="out_1"), tmp_path)
    assert path == tmp_path / "z.png" and path.read_bytes() == PNG


async def test_download_retries_and_leaves_no_partial_file(
    api: FakeAPI, client: ComfyClient, tmp_path: Path
) -> None:
    api.on("GET", "/_storage/r.png", err(503, None), httpx.ReadError("cut"), storage_reply)
    path = await client.download(ORIGIN + "/_storage/r.png", tmp_path)
    assert path.read_bytes() == PNG and len(api.requests) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["r.png"]


async def test_download_refused_by_storage_is_not_an_auth_error(
    api: FakeAPI, client: ComfyClient, tmp_path: Path
) -> None:
    api.on("GET", "/_storage/old.png", err(403, None, "signature expired"))
    with pytest.raises(ComfyAPIError, match="signature expired") as info:
        await client.download("https://s.test/_storage/old.png?sig=zzz", tmp_path)
    assert not isinstance(info.value, AuthenticationError)
    assert "sig=zzz" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
