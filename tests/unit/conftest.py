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
