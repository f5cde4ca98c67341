"""The one HTTP session (transport/http.py) as both backends use it: key scope, cleartext, redirects."""

from __future__ import annotations

import httpx
import pytest

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
from prefect_comfy.backends.cloud.rest import ComfyClient
from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.backends.comfyui.block import ComfyUIServer
from prefect_comfy.backends.comfyui.http import COMFYUI_DIALECT, ComfyUIHttp
from prefect_comfy.exceptions import (
    ComfyAPIError,
    ComfyConfigError,
    ComfyProtocolError,
    ServerError,
)
from prefect_comfy.settings import ComfySettings
from prefect_comfy.transport.dialect import Dialect
from prefect_comfy.transport.errors import CLOUD_DIALECT
from prefect_comfy.transport.http import HttpSession
from prefect_comfy.transport.origins import is_loopback
from prefect_comfy.transport.retry import RetryPolicy
from tests.support.rest_fakes import KEY, FakeAPI

INSECURE = "http://comfy.invalid:8188"
"""A plain-http origin that is not this machine (and cannot resolve: nothing leaves the machine)."""


class Recorder:
    def __init__(self, reply: httpx.Response | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.reply = reply or httpx.Response(200, json={"id": "j", "status": "running"})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.reply


def no_retry() -> RetryPolicy:
    async def no_wait(_: float) -> None:
        return None

    return RetryPolicy(max_retries=0, sleep=no_wait)


@pytest.fixture(autouse=True)
def _no_env_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFY_ALLOW_INSECURE_HTTP", raising=False)


# -- item 10: no key in clear to another machine -------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "[::1]", "a.localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(httpx.URL(f"http://{host}:1").host)


@pytest.mark.parametrize("host", ["comfy.invalid", "10.0.0.1", "192.168.1.5", "localhost.evil"])
def test_hosts_that_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


async def test_cloud_client_refuses_to_send_the_key_over_remote_http() -> None:
    server = Recorder()
    async with ComfyClient(KEY, INSECURE, transport=httpx.MockTransport(server)) as client:
        with pytest.raises(ComfyConfigError) as info:
            await client.get_job("j")
    message = str(info.value)
    assert server.requests == []  # refused before anything was sent
    assert KEY not in message and "comfy.invalid" in message
    assert "allow_insecure_http" in message and "COMFY_ALLOW_INSECURE_HTTP" in message
    assert "https://comfy.invalid:8188" in message  # what to use instead


async def test_comfyui_refuses_the_key_over_remote_http_but_not_without_a_key() -> None:
    server = Recorder(httpx.Response(200, json={"queue_running": [], "queue_pending": []}))
    async with ComfyUIBackend(INSECURE, KEY, transport=httpx.MockTransport(server)) as backend:
        with pytest.raises(ComfyConfigError, match="plain http"):
            await backend.http.queue_records()
        with pytest.raises(ComfyConfigError, match="plain http"):
            await backend.http.open_socket(backend.client_id)  # the handshake would carry the token
    assert server.requests == []
    # A self-hosted ComfyUI on the LAN without a key has nothing to leak.
    async with ComfyUIBackend(INSECURE, transport=httpx.MockTransport(server)) as backend:
        assert await backend.http.queue_records() == {}
    assert len(server.requests) == 1


async def test_cloud_event_stream_is_refused_too() -> None:
    backend = CloudBackend(KEY, INSECURE, settings=ComfySettings())
    with pytest.raises(ComfyConfigError, match="plain http"):
        async for _ in backend.events():
            pass
    await backend.aclose()


async def test_opt_in_by_settings_by_env_and_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Recorder()
    transport = httpx.MockTransport(server)
    allowed = ComfySettings(allow_insecure_http=True)
    async with ComfyClient(KEY, INSECURE, settings=allowed, transport=transport) as client:
        await client.get_job("j")
    assert server.requests[-1].headers["Authorization"] == f"Bearer {KEY}"

    monkeypatch.setenv("COMFY_ALLOW_INSECURE_HTTP", "1")
    async with ComfyUIBackend(INSECURE, KEY, transport=transport) as backend:
        await backend.http.call("GET", "/api/queue")
    assert server.requests[-1].headers["X-API-Key"] == KEY
    monkeypatch.delenv("COMFY_ALLOW_INSECURE_HTTP")

    block = ComfyCloudCredentials(api_key=KEY, base_url=INSECURE, allow_insecure_http=True)
    assert block.get_settings().allow_insecure_http is True
    assert ComfyCloudCredentials(api_key=KEY).get_settings().allow_insecure_http is False
    server_block = ComfyUIServer(url=INSECURE, api_key=KEY, allow_insecure_http=True)
    assert server_block.get_backend().settings.allow_insecure_http is True
    refused = ComfyUIServer(url=INSECURE, api_key=KEY).get_backend()
    with pytest.raises(ComfyConfigError):
        await refused.http.open_socket(refused.client_id)


async def test_loopback_and_https_need_no_opt_in() -> None:
    server = Recorder()
    for origin in ("http://127.0.0.1:8765", "http://localhost:8765", "https://comfy.invalid"):
        async with ComfyClient(KEY, origin, transport=httpx.MockTransport(server)) as client:
            await client.get_job("j")
    assert len(server.requests) == 3


# -- item 12: a redirect on an API call, and lists of the wrong shape ----------------------------
async def test_a_rest_redirect_names_the_redirect_and_what_to_do() -> None:
    moved = httpx.Response(
        307, headers={"Location": "https://elsewhere.invalid/developer/api/v1/jobs/j?sig=x"}
    )
    server = Recorder(moved)
    async with ComfyClient(
        KEY, "https://comfy.invalid", transport=httpx.MockTransport(server), retry=no_retry()
    ) as client:
        with pytest.raises(ComfyAPIError) as info:
            await client.get_job("j")
    message = str(info.value)
    assert info.value.status_code == 307 and "redirect" in message
    assert "https://elsewhere.invalid/developer/api/v1/jobs/j" in message and "sig=x" not in message
    assert "base URL" in message and KEY not in message
    assert len(server.requests) == 1  # not followed


async def test_comfyui_rest_redirect_is_refused_but_a_head_probe_accepts_it() -> None:
    moved = httpx.Response(302, headers={"Location": "https://storage.invalid/x.png"})
    server = Recorder(moved)
    async with ComfyUIHttp(
        "https://comfy.invalid", KEY, transport=httpx.MockTransport(server)
    ) as h:
        with pytest.raises(ComfyAPIError, match="redirect"):
            await h.json("GET", "/api/queue", retry=False)
        headers = await h.head("https://comfy.invalid/api/view?filename=x.png")
    assert headers["Location"] == "https://storage.invalid/x.png"


@pytest.mark.parametrize(
    "body",
    [
        {"jobs": 5},
        {"jobs": "many"},
        {"jobs": [], "total": "x"},
        {"jobs": [], "total": -1},
        {"jobs": [], "total": 1.5},
        {"jobs": [], "has_more": "yes"},
        {"jobs": [7]},
        [1, 2, 3],
        "jobs",
    ],
)
async def test_a_list_of_the_wrong_shape_is_a_protocol_error(api: FakeAPI, body: object) -> None:
    api.on("GET", "/developer/api/v1/jobs", httpx.Response(200, json=body))
    async with ComfyClient(
        KEY, "https://comfy.test:8765", transport=httpx.MockTransport(api), retry=no_retry()
    ) as client:
        with pytest.raises(ComfyProtocolError):
            await client.list_jobs()


async def test_a_null_total_counts_the_items(api: FakeAPI) -> None:
    api.on(
        "GET",
        "/developer/api/v1/jobs",
        httpx.Response(200, json={"jobs": [{"id": "a", "status": "running"}], "total": None}),
    )
    async with ComfyClient(
        KEY, "https://comfy.test:8765", transport=httpx.MockTransport(api)
    ) as client:
        page = await client.list_jobs()
    assert page.total == 1 and not page.has_more


@pytest.mark.parametrize(
    ("route", "body"),
    [("/api/queue", [1, 2]), ("/api/queue", {"queue_running": 3}), ("/api/models/x", {"a": 1})],
)
async def test_comfyui_answers_of_the_wrong_shape(route: str, body: object) -> None:
    server = Recorder(httpx.Response(200, json=body))
    async with ComfyUIHttp(
        "https://comfy.invalid", None, transport=httpx.MockTransport(server)
    ) as h:
        with pytest.raises(ComfyProtocolError):
            if route == "/api/queue":
                await h.queue_records()
            else:
                await h.model_files("x")


# -- one session, two dialects ---------------------------------------------------------------------
async def test_both_backends_send_through_one_session_class() -> None:
    cloud = ComfyClient(KEY, "https://comfy.invalid")
    comfyui = ComfyUIBackend("https://comfy.invalid", KEY)
    assert isinstance(cloud, HttpSession) and isinstance(comfyui.http, HttpSession)
    assert cloud.dialect is CLOUD_DIALECT and comfyui.http.dialect is COMFYUI_DIALECT
    assert cloud.key_allowed("https://comfy.invalid/developer/api/v1/jobs")
    assert not cloud.key_allowed("https://comfy.invalid/view")
    assert comfyui.http.key_allowed("https://comfy.invalid/view")
    assert not comfyui.http.key_allowed("https://other.invalid/view")
    await cloud.aclose()
    await comfyui.aclose()


async def test_a_dialect_says_how_its_errors_read_and_which_statuses_retry() -> None:
    """A third kind of server is a Dialect: its error bodies and retryable statuses, as data."""

    def read_error(body: object, reason: str) -> tuple[str | None, str, list]:
        problem = body.get("problem", {}) if isinstance(body, dict) else {}
        return problem.get("kind"), problem.get("text", reason), []

    v2 = Dialect("Comfy v2", "X-V2-Key", retry_statuses=frozenset({503}), read_error=read_error)
    replies = iter(
        [
            httpx.Response(503, json={"problem": {"kind": "busy", "text": "try later"}}),
            httpx.Response(500, json={"problem": {"kind": "bug", "text": "broken"}}),
        ]
    )
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return next(replies)

    async with HttpSession(
        "https://v2.invalid", KEY, v2, transport=httpx.MockTransport(handler), retry=no_retry()
    ) as http:
        with pytest.raises(ServerError, match=r"Comfy v2 error .*\[busy\]: try later"):
            await http.json("GET", "https://v2.invalid/jobs", retry=False)
        with pytest.raises(ComfyAPIError) as info:  # 500 is not in this dialect's retry set
            await http.json("GET", "https://v2.invalid/jobs", retry=False)
    assert not isinstance(info.value, ServerError) and "[bug]: broken" in str(info.value)
    assert sent[0].headers["X-V2-Key"] == KEY
