"""``prefect-comfy deploy WORKFLOW.json --name N --expose NODE.INPUT ...``: a typed deployment.

The workflow is saved as a ``ComfyWorkflow`` block (the graph inline, with the credentials block
``--block`` names, or none: runs then read the ``COMFY_*`` environment) and deployed as the flow ``run_comfy_deployment``, whose run form has one field
per ``--expose``d input (see `prefect_comfy.orchestration.deployments.workflow_deployment`).

With ``--pool`` the deployment is registered for that work pool and the command returns: a
process worker runs it with the package installed. Without it, the command serves the deployment
in this process, as ``flow.serve`` does, until Ctrl-C.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from prefect_comfy.cli.connect import BlockOption, credentials_for, prefect_api_url
from prefect_comfy.cli.errors import UsageProblem
from prefect_comfy.cli.validate import WorkflowArgument, read_workflow


def deploy(
    workflow: WorkflowArgument,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            "-n",
            help="The deployment's name (required).",
            metavar="NAME",
            show_default=False,
        ),
    ] = None,
    expose: Annotated[
        list[str] | None,
        typer.Option(
            "--expose",
            "-e",
            help="An input to offer in the run form, as NODE.INPUT, where NODE is a node's id, "
            "title or unique class type (repeat for several; the form keeps this order).",
            metavar="NODE.INPUT",
            show_default=False,
        ),
    ] = None,
    block: BlockOption = None,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            "-p",
            help="Work pool whose workers run it; the command then returns. Default: serve the "
            "deployment in this process until Ctrl-C.",
            metavar="POOL",
            show_default=False,
        ),
    ] = None,
    cron: Annotated[
        str | None,
        typer.Option(
            "--cron", help="Cron schedule, such as '0 9 * * *'.", metavar="CRON", show_default=False
        ),
    ] = None,
    workflow_block: Annotated[
        str | None,
        typer.Option(
            "--workflow-block",
            help="Name to save the ComfyWorkflow block under. Default: the deployment's name.",
            metavar="NAME",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Deploy a workflow to Prefect, with a run-form field for each --expose'd input.

    Each field has the input's type, the workflow's value as its default, its range and choices
    (from the server's node catalog), and a description naming the node. The workflow is saved on the Prefect server as a ComfyWorkflow block that
    refers to the --block credentials; without --block, runs read COMFY_API_KEY and COMFY_BASE_URL
    from the environment of the process that runs them (no key is saved). With --pool, a worker of that pool runs it; without, this
    command serves it until Ctrl-C.
    """
    if not name or not expose:
        raise UsageProblem(
            "deploy needs --name NAME and at least one --expose NODE.INPUT, such as "
            "--expose KSampler.seed"
        )
    graph = read_workflow(workflow)
    if not prefect_api_url():
        raise UsageProblem(
            "deploy needs a Prefect server to save the deployment on: set PREFECT_API_URL "
            "(for instance http://127.0.0.1:4200/api)"
        )
    credentials = asyncio.run(credentials_for(block))
    from prefect_comfy import ComfyWorkflow
    from prefect_comfy.orchestration.deployments import workflow_deployment

    deployment = workflow_deployment(
        ComfyWorkflow(credentials=credentials, workflow=graph),
        name=name,
        expose=expose,
        block_name=workflow_block or name,
        cron=cron,
    )
    where = f"{deployment.flow_name}/{name}"
    if pool:
        deployment_id = deployment.apply(work_pool_name=pool)
        typer.echo(f"Deployed {where} ({deployment_id}) to work pool {pool!r} on {_api()}.")
        typer.echo(f"Run it: prefect deployment run {where!r}")
        return
    typer.echo(f"Serving {where} on {_api()}; Ctrl-C stops.")
    from prefect import serve

    serve(deployment, print_starting_message=False)


def _api() -> str:
    return prefect_api_url() or "the Prefect server"
