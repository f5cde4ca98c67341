"""Fuzzing the emulator's HTTP routes with hypothesis, over a real socket (issue 11's fuzzing suite).

Every request is made up: a method, a route of the API (or of storage, or none at all), ids that exist
or not, query parameters, JSON that is fine, odd or hostile (deep nesting, NaN, huge numbers, lone
surrogates), multipart bodies whole or broken, raw bytes, an Idempotency-Key or not. What must hold for
each one:

- never a 5xx (no faults are injected here);
- every refusal (4xx) is the wire envelope ``{"error": {"code", "message", "details"?}}``;
- a refused request changes nothing: the account's jobs, inputs and models (read back over the API),
  its outputs and the idempotency records are the same before and after.

``EMULATOR_FUZZ_EXAMPLES`` sets the number of requests (default 300, about 20 s here).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_comfy_emulator import EmulatorConfig, EmulatorServer
from prefect_comfy_emulator.config import API_PREFIX
from tests.support.keys import API_KEY

EXAMPLES = int(os.environ.get("EMULATOR_FUZZ_EXAMPLES", "300"))
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUICK = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fuzz"}},
}  # fmt: skip
ENDPOINTS = [
    ("POST", "/jobs"), ("GET", "/jobs"), ("POST", "/jobs/batch"), ("GET", "/jobs/{id}"),
    ("POST", "/jobs/{id}/cancel"), ("GET", "/jobs/{id}/outputs"), ("GET", "/outputs"),
    ("GET", "/outputs/{id}"), ("DELETE", "/outputs/{id}"), ("GET", "/models/types"),
    ("POST", "/workflows/validate"), ("GET", "/account"),
    ("POST", "/inputs"), ("GET", "/inputs"), ("POST", "/inputs/from-url"),
    ("POST", "/inputs/get-upload-url"), ("GET", "/inputs/{id}"), ("DELETE", "/inputs/{id}"),
    ("POST", "/inputs/{id}/complete"),
    ("POST", "/models"), ("GET", "/models"), ("POST", "/models/from-url"),
    ("POST", "/models/get-upload-url"), ("GET", "/models/{id}"), ("DELETE", "/models/{id}"),
    ("POST", "/models/{id}/complete"),
]  # fmt: skip
V2_ENDPOINTS = [
    ("POST", "/api/v2/jobs"), ("GET", "/api/v2/jobs"), ("GET", "/api/v2/jobs/{id}"),
    ("GET", "/api/v2/jobs/{id}/workflow"), ("POST", "/api/v2/jobs/{id}/cancel"),
    ("POST", "/api/v2/assets"), ("POST", "/api/v2/assets/from-hash"),
    ("HEAD", "/api/v2/assets/by-hash/{id}"), ("GET", "/api/v2/assets/{id}"),
    ("DELETE", "/api/v2/assets/{id}"), ("GET", "/api/v2/assets/{id}/content"),
]  # fmt: skip
"""The v2 face's routes (not the event stream, which stays open while a job runs)."""
ENDPOINTS += V2_ENDPOINTS
"""Every API route with its method; the fuzzer also tries other methods and routes that do not exist."""
ROUTES = [route for _, route in ENDPOINTS] + ["/ws", "/archives", "/{id}", ""]
KNOWN = "KNOWN-ID"
"""Stands for an id the account has, picked when the request is made (strategies must not read
state that changes between runs)."""
QUERY_NAMES = ["offset", "limit", "tags", "status", "batch_id", "job_id", "type", "sig", "x"]
JSON_FIELDS = [
    "workflow", "tags", "jobs", "url", "name", "type", "metadata", "mime_type", "size",
    "display_name", "trained_words", "class_type", "inputs", "x", "hash", "file_path",
    "extra_data", "webhook_url",
]  # fmt: skip


# ---- strategies -------------------------------------------------------------------------------
def json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
        | st.sampled_from(["pending", "lora", "image/png", "http://127.0.0.1:9/x", "a.png"])
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.sampled_from(JSON_FIELDS) | st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )


def plausible_bodies() -> st.SearchStrategy[Any]:
    """Bodies close to valid ones, so that the fuzzer gets past the first checks."""
    workflow = st.just(QUICK) | st.dictionaries(st.text(max_size=3), json_values(), max_size=3)
    return st.fixed_dictionaries(
        {},
        optional={
            "workflow": workflow,
            "tags": st.lists(st.text(max_size=130), max_size=3) | json_values(),
            "jobs": st.lists(st.fixed_dictionaries({"workflow": workflow}), max_size=3),
            # Only loopback or names that cannot resolve: the emulator really downloads from-url.
            "url": st.sampled_from(
                ["http://127.0.0.1:9/a.png", "https://nowhere.invalid/b", "ftp://x"]
            ),
            "name": st.text(max_size=300),
            "type": st.sampled_from(["lora", "checkpoint", "nope"]) | json_values(),
            "mime_type": st.text(max_size=10),
            "size": st.integers(min_value=-5, max_value=2**40) | json_values(),
            "metadata": json_values(),
            "x": json_values(),
            "hash": st.sampled_from(["blake3:" + "0" * 64, "blake3:x", "sha256:1"]),
            "file_path": st.sampled_from(["a.png", "../a", "/abs", ""]) | st.text(max_size=5),
            "extra_data": json_values(),
        },
    )


HOSTILE_JSON = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"workflow": ' + b'{"a": ' * 70 + b"1" + b"}" * 70 + b"}",
    b'{"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": NaN}}}}',
    b'{"size": Infinity, "name": "a", "mime_type": "b"}',
    b'{"size": 1e999, "name": "a", "mime_type": "b"}',
    b'{"name": "\\ud800", "mime_type": "b", "size": 1}',
    b'{"size": ' + b"9" * 5000 + b"}",
    b"\xef\xbb\xbf{}",
    b"\xff\xfe\x00",
    b"",
    b"null",
    b'"a string"',
]


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(
        st.sampled_from(["b0undary", "x", ""]) | st.text("abc-_", min_size=1, max_size=10)
    )
    names = draw(
        st.lists(
            st.sampled_from(
                [
                    "file",
                    "name",
                    "tags",
                    "type",
                    "metadata",
                    "other",
                    "content_type",
                    "file_path",
                    "expected_hash",
                    "expires_in",
                ]
            ),
            max_size=6,
        )
    )
    parts = []
    for name in names:
        filename = draw(
            st.sampled_from(["", '; filename="a.png"', '; filename=""', "; filename=x"])
        )
        data = draw(
            st.binary(max_size=40)
            | st.sampled_from([b"lora", b"a,b", b'{"display_name": "x"}', b"[1]", b"NaN"])
        )
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n'.encode()
            + draw(st.sampled_from([b"", b"Content-Type: image/png\r\n"]))
            + b"\r\n"
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    if draw(st.booleans()):
        body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
    ctype = draw(
        st.sampled_from(
            [f"multipart/form-data; boundary={boundary}", "multipart/form-data", "text/plain"]
        )
    )
    return body, ctype


@st.composite
def sound_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Requests a careful client makes, mixed in so that the account has something to lose."""
    ident = KNOWN
    method, route, body = draw(
        st.sampled_from(
            [
                ("GET", "/jobs", None),
                ("GET", f"/jobs/{ident}", None),
                ("GET", f"/jobs/{ident}/outputs", None),
                ("POST", f"/jobs/{ident}/cancel", None),
                ("POST", "/jobs", {"workflow": QUICK, "tags": ["fuzz"]}),
                ("POST", "/jobs/batch", {"jobs": [{"workflow": QUICK}]}),
                ("POST", "/workflows/validate", {"workflow": QUICK}),
                ("POST", "/inputs/get-upload-url", {"name": "a.png", "mime_type": "image/png", "size": 3}),
                ("GET", "/account", None),
                ("GET", "/outputs", None),
                ("GET", "/models/types", None),
                ("POST", "/api/v2/jobs", {"workflow": QUICK, "metadata": {"fuzz": "1"}}),
                ("GET", f"/api/v2/jobs/{ident}", None),
                ("POST", f"/api/v2/jobs/{ident}/cancel", None),
                ("GET", "/api/v2/jobs", None),
            ]
        )
    )  # fmt: skip
    headers = {**AUTH, "Content-Type": "application/json"}
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(st.sampled_from(["k1", "k2"]) | st.uuids().map(str))
    content = None if body is None else json.dumps(body).encode()
    return {
        "method": method,
        "url": route if route.startswith("/api/v2") else API_PREFIX + route,
        "params": {},
        "headers": headers,
        "content": content,
    }


@st.composite
def fuzzed_requests(draw: st.DrawFn, real_routes: bool) -> dict[str, Any]:
    # Each face is its own branch: one list of all routes let hypothesis's bias towards the first
    # elements leave the v2 face with 4 of 90 requests in one run.
    if real_routes:  # the real method of a real route
        v1 = [e for e in ENDPOINTS if e not in V2_ENDPOINTS]
        method, route = draw(st.sampled_from(V2_ENDPOINTS) | st.sampled_from(v1))
    else:
        method = draw(st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD"]))
        v2 = [r for r in ROUTES if r.startswith("/api/v2")]
        route = draw(st.sampled_from(v2) | st.sampled_from([r for r in ROUTES if r not in v2]))
    ident = draw(
        st.just(KNOWN)
        | st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
    )
    ident = quote(ident, safe="")
    route = route.replace("{id}", ident)
    path = "" if route.startswith("/api/v2") else API_PREFIX
    if not real_routes and path:
        path = draw(st.sampled_from([API_PREFIX, "/_storage/outputs/x", "/_storage/uploads"]))
    path = path + route if path in ("", API_PREFIX) else path + "/" + ident
    query = draw(st.dictionaries(st.sampled_from(QUERY_NAMES), st.text(max_size=12), max_size=3))
    if draw(st.booleans()):
        query[draw(st.sampled_from(["metadata[a]", "metadata", "metadata[]", "cursor"]))] = draw(
            st.text(max_size=6)
        )
    headers = dict(AUTH)
    kind = draw(
        st.sampled_from(
            ["none", "json", "plausible", "plausible", "hostile", "hostile", "multipart", "bytes"]
        )
    )
    content: bytes | None = None
    if kind == "json":
        content = json.dumps(draw(json_values())).encode()
    elif kind == "plausible":
        content = json.dumps(draw(plausible_bodies())).encode()
    elif kind == "hostile":
        content = draw(st.sampled_from(HOSTILE_JSON))
    elif kind == "multipart":
        content, headers["Content-Type"] = draw(multipart_bodies())
    elif kind == "bytes":
        content = draw(st.binary(max_size=64))
    if kind in ("json", "plausible", "hostile"):
        headers["Content-Type"] = "application/json"
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(st.sampled_from(["k1", "k2"]) | st.uuids().map(str))
    return {"method": method, "url": path, "params": query, "headers": headers, "content": content}


# ---- the fuzz test ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    config = EmulatorConfig(
        api_keys=[API_KEY], seed=11, step_duration=0.0, upload_duration=0.0, download_timeout=1.0
    )
    with EmulatorServer(config) as emu:
        yield emu


def account_view(http: httpx.Client, emu: EmulatorServer) -> dict[str, Any]:
    """What a refused request must leave alone, read over the API where the API shows it."""
    view: dict[str, Any] = {}
    for plural in ("jobs", "inputs", "models"):
        answer = http.get(f"/{plural}", params={"limit": 100})
        assert answer.status_code == 200, answer.text[:300]
        body = answer.json()
        view[plural] = (body["total"], sorted(item["id"] for item in body[plural]))
    view["idempotency"] = len(emu.state.idempotency)
    view["assets"] = len(emu.app.state.v2.assets)
    view["outputs"] = set(emu.state.outputs)  # outputs appear as jobs end: compared as a subset
    return view


@pytest.mark.parametrize(
    ("real_routes", "share"), [(True, 0.7), (False, 0.3)], ids=["api-routes", "any-route"]
)
def test_no_request_gets_a_500_and_refusals_change_nothing(
    server: EmulatorServer, real_routes: bool, share: float
) -> None:
    """``api-routes``: the real method of every API route with fuzzed ids, queries and bodies;
    ``any-route``: any method on API, storage and made-up routes."""
    examples = max(10, int(EXAMPLES * share))
    seen: dict[str, int] = {}
    with (
        httpx.Client(base_url=server.url, timeout=20) as raw,
        httpx.Client(base_url=server.api_url, headers=AUTH, timeout=20) as api,
    ):
        known = [api.post("/jobs", json={"workflow": QUICK}).json()["id"]]

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=st.data())
        def one_request(data: st.DataObject) -> None:
            request = data.draw(sound_requests() | fuzzed_requests(real_routes))
            slot = data.draw(st.integers(min_value=0, max_value=10_000))
            request["url"] = request["url"].replace(KNOWN, known[slot % len(known)])
            before = account_view(api, server)
            answer = raw.request(**request)
            status = answer.status_code
            seen[f"{status // 100}xx"] = seen.get(f"{status // 100}xx", 0) + 1
            face = "v2" if request["url"].startswith("/api/v2") else "other"
            seen[face] = seen.get(face, 0) + 1
            assert status < 500, f"{request['method']} {request['url']}: {answer.text[:500]}"
            if status >= 400 and request["method"] != "HEAD":  # a HEAD answer has no body
                error = answer.json()["error"]
                assert isinstance(error["code"], str) and error["code"]
                assert isinstance(error["message"], str) and error["message"]
            if status >= 400:
                after = account_view(api, server)
                assert {k: v for k, v in after.items() if k != "outputs"} == {
                    k: v for k, v in before.items() if k != "outputs"
                }, f"a refused {request['method']} {request['url']} changed the account"
                assert before["outputs"] <= after["outputs"]
            elif status < 300 and request["method"] == "POST" and "id" in (answer.json() or {}):
                known.append(answer.json()["id"])

        one_request()
    # The fuzzer must reach past the first checks, or it proves little.
    assert seen.get("2xx", 0) >= 5 and seen.get("4xx", 0) >= examples // 2, seen
    assert seen.get("v2", 0) >= examples // 10, f"the v2 face must be fuzzed too: {seen}"
