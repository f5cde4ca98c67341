"""Keys never survive redaction, whichever way they travel."""

from __future__ import annotations

import logging
import sys

import pytest

from prefect_comfy.redaction import REDACTED, RedactingFilter, redact, redact_url

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


def _record(msg: str, args: tuple = (), exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", logging.INFO, "", 0, msg, args, exc_info)


def test_the_filter_redacts_arguments_and_keeps_them_a_tuple_for_the_access_formatter():
    """uvicorn's access formatter unpacks record.args: the filter keeps their number and types."""
    record = _record(
        '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:5", "GET", f"/ws?api_key={KEY}", "1.1", 101)
    )
    assert RedactingFilter([KEY]).filter(record) is True
    client, method, path, version, status = record.args
    assert path == f"/ws?api_key={REDACTED}" and status == 101 and client == "127.0.0.1:5"
    assert KEY not in record.getMessage()


def test_the_filter_redacts_the_message_a_bearer_header_and_a_traceback():
    record = _record(f"< authorization: Bearer {KEY}")
    RedactingFilter([KEY]).filter(record)
    assert record.getMessage() == f"< authorization: Bearer {REDACTED}"
    try:
        raise ValueError(f"refused {KEY}")
    except ValueError:
        record = _record("handshake failed", (), sys.exc_info())
    RedactingFilter([KEY]).filter(record)
    formatted = logging.Formatter().format(record)
    assert "refused" in formatted and KEY not in formatted
