"""The emulator's strict request models, error bodies and multipart reader."""

from __future__ import annotations

import httpx
import pytest

from prefect_comfy_emulator.config import EmulatorConfig
from prefect_comfy_emulator.multipart import parse_multipart
from prefect_comfy_emulator.wire import (
    ApiError,
    CreateJob,
    CreateJobBatch,
    FaultRequest,
    GetModelUploadUrl,
    parse_body,
    split_tags,
)

WF = {"1": {"class_type": "EmulatorFail", "inputs": {"message": "x"}}}


def refused(model, raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_body(model, raw)
    return info.value


def test_unknown_fields_are_refused() -> None:
    error = refused(CreateJob, b'{"workflow": {}, "priority": 1}')
    assert error.status == 422 and error.code == "validation_error"
    assert error.details == [{"field": "priority", "message": "Extra inputs are not permitted"}]


def test_malformed_json_is_400() -> None:
    error = refused(CreateJob, b'{"workflow": ')
    assert (error.status, error.code) == (400, "invalid_request")


def test_no_coercion_and_body_must_be_object() -> None:
    assert (
        refused(
            GetModelUploadUrl, b'{"name": "a", "type": "lora", "mime_type": "x", "size": "12"}'
        ).details[0]["field"]
        == "size"
    )
    assert refused(CreateJob, b"[1, 2]").details == [
        {"field": "body", "message": "the body must be a JSON object"}
    ]
    assert refused(CreateJob, b'{"workflow": {}, "tags": "a,b"}').details[0]["field"] == "tags"


def test_model_type_and_batch_limits() -> None:
    assert (
        refused(
            GetModelUploadUrl, b'{"name": "a", "type": "hypernetwork", "mime_type": "x", "size": 1}'
        ).details[0]["field"]
        == "type"
    )
    assert refused(CreateJobBatch, b'{"jobs": []}').details[0]["field"] == "jobs"
    too_many = {"jobs": [{"workflow": WF}] * 51}
    import json

    assert refused(CreateJobBatch, json.dumps(too_many).encode()).status == 422
    assert (
        len(parse_body(CreateJobBatch, json.dumps({"jobs": [{"workflow": WF}] * 50}).encode()).jobs)
        == 50
    )


def test_fault_request() -> None:
    assert parse_body(FaultRequest, b'{"status": 429, "retry_after": 1}').when == "before"
    assert refused(FaultRequest, b'{"status": 404}').status == 422
    assert refused(FaultRequest, b'{"status": 500, "when": "during"}').status == 422


def test_error_body_shape() -> None:
    response = ApiError(429, "rate_limited", "slow down", headers={"Retry-After": "2"}).response()
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    assert response.body == b'{"error":{"code":"rate_limited","message":"slow down","details":[]}}'
    with pytest.raises(AssertionError):
        ApiError(400, "made_up_code", "x")


def test_split_tags() -> None:
    assert split_tags(" a, b,,c ") == ["a", "b", "c"]
    assert split_tags(None) == []


def test_config_never_shows_keys() -> None:
    config = EmulatorConfig(api_keys=["comfyui-secret-value"])
    assert "comfyui-secret-value" not in repr(config) and "comfyui-secret-value" not in str(config)
    with pytest.raises(ValueError) as info:
        EmulatorConfig(api_keys=[" comfyui-secret-value"])
    assert "comfyui-secret-value" not in str(info.value)


def test_multipart_reader_round_trips_binary() -> None:
    payload = b"\x89PNG\r\n\x1a\n\r\n--not-a-boundary\x00\xff"
    request = httpx.Request(
        "POST", "http://x/", files={"file": ("cat.png", payload, "image/png")}, data={"tags": "a,b"}
    )
    fields = parse_multipart(request.headers["content-type"], request.read())
    assert fields["file"].data == payload
    assert (fields["file"].filename, fields["file"].content_type) == ("cat.png", "image/png")
    assert fields["tags"].text == "a,b"
    with pytest.raises(ApiError):
        parse_multipart("application/json", b"{}")
    with pytest.raises(ApiError):
        parse_multipart("multipart/form-data; boundary=zz", b"garbage")
