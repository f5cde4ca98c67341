"""Keep API keys out of everything a person or a log can read.

Example:
    >>> redact_url("wss://h/developer/api/v1/ws?api_key=comfyui-abc&x=1")
    'wss://h/developer/api/v1/ws?api_key=REDACTED&x=1'
    >>> redact("bad key comfyui-abc", ["comfyui-abc"])
    'bad key REDACTED'
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "REDACTED"
_SECRET_PARAMS = re.compile(r"(?i)([?&](?:api_key|token|key|apikey)=)[^&#\s]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")


def redact_url(url: str) -> str:
    """Replace the value of any ``api_key``/``token`` query parameter in a URL."""
    return _SECRET_PARAMS.sub(r"\1" + REDACTED, str(url))


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove the given secrets, query-string keys and bearer tokens from a text."""
    text = str(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _BEARER.sub(r"\1" + REDACTED, redact_url(text))
