"""prefect-comfy: orchestrate ComfyUI and Comfy Cloud image generation from Prefect.

The public surface, importable from ``prefect_comfy``:

- configuration and errors: ``ComfySettings`` and the error tree rooted at ``ComfyError``;
- wire models: ``Job``, ``Input``, ``Model``, ``Output``, ``ComfyEvent``, ``ResourceError``;
- the SDK: ``ComfyClient`` (REST), ``ComfyWebSocket`` (the event stream), ``wait_for_job`` and
  friends, the backend interface ``ComfyBackend`` and its three kinds ``CloudBackend``,
  ``ComfyUIBackend`` and ``V2Backend`` (Comfy API v2);
- Prefect: the blocks ``ComfyCloudCredentials``, ``ComfyUIServer``, ``ComfyV2Credentials`` and ``ComfyWorkflow`` (with
  ``ComfyJobRun``, ``ComfyJobResult``, ``ComfyOutputFile``), the tasks (``submit_comfy_job``,
  ``wait_for_comfy_job`` …), the flow ``run_comfy_workflow`` and its ``cancel_comfy_job_hook``; the triggers
  ``on_input_ready``, ``on_model_ready``, ``on_job_completed``, ``on_job_failed`` (``comfy_trigger``
  for any other event) and ``create_resume_automation``; a workflow as a typed
  deployment: ``workflow_deployment`` (the flow ``run_comfy_deployment``).

Each name is imported when it is first used (PEP 562), so ``import prefect_comfy`` and the
``prefect-comfy`` command line do not pay for importing Prefect until something needs it. The
package's four blocks are defined in one place, `prefect_comfy.orchestration.blocks`: the
``prefect.collections`` entry point names it (a Prefect server registers its blocks), and
``prefect block register -m prefect_comfy`` finds them too, since it asks the package for every
name it lists. Which block goes with which kind of server is said in
`prefect_comfy.backends.registry`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from typing import TYPE_CHECKING, Any


def _interrupted_at_start(signum: int, frame: object) -> None:
    """Ctrl-C before (or after) a ``prefect-comfy`` command runs: one line, exit 130."""
    with contextlib.suppress(OSError):  # the terminal may be gone
        sys.stdout.flush()  # what the command printed stays printed
        os.write(2, b"Interrupted\n")
    os._exit(130)  # nothing to clean up: no command is running


def _prepare_the_command() -> None:
    """What the ``prefect-comfy`` command needs before anything heavy is imported.

    Only for the command itself (its console script, or ``python -m prefect_comfy.cli``, whose
    ``argv[0]`` is ``-m`` while this package loads), never for a program that imports the package:

    - Ctrl-C in the command's first moments (its imports) is one line, not a traceback;
      ``prefect_comfy.cli.main`` puts Python's own handler back as it starts;
    - ``--no-prefect`` promises no Prefect: not even the first-run telemetry notice and event that
      importing Prefect gives a terminal (issue 17). Prefect reads ``DO_NOT_TRACK`` when it is
      imported, and the command line imports this package before it parses its options, so this
      looks at ``sys.argv``.
    """
    command = sys.argv[0].replace("\\", "/") if sys.argv else ""
    the_command = command in ("-m", "prefect-comfy") or command.endswith(
        ("/prefect-comfy", "prefect_comfy/cli/__main__.py")
    )
    if not the_command:
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            signal.signal(signal.SIGINT, _interrupted_at_start)
    if "--no-prefect" in sys.argv[1:]:
        os.environ.setdefault("DO_NOT_TRACK", "1")


_prepare_the_command()  # first: before anything imports Prefect, or anything heavy

if TYPE_CHECKING:  # what type checkers and the API reference see; at run time, __getattr__
    from prefect_comfy.backends.base import ComfyBackend
    from prefect_comfy.backends.cloud.backend import CloudBackend
    from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
    from prefect_comfy.backends.cloud.rest import ComfyClient
    from prefect_comfy.backends.cloud.ws import ComfyWebSocket
    from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
    from prefect_comfy.backends.comfyui.block import ComfyUIServer
    from prefect_comfy.backends.v2.backend import V2Backend
    from prefect_comfy.backends.v2.block import ComfyV2Credentials
    from prefect_comfy.exceptions import (
        AuthenticationError,
        CatalogUnavailable,
        ComfyAPIError,
        ComfyConfigError,
        ComfyError,
        ComfyProtocolError,
        ComfyTransportError,
        InvalidInputs,
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
        TooManyStreams,
        UnknownNodeType,
        UploadFailed,
        WaitTimedOut,
        WebSocketAuthError,
        WebSocketConnectionError,
        WebSocketError,
        is_retryable,
    )
    from prefect_comfy.models import ComfyEvent, Input, Job, Model, Output, ResourceError
    from prefect_comfy.orchestration.deployments import run_comfy_deployment, workflow_deployment
    from prefect_comfy.orchestration.flows import cancel_comfy_job_hook, run_comfy_workflow
    from prefect_comfy.orchestration.jobs import ComfyJobRun, ComfyWorkflow
    from prefect_comfy.orchestration.results import ComfyJobResult, ComfyOutputFile
    from prefect_comfy.orchestration.tasks import (
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
    from prefect_comfy.orchestration.triggers import (
        comfy_trigger,
        create_resume_automation,
        on_input_ready,
        on_job_completed,
        on_job_failed,
        on_model_ready,
    )
    from prefect_comfy.settings import ComfySettings
    from prefect_comfy.waiting.waiters import (
        wait_for_input_ready,
        wait_for_job,
        wait_for_model_ready,
    )
    from prefect_comfy.waiting.waits import wait_for, wait_for_input, wait_for_model
    from prefect_comfy.workflows.convert import to_api_format
    from prefect_comfy.workflows.load import load_workflow

__version__ = "0.1.0"

_HOMES: dict[str, str] = {
    "ComfyBackend": "prefect_comfy.backends.base",
    "CloudBackend": "prefect_comfy.backends.cloud.backend",
    "ComfyCloudCredentials": "prefect_comfy.backends.cloud.block",
    "ComfyClient": "prefect_comfy.backends.cloud.rest",
    "ComfyWebSocket": "prefect_comfy.backends.cloud.ws",
    "ComfyUIBackend": "prefect_comfy.backends.comfyui.backend",
    "ComfyUIServer": "prefect_comfy.backends.comfyui.block",
    "V2Backend": "prefect_comfy.backends.v2.backend",
    "ComfyV2Credentials": "prefect_comfy.backends.v2.block",
    "AuthenticationError": "prefect_comfy.exceptions",
    "CatalogUnavailable": "prefect_comfy.exceptions",
    "ComfyAPIError": "prefect_comfy.exceptions",
    "ComfyConfigError": "prefect_comfy.exceptions",
    "ComfyError": "prefect_comfy.exceptions",
    "ComfyProtocolError": "prefect_comfy.exceptions",
    "ComfyTransportError": "prefect_comfy.exceptions",
    "InvalidInputs": "prefect_comfy.exceptions",
    "InvalidRequest": "prefect_comfy.exceptions",
    "InvalidWorkflow": "prefect_comfy.exceptions",
    "JobCancelled": "prefect_comfy.exceptions",
    "JobFailed": "prefect_comfy.exceptions",
    "JobLost": "prefect_comfy.exceptions",
    "JobTimedOut": "prefect_comfy.exceptions",
    "NotFound": "prefect_comfy.exceptions",
    "OutcomeError": "prefect_comfy.exceptions",
    "RateLimited": "prefect_comfy.exceptions",
    "ResponseTooLarge": "prefect_comfy.exceptions",
    "ServerError": "prefect_comfy.exceptions",
    "TooManyStreams": "prefect_comfy.exceptions",
    "UnknownNodeType": "prefect_comfy.exceptions",
    "UploadFailed": "prefect_comfy.exceptions",
    "WaitTimedOut": "prefect_comfy.exceptions",
    "WebSocketAuthError": "prefect_comfy.exceptions",
    "WebSocketConnectionError": "prefect_comfy.exceptions",
    "WebSocketError": "prefect_comfy.exceptions",
    "is_retryable": "prefect_comfy.exceptions",
    "ComfyEvent": "prefect_comfy.models",
    "Input": "prefect_comfy.models",
    "Job": "prefect_comfy.models",
    "Model": "prefect_comfy.models",
    "Output": "prefect_comfy.models",
    "ResourceError": "prefect_comfy.models",
    "run_comfy_deployment": "prefect_comfy.orchestration.deployments",
    "workflow_deployment": "prefect_comfy.orchestration.deployments",
    "cancel_comfy_job_hook": "prefect_comfy.orchestration.flows",
    "run_comfy_workflow": "prefect_comfy.orchestration.flows",
    "ComfyJobRun": "prefect_comfy.orchestration.jobs",
    "ComfyWorkflow": "prefect_comfy.orchestration.jobs",
    "ComfyJobResult": "prefect_comfy.orchestration.results",
    "ComfyOutputFile": "prefect_comfy.orchestration.results",
    "cancel_comfy_job": "prefect_comfy.orchestration.tasks",
    "download_comfy_outputs": "prefect_comfy.orchestration.tasks",
    "get_comfy_job": "prefect_comfy.orchestration.tasks",
    "submit_comfy_job": "prefect_comfy.orchestration.tasks",
    "upload_comfy_input": "prefect_comfy.orchestration.tasks",
    "upload_comfy_model": "prefect_comfy.orchestration.tasks",
    "wait_for_comfy_input": "prefect_comfy.orchestration.tasks",
    "wait_for_comfy_job": "prefect_comfy.orchestration.tasks",
    "wait_for_comfy_model": "prefect_comfy.orchestration.tasks",
    "comfy_trigger": "prefect_comfy.orchestration.triggers",
    "create_resume_automation": "prefect_comfy.orchestration.triggers",
    "on_input_ready": "prefect_comfy.orchestration.triggers",
    "on_job_completed": "prefect_comfy.orchestration.triggers",
    "on_job_failed": "prefect_comfy.orchestration.triggers",
    "on_model_ready": "prefect_comfy.orchestration.triggers",
    "ComfySettings": "prefect_comfy.settings",
    "wait_for_input_ready": "prefect_comfy.waiting.waiters",
    "wait_for_job": "prefect_comfy.waiting.waiters",
    "wait_for_model_ready": "prefect_comfy.waiting.waiters",
    "wait_for": "prefect_comfy.waiting.waits",
    "wait_for_input": "prefect_comfy.waiting.waits",
    "wait_for_model": "prefect_comfy.waiting.waits",
    "to_api_format": "prefect_comfy.workflows.convert",
    "load_workflow": "prefect_comfy.workflows.load",
}
"""Where each public name lives: imported from there on first use."""


def _lazy_exports(namespace: dict[str, Any], homes: dict[str, str]) -> tuple[Any, Any]:
    """A package's PEP 562 ``__getattr__`` and ``__dir__``: each name in ``homes`` is imported from
    its module on first use and kept in ``namespace`` (the package's ``globals()``), so later
    lookups do not come back here. Used by this package and by `prefect_comfy.listener`."""
    module = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = namespace[name] = getattr(importlib.import_module(home), name)
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *namespace.get("__all__", ())})

    return __getattr__, __dir__


__getattr__, __dir__ = _lazy_exports(globals(), _HOMES)


__all__ = [
    "AuthenticationError",
    "CatalogUnavailable",
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
    "ComfyV2Credentials",
    "ComfyWebSocket",
    "ComfyWorkflow",
    "Input",
    "InvalidInputs",
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
    "TooManyStreams",
    "UnknownNodeType",
    "UploadFailed",
    "V2Backend",
    "WaitTimedOut",
    "WebSocketAuthError",
    "WebSocketConnectionError",
    "WebSocketError",
    "cancel_comfy_job",
    "cancel_comfy_job_hook",
    "comfy_trigger",
    "create_resume_automation",
    "download_comfy_outputs",
    "get_comfy_job",
    "is_retryable",
    "load_workflow",
    "on_input_ready",
    "on_job_completed",
    "on_job_failed",
    "on_model_ready",
    "run_comfy_deployment",
    "run_comfy_workflow",
    "submit_comfy_job",
    "to_api_format",
    "upload_comfy_input",
    "upload_comfy_model",
    "wait_for",
    "wait_for_comfy_input",
    "wait_for_comfy_job",
    "wait_for_comfy_model",
    "wait_for_input",
    "wait_for_input_ready",
    "wait_for_job",
    "wait_for_model",
    "wait_for_model_ready",
    "workflow_deployment",
]


if "prefect" in sys.modules:
    # Prefect is loaded already, so the blocks cost little: define them at once, for whoever
    # imports this package to find them in Prefect's block registry (an install made before the
    # entry point named prefect_comfy.orchestration.blocks still names this package).
    importlib.import_module("prefect_comfy.orchestration.blocks")
