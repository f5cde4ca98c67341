"""The job block and the shared steps, on the memory server (no sockets, no Prefect server)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any
from urllib.error import URLError

import pytest
from prefect.states import Failed
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
from prefect_comfy.exceptions import (
    InvalidRequest,
    InvalidWorkflow,
    JobCancelled,
    JobFailed,
    JobTimedOut,
    ServerError,
)
from prefect_comfy.orchestration.jobs import ComfyJobResult, ComfyJobRun, ComfyWorkflow
from prefect_comfy.orchestration.tasks import retry_if_retryable, task_run_idempotency_key
from tests.support.memory import MemoryBackend, MemoryServer

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}}}
PNG = b"\x89PNG\r\n\x1a\nfake"


@pytest.fixture
def world(monkeypatch) -> MemoryServer:
    """The memory server every block of a test runs its jobs on (they complete by default)."""
    server = MemoryServer()
    server.output_url = server.address + "/o?api_key=k"
    monkeypatch.setattr(ComfyCloudCredentials, "get_backend", lambda self: MemoryBackend(server))
    return server


def make_block(tmp_path: Path, **fields: Any) -> ComfyWorkflow:
    fields = {
        "credentials": ComfyCloudCredentials(api_key="comfyui-unit-jobs-key"),
        "workflow": GRAPH,
        "tags": ["unit"],
        "emit_events": False,
        "progress_artifact": False,
        "outputs_artifact": False,
        "output_dir": str(tmp_path / "out"),
        **fields,
    }
    return ComfyWorkflow(**fields)


class TestStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[ComfyWorkflow]:
        return ComfyWorkflow

    def test_has_a_valid_image(self, block) -> None:
        try:
            super().test_has_a_valid_image(block)
        except URLError as exc:
            pytest.skip(f"logo not reachable: {exc}")


# -- the job block ------------------------------------------------------------------------------
def test_sync_twins_in_a_plain_thread(tmp_path, world) -> None:
    block = make_block(tmp_path)
    box: dict[str, Any] = {}

    def script() -> None:
        run = block.trigger()
        box["run"] = run
        run.wait_for_completion()
        box["result"] = run.fetch_result()

    thread = threading.Thread(target=script)
    thread.start()
    thread.join(30)
    result = box["result"]
    assert isinstance(box["run"], ComfyJobRun) and box["run"].job.status == "completed"
    assert isinstance(result, ComfyJobResult) and result.job_id == "job_1"
    assert result.outputs[0].path.read_bytes().startswith(b"\x89PNG")
    assert result.outputs[0].url == world.address + "/o?api_key=REDACTED"
    assert result.paths == [result.outputs[0].path]
    assert world.submits == [{"workflow": GRAPH, "tags": ["unit"], "key": None}]


async def test_async_methods_and_dispatch(tmp_path, world) -> None:
    block = make_block(tmp_path, output_dir=None)
    run = await block.trigger(idempotency_key="k-1")  # async code: the plain name gives a coroutine
    result = await run.fetch_result()  # waits first when not waited yet
    assert result.status == "completed" and result.outputs[0].path is None
    run2 = await block.atrigger()
    await run2.await_for_completion()
    assert (await run2.afetch_result()).job_id == "job_2"  # a second job
    assert [s["key"] for s in world.submits] == ["k-1", None]


async def test_sync_twin_forced_inside_a_running_loop(tmp_path, world) -> None:
    run = make_block(tmp_path).trigger(_sync=True)
    assert isinstance(run, ComfyJobRun)
    assert run.fetch_result(_sync=True).status == "completed"


@pytest.mark.parametrize(("outcome", "error"), [("failed", JobFailed), ("cancelled", JobCancelled)])
def test_fetch_result_raises_per_outcome(tmp_path, world, outcome, error) -> None:
    world.outcome = outcome
    run = make_block(tmp_path).trigger()
    run.wait_for_completion()  # a failed or cancelled job is not raised by the wait
    assert run.job.status == outcome
    with pytest.raises(error) as info:
        run.fetch_result()
    if outcome == "failed":
        assert (info.value.error_code, info.value.error_message, info.value.node_id) == (
            "E1",
            "node broke",
            "7",
        )


@pytest.mark.parametrize("cancel_on_timeout", [True, False])
def test_a_timed_out_wait(tmp_path, world, cancel_on_timeout) -> None:
    world.outcome = None  # the job runs on
    run = make_block(tmp_path, timeout=1, cancel_on_timeout=cancel_on_timeout).trigger()
    with pytest.raises(JobTimedOut):
        run.wait_for_completion()
    with pytest.raises(JobTimedOut):
        run.fetch_result()
    assert world.cancels == (["job_1"] if cancel_on_timeout else [])


def test_cancel(tmp_path, world) -> None:
    world.outcome = None  # still running when it is cancelled
    run = make_block(tmp_path).trigger()
    assert run.cancel().status == "cancelled"
    assert world.cancels == ["job_1"] and run.job.status == "cancelled"
    assert "job_1" in repr(run)


def test_a_bad_workflow_fails_before_any_request(tmp_path, world) -> None:
    with pytest.raises(InvalidWorkflow):
        make_block(tmp_path, workflow={"1": "not a node"}).trigger()
    assert world.submits == []


def test_the_block_reads_a_workflow_file(tmp_path, world) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(GRAPH))
    make_block(tmp_path, workflow=str(path)).trigger()
    assert world.submits[0]["workflow"] == GRAPH


# -- task helpers -------------------------------------------------------------------------------
def test_retry_condition_follows_is_retryable() -> None:
    assert retry_if_retryable(None, None, Failed(data=ServerError("x", status_code=500)))
    assert not retry_if_retryable(None, None, Failed(data=InvalidRequest("x", status_code=400)))
    assert not retry_if_retryable(None, None, Failed(data=JobFailed("job_1")))


def test_no_idempotency_key_outside_a_task_run() -> None:
    assert task_run_idempotency_key("submit") is None


def test_dispatch_returns_a_coroutine_in_async_code(tmp_path, world) -> None:
    async def main() -> Any:
        coro = make_block(tmp_path).trigger()
        assert asyncio.iscoroutine(coro)
        return await coro

    assert isinstance(asyncio.run(main()), ComfyJobRun)


# -- the package's exports ------------------------------------------------------------------------
PUBLIC_NAMES = {
    "AuthenticationError", "CloudBackend", "ComfyAPIError", "ComfyBackend", "ComfyClient",
    "ComfyCloudCredentials", "ComfyConfigError", "ComfyError", "ComfyEvent", "ComfyJobResult",
    "ComfyJobRun", "ComfyOutputFile", "ComfyProtocolError", "ComfySettings", "ComfyTransportError",
    "ComfyUIBackend", "ComfyUIServer", "ComfyWebSocket", "ComfyWorkflow", "Input", "InvalidRequest",
    "InvalidWorkflow", "Job", "JobCancelled", "JobFailed", "JobTimedOut", "Model", "NotFound",
    "OutcomeError", "Output", "RateLimited", "ResourceError", "ServerError", "UploadFailed",
    "WaitTimedOut", "WebSocketAuthError", "WebSocketConnectionError", "WebSocketError",
    "cancel_comfy_job", "cancel_comfy_job_hook", "download_comfy_outputs", "get_comfy_job",
    "is_retryable", "run_comfy_workflow", "submit_comfy_job", "upload_comfy_input",
    "upload_comfy_model", "wait_for_comfy_input", "wait_for_comfy_job", "wait_for_comfy_model",
    "wait_for_input_ready", "wait_for_job", "wait_for_model_ready",
}  # fmt: skip
"""Every name users imported from ``prefect_comfy`` before the package was reorganised."""


def test_every_export_resolves() -> None:
    import prefect_comfy

    assert set(prefect_comfy.__all__) >= PUBLIC_NAMES
    for name in prefect_comfy.__all__:
        assert getattr(prefect_comfy, name) is not None, name
    assert prefect_comfy.ComfyWorkflow is ComfyWorkflow


def test_the_package_defines_exactly_its_four_block_types() -> None:
    # In a fresh interpreter: what importing the module of the `prefect.collections` entry point
    # (pyproject.toml) puts in Prefect's block registry, which a Prefect server loading the package
    # as a collection registers (no JobBlock[...]).
    import subprocess
    import sys
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    module = pyproject["project"]["entry-points"]["prefect.collections"]["prefect_comfy"]
    code = (
        f"import {module}\n"
        "from prefect.blocks.core import Block\n"
        "from prefect.utilities.dispatch import get_registry_for_type\n"
        "print(sorted(slug for slug, cls in get_registry_for_type(Block).items()\n"
        "             if cls.__module__.startswith('prefect_comfy')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True
    ).stdout
    assert out.strip() == str(
        ["comfy-cloud-credentials", "comfy-v2-credentials", "comfy-workflow", "comfyui-server"]
    )


def test_importing_the_package_imports_no_prefect_until_a_name_is_used() -> None:
    import subprocess
    import sys

    code = (
        "import sys, prefect_comfy\n"
        "print('prefect' in sys.modules, set(prefect_comfy.__all__) <= set(dir(prefect_comfy)))\n"
        "prefect_comfy.ComfyWorkflow\n"
        "print('prefect' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True
    ).stdout
    assert out.split() == ["False", "True", "True"]
