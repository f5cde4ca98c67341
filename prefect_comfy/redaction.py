"""Keep API keys out of everything a person or a log can read.

Example:
    >>> redact_url("wss://h/developer/api/v1/ws?api_key=comfyui-abc&x=1")
    'wss://h/developer/api/v1/ws?api_key=REDACTED&x=1'
    >>> redact("bad key comfyui-abc", ["comfyui-abc"])
    'bad key REDACTED'
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Iterable
from typing import Any

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


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that scrubs secrets from every record it passes on, at every level.

    Give it to libraries that log what they send (``websockets.connect(logger=...)`` logs the
    handshake's ``Authorization`` header and the URL with its query at DEBUG): the message is
    formatted first, then redacted, so neither the text nor its arguments can carry a key. An
    exception attached with ``exc_info`` is turned into redacted text as well.

    Example:
        >>> import logging
        >>> log = RedactingLogger(logging.getLogger("doc"), ["comfyui-abc"])
        >>> log.redact_record("> Authorization: Bearer %s", ("comfyui-abc",))
        '> Authorization: Bearer REDACTED'
    """

    def __init__(self, logger: logging.Logger, secrets: Iterable[str | None] = ()) -> None:
        super().__init__(logger, {})
        self._secrets = [s for s in secrets if s]

    def redact_record(self, msg: object, args: tuple[object, ...]) -> str:
        """The message with its arguments filled in, then redacted."""
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError, KeyError):
            text = " ".join([str(msg), *map(str, args)])
        return redact(text, self._secrets)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = self.redact_record(msg, args)
        exc_info = kwargs.pop("exc_info", None)
        if exc_info:
            if exc_info is True:
                exc_info = sys.exc_info()
            elif isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            if isinstance(exc_info, tuple) and exc_info[0] is not None:
                trace = "".join(traceback.format_exception(*exc_info))
                text += "\n" + redact(trace, self._secrets)
        kwargs.pop("stack_info", None)
        kwargs.setdefault("stacklevel", 2)
        self.logger.log(level, "%s", text, **kwargs)


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs secrets from the records of loggers this package does not own.

    For code that logs through its own loggers (uvicorn's access log prints the request path with its
    ``?api_key=``; websockets' server side logs the ``Authorization: Bearer`` header at DEBUG): add it
    to those loggers. The message and every argument whose text holds a secret are redacted in
    place; other arguments are left as they are, so a formatter that unpacks ``record.args``
    (uvicorn's access formatter) still works.

    Example:
        >>> import logging
        >>> record = logging.LogRecord("uvicorn.access", 20, "", 0, '"%s %s"', ("GET", "/ws?api_key=k1"), None)
        >>> RedactingFilter(["k1"]).filter(record), record.getMessage()
        (True, '"GET /ws?api_key=REDACTED"')
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def _clean(self, value: object) -> object:
        text = value if isinstance(value, str) else str(value)
        cleaned = redact(text, self._secrets)
        return value if cleaned == text else cleaned

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: self._clean(arg) for key, arg in record.args.items()}
        if record.exc_info and record.exc_info[0] is not None:
            trace = "".join(traceback.format_exception(*record.exc_info))
            record.msg = f"{record.msg}\n{redact(trace, self._secrets)}"
            record.exc_info = None
            record.exc_text = None
        return True


def redacting_logger(name: str, secrets: Iterable[str | None]) -> RedactingLogger:
    """`RedactingLogger` over ``logging.getLogger(name)``."""
    return RedactingLogger(logging.getLogger(name), secrets)
