"""ComfyClient against the emulator over real sockets: jobs, downloads, faults, uploads, pagination."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.backends.cloud.rest import ComfyClient
from prefect_comfy.exceptions import AuthenticationError, InvalidWorkflow, NotFound, ServerError
from prefect_comfy.models import Job
from prefect_comfy.transport.retry import RetryPolicy
from tests.support.keys import API_KEY, WRONG_KEY
from tests.support.waiting import eventually
from tests.support.workflows import failing_workflow, tiny_workflow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class RecordingSleep:
    """A real (short) sleep that remembers each pause, so tests can check the hints were used."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(delay)


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
async def client(emulator, sleeps: RecordingSleep):
    retry = RetryPolicy(max_retries=3, max_delay=0.5, initial_delay=0.01, sleep=sleeps)
    async with ComfyClient(API_KEY, emulator.url, retry=retry) as c:
        yield c


def tag() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def finished(client: ComfyClient, job_id: str) -> Job:
    async def probe() -> Job | None:
        job = await client.get_job(job_id)
        return job if job.is_terminal else None

    return await eventually(probe, timeout=15, message=f"job {job_id} to finish")


async def test_job_runs_and_its_png_downloads(client: ComfyClient, tmp_path: Path) -> None:
    job = await client.create_job(tiny_workflow(), tags=["rest-it"])
    assert job.status in ("pending", "running", "completed")
    done = await finished(client, job.id)
    assert done.status == "completed", done.error
    outputs = await client.job_outputs(job.id)
    assert outputs and outputs[0].type == "image"
    # The emulator's storage answers 400 to a request that carries Authorization.
    path = await client.download(outputs[0], tmp_path)
    assert path.parent == tmp_path and path.read_bytes().startswith(PNG_SIGNATURE)
    again = await client.download(outputs[0].download_url or "", tmp_path / "copy.png")
    assert again.read_bytes() == path.read_bytes()
    # Cancelling a finished job is not an error: the job comes back as it is.
    assert (await client.cancel_job(job.id)).status == "completed"


async def test_failed_job_reports_its_error(client: ComfyClient) -> None:
    job = await client.create_job(failing_workflow("it broke"))
    done = await finished(client, job.id)
    assert done.status == "failed"
    assert done.error is not None and "it broke" in (done.error.message or "")


async def test_wrong_key_is_an_authentication_error(emulator) -> None:
    async with ComfyClient(WRONG_KEY, emulator.url, max_retries=0) as c:
        with pytest.raises(AuthenticationError) as info:
            await c.list_jobs()
    assert info.value.status_code == 401
    assert WRONG_KEY not in str(info.value) and WRONG_KEY not in repr(info.value)


async def test_unknown_job_is_not_found(client: ComfyClient) -> None:
    with pytest.raises(NotFound):
        await client.get_job("job_does_not_exist")


async def test_429_with_retry_after_then_success(
    emulator, client: ComfyClient, sleeps: RecordingSleep
) -> None:
    emulator.inject_faults(status=429, count=2, retry_after=0.05)
    page = await client.list_jobs(limit=1)
    assert page.total >= 0
    assert sleeps.delays == [0.05, 0.05]


async def test_500_then_success(emulator, client: ComfyClient, sleeps: RecordingSleep) -> None:
    emulator.inject_faults(status=500, count=1)
    await client.list_jobs(limit=1)
    assert len(sleeps.delays) == 1


async def test_budget_exhaustion_raises_server_error(emulator, client: ComfyClient) -> None:
    emulator.inject_faults(status=503, count=10)
    with pytest.raises(ServerError) as info:
        await client.list_jobs(limit=1)
    assert info.value.status_code == 503


async def test_retry_after_a_lost_answer_replays_the_same_job(
    emulator, client: ComfyClient, sleeps: RecordingSleep
) -> None:
    label = tag()
    # The job is created, then the answer is replaced by a 500: the retry must not make a second.
    emulator.inject_faults(status=500, count=1, when="after")
    job = await client.create_job(tiny_workflow(), tags=[label])
    assert len(sleeps.delays) == 1
    page = await client.list_jobs(tags=[label])
    assert page.total == 1 and [j.id for j in page.items] == [job.id]


async def test_explicit_idempotency_key_replays(client: ComfyClient) -> None:
    label, key = tag(), str(uuid.uuid4())
    first = await client.create_job(tiny_workflow(), tags=[label], idempotency_key=key)
    second = await client.create_job(tiny_workflow(), tags=[label], idempotency_key=key)
    assert first.id == second.id
    assert (await client.list_jobs(tags=[label])).total == 1


async def test_invalid_workflow_names_the_node(client: ComfyClient) -> None:
    workflow = tiny_workflow()
    workflow["3"] = {"class_type": "NoSuchNodeClass", "inputs": {}}
    with pytest.raises(InvalidWorkflow) as info:
        await client.create_job(workflow)
    assert any(e.get("node_id") == "3" for e in info.value.node_errors)
    assert "NoSuchNodeClass" in str(info.value)
    result = await client.validate_workflow(workflow)
    assert not result.valid and any(e.get("node_id") == "3" for e in result.errors)
    assert (await client.validate_workflow(tiny_workflow())).valid


async def test_batch_shares_a_batch_id(client: ComfyClient) -> None:
    batch = await client.create_batch([{"workflow": tiny_workflow()} for _ in range(3)])
    assert len(batch.jobs) == 3
    page = await client.list_jobs(batch_id=batch.batch_id)
    assert page.total == 3


async def test_upload_input_becomes_ready(client: ComfyClient, tmp_path: Path) -> None:
    path = tmp_path / f"{tag()}.png"
    path.write_bytes(PNG_SIGNATURE + b"\x00" * 64)
    created = await client.upload_input(path, tags=["it"])
    assert created.name == path.name

    async def ready():
        current = await client.get_input(created.id)
        return current if current.is_terminal else None

    done = await eventually(ready, timeout=10, message="input ready")
    assert done.status == "ready" and "it" in done.tags
    assert created.id in [i.id async for i in client.iter_inputs(tags=["it"])]
    await client.delete_input(created.id)
    with pytest.raises(NotFound):
        await client.get_input(created.id)


async def test_presigned_input_upload(client: ComfyClient) -> None:
    name = f"{tag()}.png"
    created = await client.upload_input_presigned(PNG_SIGNATURE + b"\x01" * 32, name=name)
    assert created.name == name

    async def ready():
        current = await client.get_input(created.id)
        return current if current.is_terminal else None

    assert (await eventually(ready, timeout=10, message="presigned input")).status == "ready"


async def test_model_upload_with_type(client: ComfyClient) -> None:
    assert "lora" in await client.model_types()
    name = f"{tag()}.safetensors"
    created = await client.upload_model(
        b"not really weights", type="lora", name=name, metadata={"base_model": "sd15"}
    )
    assert created.type == "lora" and created.name == name

    async def ready():
        current = await client.get_model(created.id)
        return current if current.is_terminal else None

    assert (await eventually(ready, timeout=10, message="model ready")).status == "ready"
    page = await client.list_models(type="lora")
    assert any(m.id == created.id for m in page.items) or page.has_more


async def test_presigned_model_upload(client: ComfyClient) -> None:
    name = f"{tag()}.safetensors"
    created = await client.upload_model_presigned(b"weights" * 10, name=name, type="vae")
    assert created.type == "vae"


async def test_pagination_with_iter_jobs(client: ComfyClient) -> None:
    label = tag()
    ids = [(await client.create_job(tiny_workflow(), tags=[label])).id for _ in range(5)]
    page = await client.list_jobs(tags=[label], limit=2)
    assert page.total == 5 and page.has_more and len(page.items) == 2
    seen = [job.id async for job in client.iter_jobs(tags=[label], page_size=2)]
    assert sorted(seen) == sorted(ids)


async def test_cloud_backend_against_the_emulator(emulator, tmp_path: Path) -> None:
    async with CloudBackend(API_KEY, emulator.url) as backend:
        assert backend.address == emulator.url
        job = await backend.submit(tiny_workflow())

        async def done():
            current = await backend.get_job(job.id)
            return current if current.is_terminal else None

        assert (await eventually(done, timeout=15)).status == "completed"
        (output, *_) = await backend.outputs(job.id)
        path = await backend.download(output, tmp_path)
        assert path.read_bytes().startswith(PNG_SIGNATURE)
