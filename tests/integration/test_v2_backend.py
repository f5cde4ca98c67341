"""The v2 backend against the emulator's Comfy API v2 face, over real sockets."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from prefect_comfy.backends.v2.assets import asset_reference
from prefect_comfy.backends.v2.backend import V2Backend
from prefect_comfy.backends.v2.block import ComfyV2Credentials
from prefect_comfy.exceptions import (
    AuthenticationError,
    ComfyAPIError,
    InvalidRequest,
    InvalidWorkflow,
    RateLimited,
    TooManyStreams,
)
from prefect_comfy_emulator.images import make_png
from tests.support.keys import API_KEY, WRONG_KEY
from tests.support.waiting import scaled
from tests.support.workflows import failing_workflow, slow_workflow, tiny_workflow

UI_GRAPH = {"last_node_id": 2, "nodes": [{"id": 1, "type": "EmptyImage"}], "links": []}


@pytest.fixture
async def backend(emulator):
    async with V2Backend(emulator.v2_url, API_KEY) as b:
        yield b


async def events_of(backend: V2Backend, job_id: str) -> list:
    return [e async for e in backend.job_events(job_id)]


async def test_a_job_completes_streams_progress_and_its_png_downloads(backend, tmp_path: Path):
    job = await backend.submit(slow_workflow(4), tags=["v2-complete"])
    assert job.status in ("pending", "running")
    events = await asyncio.wait_for(events_of(backend, job.id), scaled(20))
    assert events[-1].event == "job.completed"
    assert all(e.event == "job.progress" for e in events[:-1])
    progress = [e.payload["progress"] for e in events[:-1]]
    assert progress and all(0 <= p < 100 for p in progress)
    assert events[-1].payload["outputs"]
    outputs = await backend.outputs(job.id)
    path = await backend.download(outputs[0], tmp_path)
    assert path.read_bytes().startswith(b"\x89PNG")


async def test_a_failed_job_names_node_and_class(backend):
    job = await backend.submit(failing_workflow("broken on purpose"))
    events = await asyncio.wait_for(events_of(backend, job.id), scaled(20))
    end = events[-1]
    assert end.event == "job.failed"
    error = end.payload["error"]
    assert error["node_id"] == "1" and "EmulatorFail" in error["message"]
    assert "broken on purpose" in error["message"]


async def test_a_cancelled_job_ends_cancelled(backend):
    job = await backend.submit(slow_workflow(200))
    stream = backend.job_events(job.id)
    first = await asyncio.wait_for(anext(stream), scaled(10))  # running: a progress snapshot came
    assert first.event == "job.progress"
    acknowledged = await backend.cancel(job.id)
    assert acknowledged.status in ("running", "cancelled")  # canceling is not yet cancelled
    rest = [e async for e in stream]
    assert rest[-1].event == "job.cancelled"
    assert (await backend.get_job(job.id)).status == "cancelled"


async def test_a_bad_graph_names_the_node(backend):
    wf = tiny_workflow()
    wf["2"]["class_type"] = "NoSuchNode"
    with pytest.raises(InvalidWorkflow) as caught:
        await backend.submit(wf)
    assert caught.value.node_errors[0]["node_id"] == "2"
    assert "NoSuchNode" in str(caught.value)
    assert getattr(caught.value, "request_id", "").startswith("req_")


async def test_a_ui_format_graph_says_export_api(backend):
    with pytest.raises(InvalidWorkflow, match=r"Export \(API\)"):
        await backend.submit(UI_GRAPH)


async def test_insufficient_credits_says_what_to_do_and_keeps_the_request_id(backend, emulator):
    emulator.inject_v2_error("insufficient_credits")
    with pytest.raises(ComfyAPIError) as caught:
        await backend.submit(tiny_workflow())
    assert caught.value.status_code == 402
    assert "add credits" in str(caught.value) and "request id req_" in str(caught.value)


async def test_queue_full_is_retried_after_retry_after(backend, emulator):
    emulator.inject_v2_error("queue_full", retry_after=0.05)
    job = await backend.submit(tiny_workflow())
    assert job.id


async def test_deployment_not_ready_beyond_the_budget_is_rate_limited(emulator):
    emulator.inject_v2_error("deployment_not_ready", count=10, retry_after=0.01)
    backend = V2Backend(emulator.v2_url, API_KEY)
    backend.http.retry.max_retries = 1
    async with backend:
        with pytest.raises(RateLimited) as caught:
            await backend.submit(tiny_workflow())
    assert caught.value.error_code == "deployment_not_ready"


async def test_a_wrong_key_is_an_authentication_error_without_the_key(emulator, caplog):
    caplog.set_level(logging.DEBUG)
    async with V2Backend(emulator.v2_url, WRONG_KEY) as backend:
        with pytest.raises(AuthenticationError) as caught:
            await backend.get_job("job_x")
    assert WRONG_KEY not in str(caught.value) + caplog.text + repr(backend)


async def test_a_5xx_after_the_job_was_created_is_one_job(backend, emulator):
    emulator.inject_faults(503, path="/jobs", when="after")
    tag = "v2-once-after-5xx"
    job = await backend.submit(tiny_workflow(), tags=[tag], idempotency_key="key-5xx-once")
    again = await backend.submit(tiny_workflow(), tags=[tag], idempotency_key="key-5xx-once")
    assert again.id == job.id
    listed = await backend._list_jobs({"tag:" + tag: "1"})
    assert [j.id for j in listed] == [job.id]


async def test_a_reused_key_where_listing_answers_501_says_it_cannot_know():
    from prefect_comfy_emulator import EmulatorConfig, EmulatorServer

    config = EmulatorConfig(api_keys=[API_KEY], step_duration=0.01, v2_list_jobs=False)
    with EmulatorServer(config) as emu:
        emu.inject_faults(503, path="/jobs", when="after")
        async with V2Backend(emu.v2_url, API_KEY) as backend:
            with pytest.raises(InvalidRequest, match="cannot list jobs") as caught:
                await backend.submit(tiny_workflow(), idempotency_key="key-501-unknowable")
            assert await backend.unfinished_jobs("any") is None
        assert "No second job was started" in str(caught.value)
        assert sum(emu.stats()["jobs"].values()) == 1  # the lost answer's job, and no other


async def test_unfinished_jobs_by_tag(backend):
    tag = "v2-unfinished"
    job = await backend.submit(slow_workflow(100), tags=[tag])
    try:
        found = await backend.unfinished_jobs(tag)
        assert [j.id for j in found or []] == [job.id]
        assert await backend.unfinished_jobs() is None
    finally:
        await backend.cancel(job.id)


async def test_too_many_streams_is_its_own_error(emulator):
    from prefect_comfy_emulator import EmulatorConfig, EmulatorServer

    config = EmulatorConfig(api_keys=[API_KEY], step_duration=0.01, v2_max_streams=1)
    with EmulatorServer(config) as emu:
        async with V2Backend(emu.v2_url, API_KEY) as backend:
            job = await backend.submit(slow_workflow(100))
            first = backend.job_events(job.id)
            await asyncio.wait_for(anext(first), scaled(10))
            with pytest.raises(TooManyStreams) as caught:
                await anext(backend.job_events(job.id))
            assert caught.value.retry_after == 5
            await first.aclose()
            await backend.cancel(job.id)


async def test_an_uploaded_asset_is_ready_and_used_by_load_image(backend, tmp_path: Path):
    picture = tmp_path / "v2-photo.png"
    picture.write_bytes(make_png(16, 16, b"v2-photo"))
    first = await backend.upload_input(picture)
    assert first.status == "ready" and first.name == "v2-photo.png"
    again = await backend.upload_input(picture)  # by hash: no second upload of the bytes
    assert again.status == "ready" and again.id == first.id
    assert (await backend.get_input(first.id)).status == "ready"
    wf = {
        "1": {
            "class_type": "LoadImage",
            "inputs": {"image": asset_reference(first.id, first.name)},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "v2a"}},
    }
    job = await backend.submit(wf)
    events = await asyncio.wait_for(events_of(backend, job.id), scaled(20))
    assert events[-1].event == "job.completed", events[-1].payload


async def test_the_block_reads_the_v2_environment(monkeypatch, emulator):
    monkeypatch.setenv("COMFY_V2_BASE_URL", emulator.v2_url)
    monkeypatch.setenv("COMFY_V2_API_KEY", API_KEY)
    async with ComfyV2Credentials().get_backend() as backend:
        assert backend.address == emulator.v2_url.rstrip("/")
        job = await backend.submit(tiny_workflow())
        assert (await backend.get_job(job.id)).id == job.id


async def test_progress_events_carry_the_jobs_tags_like_other_backends(emulator, backend):
    """A v2 ``progress`` frame has no metadata: the backend adds the job's tags (from its submit,
    or one read for a job submitted elsewhere), so ``comfy.tag.*`` labels reach Prefect."""
    from prefect_comfy.orchestration.events.names import from_comfy_event

    mine = await backend.submit(slow_workflow(4), tags=["v2-tagged", "x"])
    async with httpx.AsyncClient(
        base_url=emulator.v2_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    ) as http:
        answer = await http.post(
            "/api/v2/jobs",
            json={"workflow": slow_workflow(4), "metadata": {"tag:elsewhere": "1"}},
        )
    assert answer.status_code == 201, answer.text
    for job_id, tags in ((mine.id, ["v2-tagged", "x"]), (answer.json()["id"], ["elsewhere"])):
        async with V2Backend(emulator.v2_url, API_KEY) as fresh:
            events = await asyncio.wait_for(events_of(fresh, job_id), scaled(20))
        progress = [e for e in events if e.event == "job.progress"]
        assert progress
        for event in progress:
            assert sorted(event.payload["tags"]) == sorted(tags)
            resource = from_comfy_event(event, address=backend.address, backend_kind="v2").resource
            assert all(resource.get(f"comfy.tag.{t}") == "true" for t in tags)


async def test_waits_past_the_stream_cap_list_once_a_round_instead_of_reading_each_job():
    """30 waits, 4 streams: the other jobs are followed by one listing of the unfinished jobs a
    round (reading each polled job costs at least 26 reads for the first look alone), and the
    streams go to the jobs that run first (the emulator runs 2 at once, first in first out)."""
    from prefect_comfy.waiting.hub import EventHub
    from prefect_comfy_emulator import EmulatorConfig, EmulatorServer

    config = EmulatorConfig(api_keys=[API_KEY], step_duration=0.01, concurrency=2, v2_max_streams=4)
    with EmulatorServer(config) as emu:
        async with V2Backend(emu.v2_url, API_KEY) as backend:
            jobs = [
                await backend.submit(
                    {"1": {"class_type": "EmulatorSleep", "inputs": {"seconds": 0.1 + i % 3 / 10}}}
                )
                for i in range(30)
            ]
            hub = EventHub(backend.clone(), linger=0.1, max_streams=4)
            try:
                events = await asyncio.wait_for(
                    asyncio.gather(*(hub.wait("job", j.id, timeout=scaled(60)) for j in jobs)),
                    scaled(90),
                )
                stats = hub.stats
            finally:
                await hub.aclose()
        assert [e.event for e in events] == ["job.completed"] * 30
        assert stats["poll_lists"] >= 1
        assert stats["poll_reads"] + stats["poll_list_requests"] < 26, stats
        assert stats["job_streams_refused"] == 0, stats
