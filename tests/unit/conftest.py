"""Fixtures shared by the unit tests of the REST client (test_rest.py, test_transfer.py)."""

from __future__ import annotations

import httpx
import pytest

from prefect_comfy.backends.cloud.rest import ComfyClient
from prefect_comfy.transport.retry import RetryPolicy
from tests.support.rest_fakes import KEY, ORIGIN, FakeAPI, Sleeps


@pytest.fixture
def api() -> FakeAPI:
    """The fake developer API behind the client's MockTransport."""
    return FakeAPI()


@pytest.fixture
def sleeps() -> Sleeps:
    """Records the client's retry pauses instead of sleeping."""
    return Sleeps()


@pytest.fixture
async def client(api: FakeAPI, sleeps: Sleeps):
    """A ComfyClient on the fake API, with a retry budget of 3 and recorded pauses."""
    c = ComfyClient(
        KEY,
        ORIGIN,
        transport=httpx.MockTransport(api),
        retry=RetryPolicy(max_retries=3, max_delay=5.0, sleep=sleeps),
    )
    yield c
    await c.aclose()


@pytest.fixture
def scripted_waits(monkeypatch):
    """Waits answered by the fake backend's own ``wait_for_job``/``wait_for_input``/``wait_for_model``.

    The Prefect layer waits through :mod:`prefect_comfy.waiting` (the backend interface no longer
    has wait methods); unit tests of that layer script the outcome on their fake backend instead.
    """
    from prefect_comfy.orchestration import sensor as watching

    async def wait_for(backend, kind, resource_id, *, timeout=None, on_progress=None, **_):
        if kind == "job":
            return await backend.wait_for_job(resource_id, timeout=timeout, on_progress=on_progress)
        return await getattr(backend, f"wait_for_{kind}")(resource_id, timeout=timeout)

    async def wait_for_input(backend, input_id, *, timeout=None):
        return await backend.wait_for_input(input_id, timeout=timeout)

    async def wait_for_model(backend, model_id, *, timeout=None):
        return await backend.wait_for_model(model_id, timeout=timeout)

    monkeypatch.setattr(watching, "wait_for", wait_for)
    monkeypatch.setattr(watching, "wait_for_input", wait_for_input)
    monkeypatch.setattr(watching, "wait_for_model", wait_for_model)
