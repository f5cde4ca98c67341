"""prefect-comfy: orchestrate ComfyUI and Comfy Cloud image generation from Prefect.

Names are imported when first used, so ``import prefect_comfy`` is fast and the SDK part
(``ComfyClient``, ``ComfyWebSocket``, ``wait_for_job`` …) works without importing Prefect. The
Prefect part: the blocks ``ComfyCloudCredentials`` and ``ComfyWorkflow``, the tasks
(``submit_comfy_job``, ``wait_for_comfy_job`` …) and the flow ``run_comfy_workflow``.

When Prefect is already imported (Prefect loading this package as a collection, or a flow module
that imports Prefect first), the blocks are defined at once, so that Prefect's block registry sees
them.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from prefect_comfy import exceptions as _exceptions  # small, imports nothing: the names, once

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # configuration and errors
    "ComfySettings": "prefect_comfy.settings",
    **dict.fromkeys(_exceptions.__all__, "prefect_comfy.exceptions"),
    # wire models
    **{
        name: "prefect_comfy.models"
        for name in ("ComfyEvent", "Input", "Job", "Model", "Output", "ResourceError")
    },
    # the SDK: REST, the event stream, waiting, backends
    "ComfyClient": "prefect_comfy.backends.cloud.rest",
    "ComfyWebSocket": "prefect_comfy.backends.cloud.ws",
    "wait_for_job": "prefect_comfy.waiting.waiters",
    "wait_for_input_ready": "prefect_comfy.waiting.waiters",
    "wait_for_model_ready": "prefect_comfy.waiting.waiters",
    **dict.fromkeys(
        ("wait_for", "wait_for_input", "wait_for_model"), "prefect_comfy.waiting.waits"
    ),
    "ComfyBackend": "prefect_comfy.backends.base",
    "CloudBackend": "prefect_comfy.backends.cloud.backend",
    # Prefect: blocks
    "ComfyCloudCredentials": "prefect_comfy.backends.cloud.block",
    "ComfyUIServer": "prefect_comfy.backends.comfyui.block",
    "ComfyUIBackend": "prefect_comfy.backends.comfyui.backend",
    "ComfyWorkflow": "prefect_comfy.jobs",
    "ComfyJobRun": "prefect_comfy.jobs",
    "ComfyJobResult": "prefect_comfy.jobs",
    "ComfyOutputFile": "prefect_comfy.jobs",
    # Prefect: tasks and the flow
    **{
        name: "prefect_comfy.tasks"
        for name in (
            "cancel_comfy_job",
            "download_comfy_outputs",
            "get_comfy_job",
            "submit_comfy_job",
            "upload_comfy_input",
            "upload_comfy_model",
            "wait_for_comfy_input",
            "wait_for_comfy_job",
            "wait_for_comfy_model",
        )
    },
    "run_comfy_workflow": "prefect_comfy.flows",
    "cancel_comfy_job_hook": "prefect_comfy.flows",
}

__all__ = [
    "AuthenticationError",
    "CloudBackend",
    "ComfyAPIError",
    "ComfyBackend",
    "ComfyClient",
    "ComfyCloudCredentials",
    "ComfyConfigError",
    "ComfyError",
    "ComfyEvent",
    "ComfyJobResult",
    "ComfyJobRun",
    "ComfyOutputFile",
    "ComfyProtocolError",
    "ComfySettings",
    "ComfyTransportError",
    "ComfyUIBackend",
    "ComfyUIServer",
    "ComfyWebSocket",
    "ComfyWorkflow",
    "Input",
    "InvalidRequest",
    "InvalidWorkflow",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobLost",
    "JobTimedOut",
    "Model",
    "NotFound",
    "OutcomeError",
    "Output",
    "RateLimited",
    "ResourceError",
    "ResponseTooLarge",
    "ServerError",
    "UploadFailed",
    "WaitTimedOut",
    "WebSocketAuthError",
    "WebSocketConnectionError",
    "WebSocketError",
    "cancel_comfy_job",
    "cancel_comfy_job_hook",
    "download_comfy_outputs",
    "get_comfy_job",
    "is_retryable",
    "run_comfy_workflow",
    "submit_comfy_job",
    "upload_comfy_input",
    "upload_comfy_model",
    "wait_for_comfy_input",
    "wait_for_comfy_job",
    "wait_for_comfy_model",
    "wait_for",
    "wait_for_input",
    "wait_for_input_ready",
    "wait_for_job",
    "wait_for_model",
    "wait_for_model_ready",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_comfy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if "prefect" in sys.modules:  # Prefect is loaded anyway: define the blocks for its registry
    from prefect_comfy.backends.cloud.block import ComfyCloudCredentials  # noqa: E402, F401
    from prefect_comfy.backends.comfyui.block import ComfyUIServer  # noqa: E402, F401
    from prefect_comfy.jobs import ComfyWorkflow  # noqa: E402, F401

if TYPE_CHECKING:
    from prefect_comfy.backends.base import ComfyBackend
    from prefect_comfy.backends.cloud.backend import CloudBackend
    from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
    from prefect_comfy.backends.cloud.rest import ComfyClient
    from prefect_comfy.backends.cloud.ws import ComfyWebSocket
    from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
    from prefect_comfy.backends.comfyui.block import ComfyUIServer
    from prefect_comfy.exceptions import (
        AuthenticationError,
        ComfyAPIError,
        ComfyConfigError,
        ComfyError,
        ComfyProtocolError,
        ComfyTransportError,
        InvalidRequest,
        InvalidWorkflow,
        JobCancelled,
        JobFailed,
        JobLost,
        JobTimedOut,
        NotFound,
        OutcomeError,
        RateLimited,
        ResponseTooLarge,
        ServerError,
        UploadFailed,
        WaitTimedOut,
        WebSocketAuthError,
        WebSocketConnectionError,
        WebSocketError,
        is_retryable,
    )
    from prefect_comfy.flows import cancel_comfy_job_hook, run_comfy_workflow
    from prefect_comfy.jobs import ComfyJobResult, ComfyJobRun, ComfyOutputFile, ComfyWorkflow
    from prefect_comfy.models import ComfyEvent, Input, Job, Model, Output, ResourceError
    from prefect_comfy.settings import ComfySettings
    from prefect_comfy.tasks import (
        cancel_comfy_job,
        download_comfy_outputs,
        get_comfy_job,
        submit_comfy_job,
        upload_comfy_input,
        upload_comfy_model,
        wait_for_comfy_input,
        wait_for_comfy_job,
        wait_for_comfy_model,
    )
    from prefect_comfy.waiting.waiters import (
        wait_for_input_ready,
        wait_for_job,
        wait_for_model_ready,
    )
    from prefect_comfy.waiting.waits import wait_for, wait_for_input, wait_for_model
