"""A batch of prompts (or any parameters) applied to one workflow template, on a schedule.

Every variant is submitted at once, the jobs are waited on concurrently (event-driven), their
outputs are downloaded, and a table artifact sums the batch up.

Run it once (against Comfy Cloud, or the emulator with nothing but environment variables changed):

    export COMFY_API_KEY=comfyui-...            # the emulator: any key it was started with
    export COMFY_BASE_URL=http://127.0.0.1:8765 # omit for https://cloud.comfy.org
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python flows/scheduled_generation.py

Serve it on a cron schedule (every night at 02:00 UTC):

    python flows/scheduled_generation.py --serve --cron "0 2 * * *"
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact

from prefect_comfy import (
    download_comfy_outputs,
    load_workflow,
    submit_comfy_job,
    wait_for_comfy_job,
)
from prefect_comfy.backends.registry import credentials_from_parameter

WORKFLOWS = Path(__file__).parent / "workflows"

DEFAULT_PROMPTS = [
    "a lighthouse at dawn, oil painting",
    "a fox in the snow, watercolour",
    "a city of glass at night, cinematic",
]


def template_path(name: str) -> str:
    """A workflow template from ``flows/workflows`` (or any path: JSON in either format, or a
    PNG ComfyUI saved)."""
    return name if Path(name).is_file() else str(WORKFLOWS / name)


@flow(name="comfy-scheduled-generation", log_prints=True)
async def scheduled_generation(
    prompts: list[str] | None = None,
    variants: list[dict[str, Any]] | None = None,
    workflow: str = "txt2img.json",
    prompt_input: str = "Positive Prompt.text",
    seed_input: str | None = "KSampler.seed",
    credentials_block: str | None = None,
    output_dir: str = "outputs/scheduled",
    timeout: float = 900,
    tags: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Generate one job per prompt (or per variant of inputs) from one workflow template.

    Inputs are named the way the workflow names its nodes: ``"Positive Prompt.text"`` (a title),
    ``"KSampler.seed"`` (a class type only one node has) or ``"3.steps"`` (an id). They are checked
    against the workflow (and the server's node catalog, when it has one) before anything is
    submitted.

    Args:
        prompts: texts set on ``prompt_input``; each also gets seed ``i`` on ``seed_input``.
        variants: instead of prompts, a list of inputs by name ``{"<node>.<input>": value}``.
        workflow: a file in ``flows/workflows`` (``txt2img.json``, ``empty_image.json``) or a path,
            in API or save format (save format needs the server's node catalog).
        prompt_input: the input each prompt is set on.
        seed_input: the input each prompt's seed is set on (``None``: the workflow's own, or a
            fresh one where the workflow says randomize).
        credentials_block: a saved credentials block of any kind; default the ``COMFY_*``
            environment (the developer API).
        output_dir: where the outputs land, one folder per job.
        timeout: seconds to wait for each job.
        tags: Comfy tags of every job (``scheduled`` is always added).

    Returns:
        One row per variant: the inputs, the job id, its status, its seeds and the downloaded files.
    """
    log = get_run_logger()
    credentials = await credentials_from_parameter(credentials_block)
    template = load_workflow(template_path(workflow))  # read once, checked before any submit
    if variants is None:
        prompts = prompts if prompts is not None else DEFAULT_PROMPTS
        variants = []
        for i, prompt in enumerate(prompts):
            variant: dict[str, Any] = {prompt_input: prompt}
            if seed_input:
                variant[seed_input] = i
            variants.append(variant)
    job_tags = ["scheduled", *(tags or [])]
    jobs = await asyncio.gather(
        *(submit_comfy_job(credentials, template, inputs=v, tags=job_tags) for v in variants)
    )
    log.info("Submitted %d Comfy jobs", len(jobs))
    finished = await asyncio.gather(
        *(wait_for_comfy_job(credentials, job.id, timeout=timeout) for job in jobs),
        return_exceptions=True,
    )
    rows: list[dict[str, Any]] = []
    for variant, job, result in zip(variants, jobs, finished, strict=True):
        row: dict[str, Any] = {
            "inputs": json.dumps(variant),
            "job_id": job.id,
            "seeds": json.dumps(getattr(job, "seeds", {})),
            "files": [],
        }
        if isinstance(result, BaseException):
            row["status"] = f"failed: {result}"
        else:
            files = await download_comfy_outputs(credentials, result, Path(output_dir) / job.id)
            row.update(status=result.status, files=[str(f) for f in files])
        rows.append(row)
    await acreate_table_artifact(
        key="comfy-scheduled-generation",
        table=[{**r, "files": ", ".join(r["files"])} for r in rows],
        description=f"{sum(r['status'] == 'completed' for r in rows)} of {len(rows)} jobs completed",
    )
    failed = [r for r in rows if r["status"] != "completed"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(rows)} Comfy jobs did not complete")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve on a cron schedule")
    parser.add_argument("--cron", default="0 2 * * *", help="the schedule when serving")
    parser.add_argument("--workflow", default="txt2img.json")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    args = parser.parse_args()
    if args.serve:
        scheduled_generation.serve(
            name="nightly",
            cron=args.cron,
            parameters={"workflow": args.workflow, "prompts": args.prompt or DEFAULT_PROMPTS},
        )
    else:
        rows = asyncio.run(scheduled_generation(prompts=args.prompt, workflow=args.workflow))
        for row in rows:
            print(row["job_id"], row["status"], *row["files"])


if __name__ == "__main__":
    main()
