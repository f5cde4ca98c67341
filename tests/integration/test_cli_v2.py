"""The CLI's commands on a Comfy API v2 server (the emulator's v2 face), in process (issue 20, #9).

``backend_for`` is pointed at a :class:`V2Backend`, as a saved ``ComfyV2Credentials`` block makes;
each command that reads the server must work on it, or say in one line why it cannot.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from prefect_comfy.backends.v2.backend import V2Backend
from prefect_comfy.cli import main
from tests.support.keys import API_KEY
from tests.support.workflows import tiny_workflow


@pytest.fixture
def v2_cli(emulator, monkeypatch):
    async def backend_for(block):
        return V2Backend(emulator.v2_url, API_KEY)

    for module in ("jobs", "validate"):
        monkeypatch.setattr(f"prefect_comfy.cli.{module}.backend_for", backend_for)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def submitted(emulator, tag: str) -> str:
    async def go() -> str:
        async with V2Backend(emulator.v2_url, API_KEY) as backend:
            job = await backend.submit(tiny_workflow("v2cli"), tags=[tag])
            return job.id

    return asyncio.run(go())


def test_jobs_list_on_a_v2_server(emulator, v2_cli, capsys) -> None:
    job_id = submitted(emulator, "v2-cli-list")
    code, out, err = run(capsys, "jobs", "list", "--tag", "v2-cli-list")
    assert code == 0, err
    assert job_id in out
    code, out, err = run(capsys, "jobs", "get", job_id, "--json")
    assert code == 0 and json.loads(out)["id"] == job_id, err


def test_validate_on_a_v2_server_names_its_kind(emulator, v2_cli, capsys, tmp_path) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(tiny_workflow("v2cli")))
    code, out, err = run(capsys, "validate", str(path))
    assert code == 0, err
    assert "Comfy API v2" in out and "self-hosted ComfyUI" not in out
