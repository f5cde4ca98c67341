"""The official v2 client, ``comfy-sdk`` 0.5.0, against the emulator's v2 face (issue 9): it runs
a workflow, uploads an asset, reads its errors and waits on ``Job.events()``. The emulator is faithful
where the real client cannot tell it apart from a real server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import comfy_sdk
import pytest
from comfy_sdk import exceptions as sdk_errors
from comfy_sdk.events import OutputReady, Progress, StatusChange

from prefect_comfy_emulator import EmulatorConfig, EmulatorServer
from prefect_comfy_emulator.images import make_png, png_size
from tests.support.keys import API_KEY, WRONG_KEY

QUICK = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 24, "height": 16, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "sdk"}},
}  # fmt: skip
SLOW = {
    **QUICK,
    "3": {"class_type": "EmulatorSleep", "inputs": {"seconds": 0.4, "images": ["1", 0]}},
}


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    config = EmulatorConfig(api_keys=[API_KEY], seed=21, step_duration=0.01, upload_duration=0.0)
    with EmulatorServer(config) as emu:
        yield emu


@pytest.fixture
def comfy(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[comfy_sdk.Comfy]:
    monkeypatch.setenv("COMFY_BASE_URL", server.v2_url)  # the client reads its base URL only here
    client = comfy_sdk.Comfy(api_key=API_KEY)
    try:
        yield client
    finally:
        client.close()
        server.reset_faults()


def graph(comfy: comfy_sdk.Comfy, nodes: dict[str, Any]) -> Any:
    return comfy.workflows.from_json(nodes)


def test_runs_a_workflow_and_downloads_its_output(server, comfy) -> None:
    job = comfy.run(graph(comfy, QUICK))
    assert job.status == "succeeded"
    [output] = job.outputs
    assert output.node_id == "2" and output.name.startswith("sdk_") and output.type == "image"
    assert png_size(output.to_bytes()) == (24, 16)
    url = output.get_download_url()
    assert url.url.startswith(server.storage_origin + "/_storage/"), "a 302 to signed storage"
    assert comfy.jobs.get(job.id).status == "succeeded"


def test_uploads_an_asset_and_a_workflow_uses_it(server, comfy) -> None:
    png = make_png(30, 20, uuid.uuid4().bytes)
    asset = comfy.assets.from_bytes(png, filename="photo.png", content_type="image/png")
    workflow = graph(
        comfy,
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder"}},
            "2": {
                "class_type": "SaveImage",
                "inputs": {"images": ["1", 0], "filename_prefix": "in"},
            },
        },
    )
    workflow.set_input("1", "image", asset)
    job = comfy.run(workflow)
    assert png_size(job.outputs[0].to_bytes()) == (30, 20)
    assets_before = server.v2_stats()["assets"]
    # The same bytes again: HEAD by-hash finds them, from-hash mints without an upload.
    again = comfy.assets.from_bytes(png, filename="photo.png", content_type="image/png")
    assert again.commit() == asset.commit(), "an identical reference is returned as it is"
    other_name = comfy.assets.from_bytes(png, filename="other.png", content_type="image/png")
    assert other_name.commit() != asset.commit()
    assert server.v2_stats()["assets"] == assets_before + 1


def test_reads_the_errors(server, comfy, monkeypatch) -> None:
    with pytest.raises(sdk_errors.InvalidWorkflow) as invalid:
        comfy.submit(graph(comfy, {"1": {"class_type": "NoSuchNode", "inputs": {}}}))
    assert invalid.value.code == "invalid_workflow" and invalid.value.http_status == 422
    assert invalid.value.request_id and "NoSuchNode" in str(invalid.value)
    with pytest.raises(sdk_errors.WorkflowFormatUi):
        comfy.submit(graph(comfy, {"nodes": [], "links": []}))  # past the client's own check
    key = str(uuid.uuid4())
    comfy.submit(graph(comfy, QUICK), idempotency_key=key)
    with pytest.raises(sdk_errors.IdempotencyKeyReuse):
        comfy.submit(graph(comfy, QUICK), idempotency_key=key)
    with pytest.raises(sdk_errors.NotFound):
        comfy.jobs.get("job_does_not_exist")
    ref = {"__type": "core/ASSET", "info": {"id": str(uuid.uuid4())}}
    with pytest.raises(sdk_errors.MissingAsset):
        comfy.submit(
            graph(
                comfy,
                {
                    "1": {"class_type": "LoadImage", "inputs": {"image": ref}},
                    "2": {
                        "class_type": "SaveImage",
                        "inputs": {"images": ["1", 0], "filename_prefix": "m"},
                    },
                },
            )
        )
    server.inject_v2_error("insufficient_credits")
    with pytest.raises(sdk_errors.ComfyError) as credits:
        comfy.submit(graph(comfy, QUICK))
    assert credits.value.code == "insufficient_credits" and credits.value.http_status == 402
    # A queue_full with Retry-After is retried by the client (at least 1 s later), then succeeds.
    server.inject_v2_error("queue_full", retry_after=0)
    assert comfy.submit(graph(comfy, QUICK)).status == "queued"
    monkeypatch.setenv("COMFY_BASE_URL", server.v2_url)
    with (
        comfy_sdk.Comfy(api_key=WRONG_KEY) as stranger,
        pytest.raises(sdk_errors.ComfyError) as auth,
    ):
        stranger.jobs.get("job_x")
    assert auth.value.code == "unauthorized" and WRONG_KEY not in str(auth.value)


def test_waits_on_job_events(server, comfy) -> None:
    job = comfy.submit(graph(comfy, SLOW))
    events = list(job.events())
    progress = [e.value for e in events if isinstance(e, Progress)]
    assert progress and progress == sorted(progress) and progress[-1] == 1.0
    outputs = [e.output for e in events if isinstance(e, OutputReady)]
    assert [o.node_id for o in outputs] == ["2"] and png_size(outputs[0].to_bytes()) == (24, 16)
    assert isinstance(events[-1], StatusChange) and events[-1].status == "succeeded"
    assert server.v2_stats()["streams_open"] == 0


def test_events_of_a_cancelled_job_end_canceled(server, comfy) -> None:
    job = comfy.submit(
        graph(comfy, {"1": {"class_type": "EmulatorSleep", "inputs": {"seconds": 30}}})
    )
    answered, streamed = None, []
    for event in job.events():
        if isinstance(event, Progress) and answered is None:
            answered = job.cancel().status
        if isinstance(event, StatusChange):
            streamed.append(event.status)
    assert answered == "canceling"
    assert streamed[-2:] == ["canceling", "canceled"]


def test_lists_jobs_by_metadata(comfy) -> None:
    label = uuid.uuid4().hex
    ids = {comfy.submit(graph(comfy, QUICK), metadata={"run": label}).id for _ in range(3)}
    found = list(comfy.list_jobs(metadata={"run": label}, limit=2))
    assert {s.id for s in found} == ids and all(s.metadata == {"run": label} for s in found)
    assert all(s.create_time is not None for s in found)


async def test_the_async_client_waits_on_events(server, monkeypatch) -> None:
    monkeypatch.setenv("COMFY_BASE_URL", server.v2_url)
    async with comfy_sdk.AsyncComfy(api_key=API_KEY) as comfy:
        job = await comfy.submit(comfy.workflows.from_json(SLOW))
        events = [event async for event in job.events()]
        assert isinstance(events[-1], StatusChange) and events[-1].status == "succeeded"
        assert any(isinstance(e, Progress) for e in events)
        assert (await job.refresh()).status == "succeeded"
