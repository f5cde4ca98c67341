"""Keys never survive redaction, whichever way they travel."""

from __future__ import annotations

import pytest

from prefect_comfy.redaction import REDACTED, redact, redact_url

KEY = "comfyui-test-key-not-real"


@pytest.mark.parametrize(
    "url",
    [
        f"wss://cloud.comfy.org/developer/api/v1/ws?api_key={KEY}",
        f"wss://cloud.comfy.org/ws?clientId=abc&token={KEY}&x=1",
        f"http://h/?API_KEY={KEY}#frag",
        f"http://h/view?filename=a.png&apikey={KEY}",
    ],
)
def test_redact_url_removes_keys_from_query_strings(url: str):
    out = redact_url(url)
    assert KEY not in out and REDACTED in out


def test_redact_url_keeps_other_parameters():
    assert redact_url("http://h/ws?clientId=abc&api_key=k&x=1") == (
        f"http://h/ws?clientId=abc&api_key={REDACTED}&x=1"
    )


def test_redact_removes_known_secrets_and_bearer_tokens():
    text = f"failed: Authorization: Bearer {KEY}; also {KEY} in a message"
    out = redact(text, [KEY])
    assert KEY not in out
    assert redact(f"Bearer {KEY}") == f"Bearer {REDACTED}"


def test_redact_ignores_empty_secrets():
    assert redact("nothing to hide", [None, ""]) == "nothing to hide"
