"""ComfyClient on httpx.MockTransport: request shapes, error mapping, retries, and where the key goes."""

from __future__ import annotations

import json
import logging
import ssl
import uuid

import httpx
import pytest
from pydantic import SecretStr

from prefect_comfy.backends.cloud.rest import ComfyClient, shared_ssl_context
from prefect_comfy.exceptions import (
    AuthenticationError,
    ComfyAPIError,
    ComfyConfigError,
    ComfyProtocolError,
    ComfyTransportError,
    InvalidRequest,
    InvalidWorkflow,
    NotFound,
    RateLimited,
    ServerError,
)
from prefect_comfy.models import Job, Output
from prefect_comfy.settings import ComfySettings
from prefect_comfy.transport.retry import RetryPolicy
from tests.support.rest_fakes import (
    API,
    JOB,
    KEY,
    ORIGIN,
    WORKFLOW,
    FakeAPI,
    Reply,
    Sleeps,
    assert_authorized,
    err,
)

# Fixtures api, sleeps and client: tests/unit/conftest.py


# -- construction ---------------------------------------------------------------------------------
async def test_missing_key_says_what_to_set() -> None:
    with pytest.raises(ComfyConfigError, match="COMFY_API_KEY.*api_key"):
        ComfyClient(settings=ComfySettings(api_key=None))


async def test_values_come_from_settings_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFY_API_KEY", KEY)
    monkeypatch.setenv("COMFY_BASE_URL", "http://env.test:1/developer/api/v1/")
    monkeypatch.setenv("COMFY_MAX_RETRIES", "7")
    async with ComfyClient() as c:
        assert c.base_url == "http://env.test:1"
        assert c.api_url == "http://env.test:1/developer/api/v1"
        assert c.retry.max_retries == 7
        assert c.api_key.get_secret_value() == KEY
    async with ComfyClient(SecretStr("k2"), "https://x.test", max_retries=0) as c:
        assert c.base_url == "https://x.test"
        assert c.retry.max_retries == 0


async def test_bad_base_url_is_a_config_error() -> None:
    with pytest.raises(ComfyConfigError, match="base URL"):
        ComfyClient(KEY, "ftp://nowhere")


async def test_repr_shows_the_base_url_only() -> None:
    async with ComfyClient(KEY, ORIGIN) as c:
        assert repr(c) == f"ComfyClient(base_url={ORIGIN!r})"
        assert KEY not in repr(c) and KEY not in str(vars(c).get("_api_key"))


async def test_closed_client_refuses_calls(api: FakeAPI) -> None:
    c = ComfyClient(KEY, ORIGIN, transport=httpx.MockTransport(api))
    await c.aclose()
    await c.aclose()
    assert c.closed
    with pytest.raises(ComfyConfigError, match="closed"):
        await c.get_job("job_1")


async def test_building_a_client_opens_nothing_until_the_first_request(api: FakeAPI) -> None:
    c = ComfyClient(KEY, ORIGIN, transport=httpx.MockTransport(api))
    assert c._client is None  # no httpx client, no SSL context: building one is cheap
    api.on("GET", "/developer/api/v1/jobs/job_1", httpx.Response(200, json=JOB))
    await c.get_job("job_1")
    assert c._client is not None
    await c.aclose()
    assert c._client is None
    with pytest.raises(ComfyConfigError, match="closed"):
        await c.get_job("job_1")
    await ComfyClient(KEY, ORIGIN).aclose()  # never used: nothing to close


def test_clients_share_one_ssl_context(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[ssl.SSLContext] = []

    def create_ssl_context() -> ssl.SSLContext:
        made.append(ssl.create_default_context())
        return made[-1]

    monkeypatch.setattr(httpx, "create_ssl_context", create_ssl_context)
    shared_ssl_context.cache_clear()
    try:
        first, second = ComfyClient(KEY, ORIGIN), ComfyClient(KEY, "https://other.test")
        assert not made  # nothing is loaded at construction
        assert first._http is not second._http
        assert len(made) == 1 and shared_ssl_context() is made[0]
    finally:
        shared_ssl_context.cache_clear()


# -- jobs -----------------------------------------------------------------------------------------
async def test_create_job_request_shape(api: FakeAPI, client: ComfyClient) -> None:
    api.on("POST", "/developer/api/v1/jobs", httpx.Response(202, json=JOB))
    job = await client.create_job(WORKFLOW, tags=["a", "b"], idempotency_key="idem-1")
    assert isinstance(job, Job) and job.id == "job_1"
    (request,) = api.requests
    assert str(request.url) == API + "/jobs"
    assert_authorized(request)
    assert request.headers["Idempotency-Key"] == "idem-1"
    assert json.loads(api.bodies[0]) == {"workflow": WORKFLOW, "tags": ["a", "b"]}


async def test_create_job_always_sends_one_key_reused_by_retries(
    api: FakeAPI, client: ComfyClient
) -> None:
    api.on(
        "POST",
        "/developer/api/v1/jobs",
        err(503, "internal_error"),
        httpx.ConnectError("reset"),
        httpx.Response(202, json=JOB),
    )
    await client.create_job(WORKFLOW)
    keys = {r.headers["Idempotency-Key"] for r in api.requests}
    assert len(api.requests) == 3 and len(keys) == 1
    uuid.UUID(keys.pop())
    await client.create_job(WORKFLOW)
    assert api.requests[-1].headers["Idempotency-Key"] not in {
        r.headers["Idempotency-Key"] for r in api.requests[:3]
    }


async def test_create_job_rejects_a_non_graph(client: ComfyClient) -> None:
    with pytest.raises(ComfyConfigError):
        await client.create_job([])  # type: ignore[arg-type]


async def test_create_batch(api: FakeAPI, client: ComfyClient) -> None:
    api.on(
        "POST",
        "/developer/api/v1/jobs/batch",
        httpx.Response(202, json={"batch_id": "bat_1", "jobs": [JOB, {**JOB, "id": "job_2"}]}),
    )
    batch = await client.create_batch(
        [{"workflow": WORKFLOW, "tags": ["x"]}, {"workflow": WORKFLOW}]
    )
    assert batch.batch_id == "bat_1" and [j.id for j in batch.jobs] == ["job_1", "job_2"]
    assert json.loads(api.bodies[0]) == {
        "jobs": [{"workflow": WORKFLOW, "tags": ["x"]}, {"workflow": WORKFLOW, "tags": []}]
    }
    assert api.requests[0].headers["Idempotency-Key"]
    with pytest.raises(ComfyConfigError):
        await client.create_batch([])
    with pytest.raises(ComfyConfigError):
        await client.create_batch([{"workflow": WORKFLOW}] * 51)


async def test_get_job_and_list_jobs(api: FakeAPI, client: ComfyClient) -> None:
    api.on("GET", "/developer/api/v1/jobs/job_1", httpx.Response(200, json=JOB))
    api.on(
        "GET",
        "/developer/api/v1/jobs",
        httpx.Response(200, json={"jobs": [JOB], "total": 7, "has_more": True, "extra": 1}),
    )
    assert (await client.get_job("job_1")).status == "pending"
    page = await client.list_jobs(
        status="running", tags=["a", "b"], batch_id="bat", offset=5, limit=1
    )
    assert page.total == 7 and page.has_more and isinstance(page.items[0], Job)
    params = api.requests[-1].url.params
    assert dict(params) == {
        "status": "running",
        "tags": "a,b",
        "batch_id": "bat",
        "offset": "5",
        "limit": "1",
    }
    await client.list_jobs()
    assert dict(api.requests[-1].url.params) == {"offset": "0", "limit": "20"}


async def test_iter_jobs_walks_all_pages(api: FakeAPI, client: ComfyClient) -> None:
    def page(request: httpx.Request) -> httpx.Response:
        offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
        ids = list(range(5))[offset : offset + limit]
        return httpx.Response(
            200,
            json={
                "jobs": [{"id": f"job_{i}", "status": "completed"} for i in ids],
                "total": 5,
                "has_more": offset + limit < 5,
            },
        )

    api.on("GET", "/developer/api/v1/jobs", page)
    seen = [job.id async for job in client.iter_jobs(status="completed", page_size=2)]
    assert seen == [f"job_{i}" for i in range(5)]
    assert [r.url.params["offset"] for r in api.requests] == ["0", "2", "4"]
    assert all(r.url.params["status"] == "completed" for r in api.requests)


async def test_cancel_job(api: FakeAPI, client: ComfyClient) -> None:
    api.on(
        "POST",
        "/developer/api/v1/jobs/job_1/cancel",
        httpx.Response(200, json={**JOB, "status": "cancelled"}),
    )
    assert (await client.cancel_job("job_1")).status == "cancelled"
    assert_authorized(api.requests[0])


async def test_cancel_of_a_finished_job_returns_it(api: FakeAPI, client: ComfyClient) -> None:
    api.on("POST", "/developer/api/v1/jobs/job_1/cancel", err(400, "invalid_request", "terminal"))
    api.on(
        "GET",
        "/developer/api/v1/jobs/job_1",
        httpx.Response(200, json={**JOB, "status": "completed"}),
    )
    assert (await client.cancel_job("job_1")).status == "completed"
    assert len(api.calls("POST", "/developer/api/v1/jobs/job_1/cancel")) == 1


async def test_cancel_400_of_a_live_job_still_raises(api: FakeAPI, client: ComfyClient) -> None:
    api.on("POST", "/developer/api/v1/jobs/job_1/cancel", err(400, "invalid_request"))
    api.on(
        "GET",
        "/developer/api/v1/jobs/job_1",
        httpx.Response(200, json={**JOB, "status": "running"}),
    )
    with pytest.raises(InvalidRequest):
        await client.cancel_job("job_1")


async def test_outputs_validate_and_account(api: FakeAPI, client: ComfyClient) -> None:
    out = {
        "id": "out_1",
        "type": "image",
        "download_url": ORIGIN + "/_storage/x.png",
        "name": "x.png",
    }
    api.on(
        "GET",
        "/developer/api/v1/jobs/job_1/outputs",
        httpx.Response(200, json={"outputs": [out], "total": 1, "has_more": False}),
    )
    api.on(
        "POST",
        "/developer/api/v1/workflows/validate",
        httpx.Response(200, json={"valid": False, "errors": [{"node_id": "1", "message": "bad"}]}),
    )
    api.on(
        "GET", "/developer/api/v1/account", httpx.Response(200, json={"id": "acc", "balance": 3})
    )
    api.on(
        "GET",
        "/developer/api/v1/outputs",
        httpx.Response(200, json={"outputs": [out], "total": 1, "has_more": False}),
    )
    api.on("GET", "/developer/api/v1/outputs/out_1", httpx.Response(200, json=out))
    api.on("DELETE", "/developer/api/v1/outputs/out_1", httpx.Response(204))
    (output,) = await client.job_outputs("job_1")
    assert isinstance(output, Output) and output.name == "x.png"
    validation = await client.validate_workflow(WORKFLOW)
    assert not validation.valid and validation.errors[0]["node_id"] == "1"
    assert json.loads(api.bodies[1]) == {"workflow": WORKFLOW}
    assert (await client.get_account())["balance"] == 3
    page = await client.list_outputs(job_id="job_1", type="image")
    assert dict(api.requests[-1].url.params) == {
        "job_id": "job_1",
        "type": "image",
        "offset": "0",
        "limit": "20",
    }
    assert page.items[0].id == "out_1"
    assert (await client.get_output("out_1")).id == "out_1"
    assert await client.delete_output("out_1") is None
    for request in api.requests:
        assert_authorized(request)


# -- error mapping --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("response", "error", "code"),
    [
        (err(401, "unauthorized"), AuthenticationError, "unauthorized"),
        (err(403, "forbidden"), AuthenticationError, "forbidden"),
        (err(404, "not_found"), NotFound, "not_found"),
        (err(400, "invalid_request"), InvalidRequest, "invalid_request"),
        (err(409, "invalid_request"), InvalidRequest, "invalid_request"),
        (err(422, "validation_error"), InvalidRequest, "validation_error"),
        (err(418, "teapot"), ComfyAPIError, "teapot"),
        (
            httpx.Response(400, json={"error": {"type": "invalid_request", "message": "m"}}),
            InvalidRequest,
            "invalid_request",
        ),
    ],
)
async def test_http_errors_map_to_the_tree_and_are_not_retried(
    api: FakeAPI,
    client: ComfyClient,
    sleeps: Sleeps,
    response: httpx.Response,
    error: type,
    code: str,
) -> None:
    api.on("GET", "/developer/api/v1/jobs/job_1", response)
    with pytest.raises(error) as info:
        await client.get_job("job_1")
    assert info.value.status_code == response.status_code
    assert info.value.error_code == code
    assert len(api.requests) == 1 and sleeps.delays == []


async def test_auth_error_message(api: FakeAPI, client: ComfyClient) -> None:
    api.on("GET", "/developer/api/v1/account", err(401, "unauthorized", f"bad key {KEY}"))
    with pytest.raises(AuthenticationError) as info:
        await client.get_account()
    assert str(info.value) == (
        "Comfy rejected the API key (HTTP 401): check COMFY_API_KEY or the credentials block"
    )


async def test_error_message_details_and_redaction(api: FakeAPI, client: ComfyClient) -> None:
    api.on(
        "GET",
        "/developer/api/v1/jobs/job_1",
        err(400, "invalid_request", f"key Bearer {KEY} is odd", details=[{"field": "x"}]),
    )
    with pytest.raises(InvalidRequest) as info:
        await client.get_job("job_1")
    text = str(info.value)
    assert KEY not in text and "REDACTED" in text
    assert "GET" in text and "/jobs/job_1" in text and "HTTP 400" in text
    assert info.value.details == [{"field": "x"}]


async def test_non_json_error_body(api: FakeAPI, client: ComfyClient) -> None:
    api.on(
        "GET", "/developer/api/v1/jobs/job_1", httpx.Response(400, text="<html>bad gateway</html>")
    )
    with pytest.raises(InvalidRequest, match="bad gateway") as info:
        await client.get_job("job_1")
    assert info.value.error_code is None


async def test_422_on_a_workflow_call_is_invalid_workflow(
    api: FakeAPI, client: ComfyClient
) -> None:
    details = [
        {"node_id": "3", "class_type": "Nope", "message": "unknown node class 'Nope'"},
        {"node_id": 1, "field": "width", "message": "required"},
    ]
    for path in ("/jobs", "/jobs/batch", "/workflows/validate"):
        api.on(
            "POST",
            "/developer/api/v1" + path,
            err(422, "validation_error", "Workflow validation failed", details=details),
        )
    calls = [
        client.create_job(WORKFLOW),
        client.create_batch([{"workflow": WORKFLOW}]),
        client.validate_workflow(WORKFLOW),
    ]
    for call in calls:
        with pytest.raises(InvalidWorkflow) as info:
            await call
        assert info.value.node_errors[0]["node_id"] == "3"
        assert info.value.node_errors[1]["node_id"] == "1"
        assert "node 3 (Nope)" in str(info.value) and "'width'" in str(info.value)
    assert len(api.requests) == 3


async def test_retry_after_seconds_is_honoured(
    api: FakeAPI, client: ComfyClient, sleeps: Sleeps
) -> None:
    api.on(
        "GET",
        "/developer/api/v1/jobs/job_1",
        httpx.Response(
            429,
            headers={"Retry-After": "2"},
            json={"error": {"code": "rate_limited", "message": "slow down"}},
        ),
        httpx.Response(429, headers={"Retry-After": "60"}, json={}),
        httpx.Response(200, json=JOB),
    )
    assert (await client.get_job("job_1")).id == "job_1"
    assert sleeps.delays == [2.0, 5.0]  # the second hint is capped at max_delay


async def test_rate_limited_carries_retry_after_when_budget_is_spent(
    api: FakeAPI, sleeps: Sleeps
) -> None:
    api.on(
        "GET",
        "/developer/api/v1/jobs/job_1",
        httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2065 07:28:00 GMT"}, json={}),
    )
    async with ComfyClient(
        KEY,
        ORIGIN,
        transport=httpx.MockTransport(api),
        retry=RetryPolicy(max_retries=1, sleep=sleeps),
    ) as c:
        with pytest.raises(RateLimited) as info:
            await c.get_job("job_1")
    assert info.value.retry_after is not None and info.value.retry_after > 1e6
    assert len(api.requests) == 2
    assert sleeps.delays == [30.0]


@pytest.mark.parametrize(
    "failure",
    [
        err(500, "internal_error"),
        err(503, None),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("dropped"),
    ],
)
async def test_transient_failure_then_success(
    api: FakeAPI, client: ComfyClient, sleeps: Sleeps, failure: Reply
) -> None:
    api.on("GET", "/developer/api/v1/jobs/job_1", failure, httpx.Response(200, json=JOB))
    assert (await client.get_job("job_1")).id == "job_1"
    assert len(api.requests) == 2 and len(sleeps.delays) == 1


async def test_budget_exhaustion_raises_the_last_error(api: FakeAPI, client: ComfyClient) -> None:
    api.on("GET", "/developer/api/v1/jobs/job_1", err(502, None, "bad gateway"))
    with pytest.raises(ServerError, match="HTTP 502") as info:
        await client.get_job("job_1")
    assert info.value.status_code == 502
    assert len(api.requests) == 4  # one attempt and max_retries=3


async def test_transport_error_message_is_redacted(api: FakeAPI, client: ComfyClient) -> None:
    api.on("GET", "/developer/api/v1/jobs/job_1", httpx.ConnectError(f"refused for {KEY}"))
    with pytest.raises(ComfyTransportError) as info:
        await client.get_job("job_1")
    assert KEY not in str(info.value) and "ConnectError" in str(info.value)


async def test_bodies_that_do_not_fit_are_protocol_errors(
    api: FakeAPI, client: ComfyClient
) -> None:
    api.on("GET", "/developer/api/v1/jobs/job_1", httpx.Response(200, text="not json"))
    with pytest.raises(ComfyProtocolError):
        await client.get_job("job_1")
    api.on("GET", "/developer/api/v1/jobs/job_2", httpx.Response(200, json={"status": "x"}))
    with pytest.raises(ComfyProtocolError):
        await client.get_job("job_2")


async def test_the_key_never_reaches_logs(
    api: FakeAPI, client: ComfyClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="prefect_comfy")
    api.on(
        "POST",
        "/developer/api/v1/jobs",
        httpx.Response(429, headers={"Retry-After": "0"}, json={}),
        httpx.Response(202, json=JOB),
    )
    await client.create_job(WORKFLOW)
    retries = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(retries) == 1
    assert "POST /jobs" in retries[0].getMessage() and "429" in retries[0].getMessage()
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert "Bearer" not in record.getMessage()


async def test_ids_stay_one_path_segment(api: FakeAPI, client: ComfyClient) -> None:
    api.on("GET", "/developer/api/v1/jobs/a/../b", httpx.Response(200, json=JOB))
    await client.get_job("a/../b")
    assert api.requests[0].url.raw_path == b"/developer/api/v1/jobs/a%2F..%2Fb"
