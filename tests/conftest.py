"""Shared test set-up.

Prefect is pointed at a throw-away home before anything imports it, with analytics off. The emulator
runs once per session on 127.0.0.1 and a free port, in a thread of its own (so sync flows and other
event loops can use it); :func:`emulator` hands it to a test and puts its fault switches back after.
"""

from __future__ import annotations

import os
import signal
import tempfile

_HOME = tempfile.mkdtemp(prefix="prefect-comfy-tests-")
os.environ.setdefault("PREFECT_HOME", _HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL", "0.5")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
for _name in ("COMFY_API_KEY", "COMFY_BASE_URL"):
    os.environ.pop(_name, None)
# A suite started in the background of a non-interactive shell (`make test &`, a CI runner's
# `cmd &`) inherits Ctrl-C ignored, and so would every command it starts: Python then installs no
# KeyboardInterrupt handler, and the tests that press Ctrl-C on a command would test nothing.
# The commands under test get Ctrl-C as a terminal gives it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402

from tests.support.keys import API_KEY, OTHER_KEY  # noqa: E402


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

    from tests.support.waiting import scaled

    with prefect_test_harness(server_startup_timeout=int(scaled(60))):
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


TIERS = {
    "emulator": ("emulator", "_emulator_server"),
    "prefect": ("prefect_api_url",),
    "comfyui": ("comfyui_server",),
    "proxy": ("api_proxy",),
}
"""Marker of each tier, and the session fixtures that put a test in it."""


def _worker_group(item: pytest.Item, comfyui_modules: set[str]) -> str | None:
    """The tests that must share one pytest-xdist worker (``make test`` runs ``--dist loadgroup``).

    Every test on a real ComfyUI shares one: the session starts one ComfyUI (and one proxy) in
    that worker, not one per worker. A module whose tests share a module-scoped fixture (a served
    deployment, a listener process, the docs' working directories) runs in one worker, which sets
    it up once: the ComfyUI worker, if any of its tests needs ComfyUI. Any other test goes wherever
    a worker is free.
    """
    if "comfyui" in item.keywords:
        return "comfyui"
    info = getattr(item, "_fixtureinfo", None)
    module = item.module.__name__ if item.module else None
    for definitions in getattr(info, "name2fixturedefs", {}).values():
        if any(d.scope == "module" for d in definitions):
            return "comfyui" if module in comfyui_modules else module
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks it adds
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tiers, and scale its pytest-timeout by the suite's one factor.

    Tiers: ``unit`` (tests/unit, in-memory seams only), ``emulator``, ``prefect`` (the harness or a
    real server), ``comfyui`` (a real ComfyUI) and ``proxy`` (comfy-api-proxy in front of it):
    ``-m unit`` runs in about two minutes, ``-m "not comfyui"`` skips the real ComfyUI.
    """
    from tests.support.waiting import TIMEOUT_FACTOR

    default = float(config.getini("timeout") or 0)
    for item in items:
        if "/tests/unit/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.unit)
        fixtures = set(getattr(item, "fixturenames", ()))
        for tier, needs in TIERS.items():
            if fixtures.intersection(needs):
                item.add_marker(getattr(pytest.mark, tier))
        if "proxy" in item.keywords and "comfyui" not in item.keywords:
            item.add_marker(pytest.mark.comfyui)  # the proxy runs on a real ComfyUI
        if TIMEOUT_FACTOR != 1:
            marker = item.get_closest_marker("timeout")
            seconds = float(marker.args[0]) if marker and marker.args else default
            if seconds:
                item.add_marker(pytest.mark.timeout(seconds * TIMEOUT_FACTOR), append=False)
    comfyui_modules = {i.module.__name__ for i in items if "comfyui" in i.keywords and i.module}
    for item in items:
        group = _worker_group(item, comfyui_modules)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
