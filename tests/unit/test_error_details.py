"""An HTTP error's details reach its one-line message (issue 19.7): the field and what is wrong."""

from __future__ import annotations

import httpx
import pytest

from prefect_comfy.backends.cloud.rest import ComfyClient
from prefect_comfy.exceptions import InvalidRequest
from prefect_comfy.transport.errors import details_text
from tests.support.rest_fakes import KEY

ORIGIN = "https://comfy.invalid"


async def test_a_422_names_the_field_and_what_is_wrong() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        body = {
            "error": {
                "code": "validation_error",
                "message": "Request validation failed",
                "details": [
                    {
                        "field": "status",
                        "message": "Input should be 'pending', 'running', 'completed', "
                        "'failed' or 'cancelled'",
                    }
                ],
            }
        }
        return httpx.Response(422, json=body)

    async with ComfyClient(KEY, ORIGIN, transport=httpx.MockTransport(server)) as client:
        with pytest.raises(InvalidRequest) as caught:
            await client.list_jobs(status="bogus")
    message = str(caught.value)
    assert "Request validation failed (status: Input should be 'pending'" in message
    assert caught.value.details[0]["field"] == "status"
    assert KEY not in message


def test_many_details_are_cut_and_counted() -> None:
    details = [{"field": f"f{i}", "message": "bad"} for i in range(5)]
    assert details_text(details) == " (f0: bad; f1: bad; f2: bad; 2 more)"
    assert details_text(["plain text"]) == " (plain text)"
    assert details_text([{"loc": ["body", "file"], "msg": "empty"}]) == " (body.file: empty)"


def test_jobs_list_checks_the_status_name_before_asking_the_server(capsys) -> None:
    from prefect_comfy.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["jobs", "list", "--status", "bogus", "--url", "http://comfy.invalid"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "Error: --status bogus: use one of pending, running, completed, failed, cancelled"
    )
