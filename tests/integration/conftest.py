"""Fixtures for integration tests against a real ComfyUI (only ComfyUI fixtures live here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.comfyui_server import (
    RunningComfyUI,
    add_checkpoint,
    ensure_comfyui,
    ensure_test_checkpoint,
    running_comfyui,
)

PREVIEW_METHOD = "latent2rgb"
"""How the session's ComfyUI makes live previews while it samples (binary WebSocket frames)."""


@pytest.fixture(scope="session")
def comfyui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningComfyUI]:
    """One real ComfyUI 0.3.75 per test session, installed first if needed.

    An install that cannot be done FAILS the tests with the installer's message (never a skip).
    Started with :data:`PREVIEW_METHOD`: only samplers make previews (a model-free job costs nothing
    more), and latent2rgb needs no model file.
    """
    install = ensure_comfyui()
    args = ("--preview-method", PREVIEW_METHOD)
    with running_comfyui(install, tmp_path_factory.mktemp("comfyui"), extra_args=args) as server:
        yield server


@pytest.fixture(scope="session")
def api_proxy(comfyui_server: RunningComfyUI, tmp_path_factory: pytest.TempPathFactory):
    """comfy-api-proxy 0.1.6 (Comfy API v2) in front of the session's real ComfyUI, with a token."""
    from tests.support.api_proxy import running_proxy

    with running_proxy(comfyui_server, tmp_path_factory.mktemp("api-proxy")) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def test_checkpoint(comfyui_server: RunningComfyUI) -> str:
    """The random-weight SD1.5-style checkpoint, built once into the cache (by
    ``scripts/build-test-checkpoint.py``) and linked into the session's ComfyUI; its ``ckpt_name``.

    A build that fails FAILS the tests that need it, with the script's output.
    """
    return add_checkpoint(comfyui_server, ensure_test_checkpoint(comfyui_server.install))
