"""Reconciler over a counting fake of the Cloud API: it reads the waits or lists the backlog,
whichever costs fewer requests (issue 21 section 1)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import httpx
import pytest

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.waiting.reconcile import Reconciler
from tests.support.waiting import scaled

KEY = "comfyui-reconcile-secret-abcdef"
ORIGIN = "http://127.0.0.1:8765"
PREFIX = "/developer/api/v1"


class CountingAPI:
    """``GET /jobs`` (status filter, offset pages, ``total``) and ``GET /jobs/{id}``, counted.

    ``backlog`` jobs are pending (newest first, as the API lists them), ``running`` are running;
    ``ended`` are completed jobs (readable by id, never in an unfinished listing).
    """

    def __init__(self, backlog: int, running: int = 0, ended: int = 0) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        for i in range(backlog):
            self.jobs[f"p{i}"] = {"id": f"p{i}", "status": "pending"}
        for i in range(running):
            self.jobs[f"r{i}"] = {"id": f"r{i}", "status": "running"}
        for i in range(ended):
            self.jobs[f"e{i}"] = {"id": f"e{i}", "status": "completed"}
        self.lists = 0
        self.reads = 0
        self.listing = 0
        self.most_listing = 0

    @property
    def requests(self) -> int:
        return self.lists + self.reads

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix(PREFIX)
        listing = path == "/jobs"
        self.listing += listing
        self.most_listing = max(self.most_listing, self.listing)
        try:
            await asyncio.sleep(0.001)  # let concurrent requests overlap
            if listing:
                self.lists += 1
                status = request.url.params.get("status")
                offset = int(request.url.params.get("offset", 0))
                limit = int(request.url.params.get("limit", 20))
                matching = [j for j in self.jobs.values() if status in (None, j["status"])]
                page = matching[offset : offset + limit]
                body = {
                    "jobs": page,
                    "total": len(matching),
                    "has_more": offset + len(page) < len(matching),
                }
                return httpx.Response(200, json=body)
            self.reads += 1
            job = self.jobs.get(path.removeprefix("/jobs/"))
            if job is None:
                error = {"code": "not_found", "message": "no such job"}
                return httpx.Response(404, json={"error": error})
            return httpx.Response(200, json=job)
        finally:
            self.listing -= listing


async def reconcile(api: CountingAPI, ids: list[str]) -> dict[str, str]:
    """Reconcile waits on ``ids``; return the status found for each."""
    found: dict[str, str] = {}
    async with CloudBackend(KEY, ORIGIN, transport=httpx.MockTransport(api)) as backend:
        reconciler = Reconciler(
            backend,
            pending=lambda key: key[1] not in found,
            epoch=lambda: 0,
            found=lambda key, resource: found.__setitem__(key[1], resource.status),
            missing=lambda key, exc: found.__setitem__(key[1], "missing"),
            concurrency=16,
        )
        reconciler.submit(("job", jid) for jid in ids)
        await asyncio.wait_for(reconciler.settled(), scaled(30))
    return found


async def test_three_waits_against_ten_thousand_unfinished_jobs_read_the_three() -> None:
    api = CountingAPI(backlog=10_000)
    found = await reconcile(api, ["p5000", "p9000", "p9999"])
    assert found == {"p5000": "pending", "p9000": "pending", "p9999": "pending"}
    assert api.requests <= 5, (api.lists, api.reads)  # one page says the backlog, three reads


@pytest.mark.parametrize(
    ("waits", "backlog"), [(3, 250), (50, 10_000), (150, 10_000), (1_000, 1_000), (100, 120)]
)
async def test_requests_stay_within_the_cheaper_of_reading_and_listing(waits, backlog) -> None:
    api = CountingAPI(backlog=backlog)
    ids = [f"p{backlog - 1 - i}" for i in range(waits)]  # the oldest jobs: on the last pages
    found = await reconcile(api, ids)
    assert found == dict.fromkeys(ids, "pending")
    pages = math.ceil(backlog / 100) + 1  # the pending pages and the (empty) running page
    assert api.requests <= min(waits, pages) + 1, (api.lists, api.reads)


async def test_pages_are_read_concurrently_and_ended_jobs_read_by_id() -> None:
    api = CountingAPI(backlog=2_000, running=3, ended=5)
    ids = [f"p{i}" for i in range(0, 2_000, 2)] + ["r0", "r2"] + [f"e{i}" for i in range(5)]
    ids.append("nowhere")
    found = await reconcile(api, ids)
    assert api.lists == 21 and api.reads == 6  # 20 pending pages, 1 running; 5 ended + 1 unknown
    assert 1 < api.most_listing <= 9  # 8 pending pages at a time, and the running one
    assert found["r2"] == "running" and found["e4"] == "completed"
    assert found["nowhere"] == "missing" and found["p1998"] == "pending"
