"""A small ``multipart/form-data`` reader (the project does not depend on python-multipart).

Example:
    >>> body = b'--b\\r\\nContent-Disposition: form-data; name="tags"\\r\\n\\r\\na,b\\r\\n--b--\\r\\n'
    >>> parse_multipart('multipart/form-data; boundary=b', body)["tags"].data
    b'a,b'
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

from prefect_comfy_emulator.wire import ApiError


@dataclass(frozen=True)
class Part:
    """One form field: its bytes, and for a file its file name and content type."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _header_params(value: str) -> Message:
    msg = Message()
    msg["content-type"] = value
    return msg


def parse_multipart(content_type: str, body: bytes) -> dict[str, Part]:
    """The fields of a multipart body, by name (the last one wins); 400 if it is not multipart."""
    return dict(parse_multipart_all(content_type, body))


def parse_multipart_all(content_type: str, body: bytes) -> list[tuple[str, Part]]:
    """Every field of a multipart body in order, repeated names kept (``tags`` in v2)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "invalid_request", "expected a multipart/form-data body")
    boundary = _header_params(content_type).get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ApiError(400, "invalid_request", "multipart body without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    pieces = body.split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise ApiError(400, "invalid_request", "malformed multipart body")
    fields: list[tuple[str, Part]] = []
    for piece in pieces[1:-1]:
        piece = piece.removeprefix(b"\r\n").removesuffix(b"\r\n")
        head, sep, data = piece.partition(b"\r\n\r\n")
        if not sep:
            raise ApiError(400, "invalid_request", "malformed multipart part")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = _header_params(
            "form-data; " + headers.get("content-disposition", "").partition(";")[2]
        )
        name = disposition.get_param("name")
        if not isinstance(name, str):
            raise ApiError(400, "invalid_request", "multipart part without a name")
        filename = disposition.get_param("filename")
        part = Part(
            data=data,
            filename=filename if isinstance(filename, str) else None,
            content_type=headers.get("content-type"),
        )
        fields.append((name, part))
    return fields
