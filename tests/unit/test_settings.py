"""Settings come from the environment when asked for, never at import time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from prefect_comfy.settings import DEFAULT_BASE_URL, ComfySettings


def test_defaults(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("COMFY_API_KEY", raising=False)
    monkeypatch.delenv("COMFY_BASE_URL", raising=False)
    settings = ComfySettings()
    assert settings.api_key is None
    assert settings.base_url == DEFAULT_BASE_URL
    assert settings.api_url == "https://cloud.comfy.org/developer/api/v1"
    assert settings.ws_auth == "header"


def test_environment_is_read_at_construction(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COMFY_API_KEY", "comfyui-test-key-not-real")
    monkeypatch.setenv("COMFY_BASE_URL", "http://127.0.0.1:8765/developer/api/v1/")
    monkeypatch.setenv("COMFY_MAX_RETRIES", "0")
    settings = ComfySettings()
    assert settings.base_url == "http://127.0.0.1:8765"
    assert settings.max_retries == 0
    assert "comfyui-test-key-not-real" not in repr(settings)
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "comfyui-test-key-not-real"


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COMFY_WS_AUTH", "cookie")
    with pytest.raises(ValidationError):
        ComfySettings()


def test_import_reads_no_environment():
    """Importing the package (and its client) must not read, so not fail on, a bad setting."""
    code = (
        "import prefect_comfy, prefect_comfy.settings, prefect_comfy.backends.cloud.rest, "
        "prefect_comfy.backends.cloud.backend; print('imported')"
    )
    env = {**os.environ, "COMFY_REQUEST_TIMEOUT": "not a number", "COMFY_WS_AUTH": "cookie"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"
