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

Importing the package defines the three blocks, so Prefect's block registry (``prefect block
register -m prefect_comfy``, or a server loading the ``prefect.collections`` entry point) finds
them. Which block goes with which kind of server is said in `prefect_comfy.backends.registry`.
"""

from prefect_comfy.settings import quiet_prefect_for_no_prefect

quiet_prefect_for_no_prefect()  # first: before anything imports Prefect (--no-prefect)

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
from prefect_comfy.waiting.waiters import wait_for_input_ready, wait_for_job, wait_for_model_ready
from prefect_comfy.waiting.waits import wait_for, wait_for_input, wait_for_model
from prefect_comfy.workflows.convert import to_api_format
from prefect_comfy.workflows.load import load_workflow

__version__ = "0.1.0"

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
