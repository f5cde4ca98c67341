"""A workflow as a typed deployment, through a real ``prefect server start`` and the emulator.

``prefect-comfy deploy`` (to a process work pool, and served; API and save format): the
stored parameter schema, the cron schedule, runs started through the API with custom values (as
the UI's custom-run form does) reaching the Comfy job, the server refusing values outside the
schema, and bad ``--expose`` names creating nothing.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from tests.support.browser import CHROMIUM
from tests.support.keys import API_KEY
from tests.support.prefect_stack import ROOT, Stack, prefect_stack, stop
from tests.support.run_form import check
from tests.support.save_workflows import txt2img as save_format_txt2img
from tests.support.waiting import eventually

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(900)]

POOL = "comfy-deploy-pool"
CREDENTIALS = "deploy-creds"
EXPOSE = [
    "Positive Prompt.text",
    "KSampler.seed",
    "KSampler.sampler_name",
    "CheckpointLoaderSimple.ckpt_name",
    "5.width",
]

SAVE_CREDENTIALS = """
import sys
from prefect_comfy import ComfyCloudCredentials
url = sys.argv[3]  # the emulator serves its node catalog: the developer API's catalog_source
ComfyCloudCredentials(api_key=sys.argv[2], base_url=url, catalog_source=url).save(sys.argv[1])
"""


def txt2img() -> dict[str, Any]:
    graph = json.loads((ROOT / "flows" / "workflows" / "txt2img.json").read_text())
    graph["6"]["_meta"] = {"title": "Positive Prompt"}
    graph["7"]["_meta"] = {"title": "Negative Prompt"}
    graph["3"]["inputs"]["steps"] = 2
    return graph


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, _emulator_server: Any) -> Any:
    home = tmp_path_factory.mktemp("deploy-prefect")
    with prefect_stack(home, start_timeout=300) as running:
        (home / "txt2img.json").write_text(json.dumps(txt2img()))
        (home / "save_txt2img.json").write_text(json.dumps(save_format_txt2img("randomize")))
        running.run(
            [sys.executable, "-c", SAVE_CREDENTIALS, CREDENTIALS, API_KEY, _emulator_server.url]
        )
        running.run([sys.executable, "-m", "prefect", "work-pool", "create", POOL, "-t", "process"])
        running.spawn("worker", [sys.executable, "-m", "prefect", "worker", "start", "-p", POOL])
        try:
            yield running
        finally:
            print(running.logs())  # shown when a test fails


def deploy_args(name: str, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "prefect_comfy.cli", "deploy", "txt2img.json", "--name", name]
    for one in EXPOSE:
        args += ["--expose", one]
    return args + ["--block", CREDENTIALS, *extra]


def cli(stack: Stack, args: list[str]) -> Any:
    import subprocess

    return subprocess.run(
        args, env=stack.env, cwd=stack.home, capture_output=True, text=True, timeout=120
    )


def jobs_of(emulator: Any, flow_run_id: uuid.UUID) -> list[Any]:
    tag = f"prefect.flow-run.{flow_run_id}"  # a subflow's job names the deployment's root run
    return [job for job in list(emulator.state.jobs.values()) if tag in job.tags]


async def run_with(
    client: PrefectClient, deployment_id: uuid.UUID, inputs: dict[str, Any]
) -> uuid.UUID:
    """A run with custom values, as the UI's custom-run form creates it; waits until it ends."""
    run = await client.create_flow_run_from_deployment(deployment_id, parameters={"inputs": inputs})
    await completed(client, run.id)
    return run.id


async def completed(client: PrefectClient, run_id: uuid.UUID) -> None:
    async def ended() -> Any:
        state = (await client.read_flow_run(run_id)).state
        return state if state is not None and state.is_final() else None

    state = await eventually(ended, timeout=180, interval=0.5, message="the run ends")
    assert state.is_completed(), f"{state.type}: {state.message}"


@pytest.fixture(scope="module")
def portrait(stack: Stack) -> str:
    """The output of deploying txt2img to the pool as "portrait", on a cron schedule."""
    return stack.run(deploy_args("portrait", "--pool", POOL, "--cron", "0 9 * * *"))


async def test_cli_deploys_to_a_pool_with_a_typed_form_and_a_run_uses_its_values(
    stack: Stack, emulator: Any, portrait: str
) -> None:
    assert "run-comfy-deployment/portrait" in portrait
    async with PrefectClient(api=stack.api_url) as client:
        deployment = await client.read_deployment_by_name("run-comfy-deployment/portrait")
        schema = deployment.parameter_openapi_schema
        fields = schema["properties"]["inputs"]["properties"]
        assert list(fields) == EXPOSE
        assert [f["position"] for f in fields.values()] == list(range(len(EXPOSE)))
        seed = fields["KSampler.seed"]
        assert (seed["type"], seed["default"], seed["minimum"]) == ("integer", 42, 0)
        assert seed["maximum"] == 0xFFFFFFFFFFFFFFFF
        assert "dpmpp_2m" in fields["KSampler.sampler_name"]["enum"]
        assert "sd_xl_base_1.0.safetensors" in fields["CheckpointLoaderSimple.ckpt_name"]["enum"]
        assert fields["5.width"]["minimum"] == 16
        assert (
            "node 6 'Positive Prompt' (CLIPTextEncode)"
            in fields["Positive Prompt.text"]["description"]
        )
        assert deployment.enforce_parameter_schema
        assert (
            deployment.entrypoint == "prefect_comfy.orchestration.deployments.run_comfy_deployment"
        )
        assert deployment.work_pool_name == POOL
        assert deployment.parameters["workflow"] == "portrait"
        assert deployment.parameters["inputs"]["KSampler.seed"] == 42
        [schedule] = deployment.schedules
        assert schedule.schedule.cron == "0 9 * * *"

        values = {
            "Positive Prompt.text": "a red fox in snow",
            "KSampler.seed": 7,
            "KSampler.sampler_name": "dpmpp_2m",
        }
        run_id = await run_with(client, deployment.id, values)
        [job] = jobs_of(emulator, run_id) or [None]
        assert job is not None, "the run's subflow submitted no job tagged with the run"
        assert job.workflow["6"]["inputs"]["text"] == "a red fox in snow"
        assert job.workflow["3"]["inputs"]["seed"] == 7
        assert job.workflow["3"]["inputs"]["sampler_name"] == "dpmpp_2m"
        assert job.workflow["5"]["inputs"]["width"] == 512  # left out: the workflow's value
        assert job.workflow["7"]["inputs"]["text"] == "blurry, low quality"

        # the server checks a run's values against the schema before it creates the run
        for bad in ({"KSampler.seed": -1}, {"KSampler.sampler_name": "nope"}, {"Nope.text": 1}):
            with pytest.raises(PrefectHTTPStatusError) as refused:
                await client.create_flow_run_from_deployment(
                    deployment.id, parameters={"inputs": bad}
                )
            assert refused.value.response.status_code == 409, bad


async def test_the_ui_run_form_makes_a_run_with_the_values_typed_in(
    stack: Stack, emulator: Any, portrait: str
) -> None:
    # Fails, never skips, without a browser (as the ComfyUI tests do without ComfyUI): make test
    # installs Debian's chromium when it is missing.
    assert Path(CHROMIUM).exists(), f"no browser at {CHROMIUM}: apt-get install chromium"
    async with PrefectClient(api=stack.api_url) as client:
        deployment = await client.read_deployment_by_name("run-comfy-deployment/portrait")
        typed = {"Positive Prompt.text": "typed in the form", "KSampler.seed": "99"}
        run = await check(stack.api_url, str(deployment.id), typed, None)
        assert run["parameters"]["workflow"] == "portrait"
        inputs = run["parameters"]["inputs"]
        assert inputs["Positive Prompt.text"] == "typed in the form"
        assert inputs["KSampler.seed"] == 99  # the number field sends a number
        assert inputs["KSampler.sampler_name"] == "euler"  # untouched: the default
        await completed(client, uuid.UUID(run["id"]))
        [job] = jobs_of(emulator, uuid.UUID(run["id"]))
        assert job.workflow["6"]["inputs"]["text"] == "typed in the form"
        assert job.workflow["3"]["inputs"]["seed"] == 99


@pytest.mark.parametrize(
    ("expose", "says"),
    [
        ("Nope.text", "no node has the id, title or class type 'Nope'"),
        ("CLIPTextEncode.text", "2 nodes have the class type 'CLIPTextEncode' (ids 6, 7)"),
        ("KSampler.nope", "has no input 'nope'"),
        ("KSampler.model", "is fed by a link"),
    ],
)
async def test_a_bad_exposed_name_is_one_line_and_creates_nothing(
    stack: Stack, expose: str, says: str
) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    args = [sys.executable, "-m", "prefect_comfy.cli", "deploy", "txt2img.json", "-n", name]
    args += ["--expose", "KSampler.seed", "--expose", expose, "-p", POOL, "-b", CREDENTIALS]
    done = cli(stack, args)
    assert done.returncode == 2, done.stderr
    first, *rest = done.stderr.strip().splitlines()
    assert first.startswith(f"Error: Cannot expose {expose!r}: ") and says in first
    # at most Prefect's own exit notice of its event queue (the credentials block's load event)
    assert all("EventsWorker" in line for line in rest), rest
    async with PrefectClient(api=stack.api_url) as client:
        with pytest.raises(ObjectNotFound):
            await client.read_deployment_by_name(f"run-comfy-deployment/{name}")
        with pytest.raises(ObjectNotFound):
            await client.read_block_document_by_name(name, "comfy-workflow")


def node_of(graph: dict[str, Any], class_type: str) -> dict[str, Any]:
    [node] = [n for n in graph.values() if n["class_type"] == class_type]
    return node


async def test_a_save_format_workflow_served_without_a_pool_draws_its_seed(
    stack: Stack, emulator: Any
) -> None:
    """Served (no --pool) until stopped; the seed the save format randomizes is drawn per run."""
    args = [sys.executable, "-m", "prefect_comfy.cli", "deploy", "save_txt2img.json"]
    args += ["-n", "served", "-e", "Positive Prompt.text", "-e", "KSampler.seed", "-b", CREDENTIALS]
    server = stack.spawn("deploy-serve", args, PREFECT_RUNNER_POLL_FREQUENCY="1")
    try:
        async with PrefectClient(api=stack.api_url) as client:

            async def deployed() -> Any:
                try:
                    return await client.read_deployment_by_name("run-comfy-deployment/served")
                except ObjectNotFound:
                    return None

            deployment = await eventually(deployed, timeout=120, interval=0.5, message="served")
            assert deployment.work_pool_name is None
            fields = deployment.parameter_openapi_schema["properties"]["inputs"]["properties"]
            assert "default" not in fields["KSampler.seed"]  # randomize: no fixed default
            assert "KSampler.seed" not in deployment.parameters["inputs"]

            run_id = await run_with(client, deployment.id, {"Positive Prompt.text": "served"})
            [job] = jobs_of(emulator, run_id)
            assert node_of(job.workflow, "KSampler")["inputs"]["seed"] != 42  # drawn afresh
            texts = [n["inputs"]["text"] for n in job.workflow.values() if "text" in n["inputs"]]
            assert "served" in texts

            run_id = await run_with(client, deployment.id, {"KSampler.seed": 5})
            [job] = jobs_of(emulator, run_id)
            assert node_of(job.workflow, "KSampler")["inputs"]["seed"] == 5
    finally:
        stop(server)
