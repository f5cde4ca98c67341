"""Settings come from the environment when asked for, never at import time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from prefect_comfy.settings import (
    DEFAULT_BASE_URL,
    ComfySettings,
    environment_value,
    environment_variable,
    variables,
)


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


DOCS = Path(__file__).resolve().parents[2] / "docs"
NOT_SETTINGS = {
    "COMFY_TESTS_TIMEOUT_FACTOR": "the test suite's timeout factor (tests/support/waiting.py)",
    "COMFY_TRIGGER_TAG": "an example flow's own variable (flows/serve_triggers.py)",
}
"""``COMFY_*`` names the docs mention that are not the package's settings."""


def test_the_docs_table_of_environment_variables_is_settings_variables() -> None:
    """docs/blocks.md lists every variable of `variables()`, each with its documentation."""
    text = (DOCS / "blocks.md").read_text()
    section = text[text.index("## Environment variables") :]
    rows = re.findall(r"^\| `(COMFY_[A-Z0-9_]+)` \| [^|]* \| (.*) \|$", section, re.MULTILINE)
    assert dict(rows) == {k: v.replace("|", "/") for k, v in variables().items()}


def test_every_comfy_variable_the_docs_name_is_a_setting() -> None:
    named = set()
    for page in DOCS.rglob("*.md"):
        named |= set(re.findall(r"\bCOMFY_[A-Z0-9_]*[A-Z0-9]\b", page.read_text()))
    assert named - set(variables()) - set(NOT_SETTINGS) == set()


def test_environment_value_takes_the_first_variable_set(monkeypatch) -> None:
    monkeypatch.delenv("COMFY_V2_API_KEY", raising=False)
    monkeypatch.setenv("COMFY_API_KEY", "comfyui-test-key-not-real")
    assert environment_variable("COMFY_V2_API_KEY", "COMFY_API_KEY") == "COMFY_API_KEY"
    assert environment_value("COMFY_V2_API_KEY", "COMFY_API_KEY") == "comfyui-test-key-not-real"
    monkeypatch.setenv("COMFY_V2_API_KEY", "")  # empty counts as unset
    assert environment_value("COMFY_V2_API_KEY") is None
