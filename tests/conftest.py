"""Shared test set-up.

Prefect is pointed at a throw-away home before anything imports it, with analytics off. The emulator
runs once per session on 127.0.0.1 and a free port, in a thread of its own (so sync flows and other
event loops can use it); :func:`emulator` hands it to a test and puts its fault switches back after.
"""

from __future__ import annotations

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="prefect-comfy-tests-")
os.environ.setdefault("PREFECT_HOME", _HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL", "0.5")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
for _name in ("COMFY_API_KEY", "COMFY_BASE_URL"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402

API_KEY = "comfyui-test-key-not-real"
"""The key the emulator accepts in tests (an obvious placeholder, never a real key)."""
OTHER_KEY = "comfyui-second-test-key"
"""A second accepted key, for tests of per-credentials sharing."""
WRONG_KEY = "comfyui-wrong-key-for-tests"
"""A key the emulator refuses."""


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def _emulator_server():
    from prefect_comfy_emulator import EmulatorConfig, EmulatorServer

    config = EmulatorConfig(
        api_keys=[API_KEY, OTHER_KEY],
        seed=1234,
        step_duration=0.01,
        upload_duration=0.02,
    )
    with EmulatorServer(config) as server:
        yield server


@pytest.fixture
def emulator(_emulator_server):
    """The session's emulator; its fault switches (429/5xx, pause, duplicates) are reset after the test."""
    yield _emulator_server
    _emulator_server.reset_faults()


@pytest.fixture(scope="session")
def prefect_api_url():
    """A real Prefect server (the test harness, SQLite, with the trigger service), once per session.

    Yields its API URL, which is also exported as ``PREFECT_API_URL`` so that subprocesses (a served
    deployment, the listener) reach the same server.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    # 60 s by default; a machine shared by many test runs may need more (load average above 10).
    startup = int(os.environ.get("PREFECT_COMFY_TEST_SERVER_STARTUP_S", "60"))
    with prefect_test_harness(server_startup_timeout=startup):
        url = PREFECT_API_URL.value()
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        try:
            with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                yield url
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
