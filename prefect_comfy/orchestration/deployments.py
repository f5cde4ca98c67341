"""A workflow as a typed Prefect deployment: its exposed inputs become the run form's fields.

`workflow_deployment` saves a `ComfyWorkflow` block (the graph
held inline, with its credentials block) and returns a Prefect ``RunnerDeployment`` of the flow
`run_comfy_deployment`, whose parameter schema has one field per exposed input (see
`inputs_schema`). Serve it with ``prefect.serve(d)``, or
register it for a work pool with ``d.apply(work_pool_name=...)``: its entrypoint is this module's
flow by module path, so a process worker runs it with the package installed and no user code.

Why one ``inputs`` object parameter and not one parameter per input: Prefect calls a flow with the
deployment's parameters as keyword arguments and refuses names the function does not have, so a
flow cannot take ``"Positive Prompt.text"`` directly. The run form draws an object parameter as a
group of fields, one per property, with their types, defaults and dropdowns, and the server
checks a run's values against the schema (``enforce_parameter_schema``) before it creates the run.
"""

# No ``from __future__ import annotations``: Prefect builds the flow's parameter model from the
# annotations, and a worker loads this module by its path.
from collections.abc import Iterable
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.states import State
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.utilities.callables import ParameterSchema

from prefect_comfy.backends.registry import backend_of
from prefect_comfy.exceptions import CatalogUnavailable
from prefect_comfy.orchestration.flows import run_comfy_workflow
from prefect_comfy.orchestration.jobs import ComfyWorkflow
from prefect_comfy.orchestration.runs import run_logger
from prefect_comfy.workflows.catalog import NodeCatalog
from prefect_comfy.workflows.convert import convert_workflow, is_save_format
from prefect_comfy.workflows.load import load_workflow
from prefect_comfy.workflows.schema import inputs_schema

__all__ = ["run_comfy_deployment", "workflow_deployment"]

INPUTS_PARAMETER = "inputs"
WORKFLOW_PARAMETER = "workflow"


@flow(name="run-comfy-deployment")
def run_comfy_deployment(workflow: str, inputs: dict[str, Any] | None = None) -> Any:
    """Run the saved `ComfyWorkflow` block ``workflow`` with ``inputs``.

    The flow of a deployment made by `workflow_deployment`: it loads the block and runs its
    workflow as the subflow `run_comfy_workflow`, with the block's
    credentials and settings and ``inputs`` over the block's own (so values are checked against
    the server's catalog before anything is submitted, and cancelling the run cancels the job).

    Args:
        workflow: the name of the saved ``ComfyWorkflow`` block.
        inputs: values by exposed name, such as ``{"KSampler.seed": 7}``; one left out keeps the
            workflow's value.

    Returns:
        The job's `ComfyJobResult` (a Comfy-side cancel ends the
        run ``Cancelled``).

    Raises:
        InvalidInputs: an input name the workflow does not have, or a value that does not fit.
    """
    block = ComfyWorkflow.load(workflow)
    if inputs:
        run_logger().info("Inputs: %s", ", ".join(f"{k}={v!r}" for k, v in inputs.items()))
    state: State = run_comfy_workflow(
        credentials=block.credentials,
        workflow=block.workflow,
        inputs={**block.inputs, **(inputs or {})},
        tags=block.tags,
        output_dir=block.output_dir,
        timeout=block.timeout,
        cancel_on_timeout=block.cancel_on_timeout,
        emit_events=block.emit_events,
        progress_artifact=block.progress_artifact,
        outputs_artifact=block.outputs_artifact,
        suspend=block.suspend,
        return_state=True,
    )
    if state.is_completed():
        return state.result()
    return state  # Cancelled (on the Comfy side) or Failed: the run ends the same way


def workflow_deployment(
    block: ComfyWorkflow,
    *,
    name: str,
    expose: Iterable[str],
    catalog: NodeCatalog | None = None,
    block_name: str | None = None,
    cron: str | None = None,
    description: str | None = None,
    tags: Iterable[str] = (),
    concurrency_limit: int | ConcurrencyLimitConfig | None = None,
) -> RunnerDeployment:
    """A deployment that runs ``block``'s workflow, with one run-form field per exposed input.

    Checks everything before it saves anything: each name in ``expose`` must resolve in the
    workflow (by node id, title or unique class type), and its value must fit the server's node
    catalog (read through the block's credentials, unless ``catalog`` is given). Then it saves
    ``block`` under ``block_name`` (default: its own name if it was saved, else ``name``) with the
    workflow inline, so that the process running the deployment needs neither the file nor the
    user's code. A save-format workflow is kept as it is and its exposed names are those of its
    API-format conversion; an exposed seed it marks randomize has no default in the form, so a
    run that leaves it empty gets a fresh one.

    Args:
        block: the job block: credentials, workflow (a graph or a file path) and settings.
        name: the deployment's name.
        expose: the inputs to offer, as ``NODE.INPUT`` (``"Positive Prompt.text"``,
            ``"KSampler.seed"``, ``"3.steps"``), in the form's order.
        catalog: the server's node catalog, for types, ranges and choices; by default the one
            the credentials' server has (a server kind without one, and no ``catalog_source``:
            each field is typed by its value, for an API-format workflow).
        block_name: the name to save the block under.
        cron: a cron schedule for the deployment.
        description: the deployment's description; by default, one listing the exposed inputs.
        tags: the deployment's tags.
        concurrency_limit: the most runs of this deployment at once.

    Returns:
        A ``RunnerDeployment``: ``prefect.serve(d)`` runs it in this process,
        ``d.apply(work_pool_name="pool")`` registers it for a worker.

    Raises:
        InvalidInputs: a name that does not resolve, is ambiguous or is given twice, or a value
            outside the catalog's range or choices (nothing is saved).
        InvalidWorkflow: not a workflow, or a save-format one that does not convert.
        CatalogUnavailable: a save-format workflow, and no catalog to convert it with.

    Example:
        ```python
        from prefect import serve
        from prefect_comfy import ComfyCloudCredentials, ComfyWorkflow, workflow_deployment

        block = ComfyWorkflow(credentials=ComfyCloudCredentials.load("BLOCK_NAME"),
                              workflow="portrait.json")
        deployment = workflow_deployment(
            block, name="portrait", expose=["Positive Prompt.text", "KSampler.seed"]
        )
        serve(deployment)
        ```
    """
    workflow = load_workflow(block.workflow)
    if catalog is None:
        catalog = run_coro_as_sync(_server_catalog(block, save_format=is_save_format(workflow)))
    graph, randomized = workflow, set()
    if is_save_format(workflow):
        converted = convert_workflow(workflow, catalog)
        graph = converted.graph
        randomized = {key for key, control in converted.controls.items() if control == "randomize"}
    names = list(expose)
    schema = inputs_schema(graph, names, catalog, randomized=randomized)
    schema.update(
        title="Workflow inputs",
        description="Values for the workflow's exposed inputs; one left out keeps its default.",
        position=0,
    )
    block_name = block_name or getattr(block, "_block_document_name", None) or name
    parameters_schema = ParameterSchema(
        title="Parameters",
        type="object",
        properties={
            INPUTS_PARAMETER: schema,
            WORKFLOW_PARAMETER: {
                "title": "Workflow block",
                "type": "string",
                "default": block_name,
                "description": "The saved ComfyWorkflow block holding the graph and credentials.",
                "position": 1,
            },
        },
        required=[],
    )
    defaults = {k: f["default"] for k, f in schema["properties"].items() if "default" in f}
    saved = block.model_copy(update={"workflow": workflow})
    saved.save(block_name, overwrite=True)
    deployment = run_comfy_deployment.to_deployment(
        name,
        parameters={WORKFLOW_PARAMETER: block_name, INPUTS_PARAMETER: defaults},
        cron=cron,
        description=description
        or f"Runs the Comfy workflow block {block_name!r}; inputs: " + ", ".join(names),
        tags=list(tags),
        concurrency_limit=concurrency_limit,
        enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    deployment._parameter_openapi_schema = parameters_schema
    return deployment


async def _server_catalog(block: ComfyWorkflow, *, save_format: bool) -> NodeCatalog | None:
    """The node catalog of the block's server; ``None`` if it has none and none is needed."""
    async with backend_of(block.credentials) as backend:
        try:
            catalog, _ = await backend.node_catalog()
        except CatalogUnavailable:
            if save_format:
                raise
            run_logger().warning(
                "No node catalog for %s: each field of the run form is typed by its value, "
                "with no range or choices (set a catalog_source on the credentials block)",
                backend.address,
            )
            return None
    return catalog
