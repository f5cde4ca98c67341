"""``prefect-comfy automations create-resume``: the automation that resumes suspended flow runs.

Creates it on the Prefect server that ``PREFECT_API_URL`` (or the active profile) names, or
brings an existing one of the same name up to date (see
`prefect_comfy.orchestration.triggers.create_resume_automation`). Safe to run at every deploy.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from prefect_comfy.cli.connect import prefect_api_url
from prefect_comfy.cli.errors import UsageProblem
from prefect_comfy.cli.help import command, group

app = group("automations", "Create the Prefect automation that suspending waits need.")


@command(app, "create-resume")
def create_resume(
    name: Annotated[
        str | None,
        typer.Option("--name", help="The automation's name.", metavar="NAME", show_default=False),
    ] = None,  # fmt: skip
) -> None:
    """Create (or update) the automation that resumes a flow run when its Comfy job ends."""
    api_url = prefect_api_url()
    if not api_url:
        raise UsageProblem(
            "no Prefect API to create the automation on: set PREFECT_API_URL (or run "
            "`prefect server start` and `prefect config set PREFECT_API_URL=...`)"
        )
    from prefect_comfy.orchestration.triggers import (
        RESUME_AUTOMATION_NAME,
        create_resume_automation,
    )

    name = name or RESUME_AUTOMATION_NAME
    automation_id = asyncio.run(create_resume_automation(name))
    typer.echo(f'Automation "{name}" ({automation_id}) is up to date on {api_url}.')
    typer.echo("It resumes flow runs when `prefect-comfy listen` forwards their job's outcome.")
