"""The outputs table of a completed Comfy job, in markdown, with inline image previews.

Pure rendering and local file reads: no call to Prefect (`prefect_comfy.orchestration.artifacts` writes the
artifact). An image is inlined as a ``data:`` URL only when its file is at most
`MAX_PREVIEW_BYTES`, because signed download URLs expire; the table says so otherwise. URLs go
through `redact_url`.

Example:
    >>> data_url(b"\\x89PNG", "image/png")
    'data:image/png;base64,iVBORw=='
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import re
import tempfile
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from prefect_comfy.models import Job, Output
from prefect_comfy.redaction import redact_url

__all__ = [
    "MAX_PREVIEWS",
    "MAX_PREVIEW_BYTES",
    "PREVIEW_MIME_TYPES",
    "data_url",
    "outputs_markdown",
    "preview_from_file",
]

logger = logging.getLogger(__name__)

MAX_PREVIEW_BYTES = 64 * 1024
"""The largest image file inlined as a ``data:`` URL preview."""
MAX_PREVIEWS = 16
"""At most this many previews in one outputs artifact (the rest are listed without one)."""
PREVIEW_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""Image types a browser renders inline."""


def data_url(
    data: bytes, mime_type: str | None, *, max_bytes: int = MAX_PREVIEW_BYTES
) -> str | None:
    """``data:<mime>;base64,…`` for an image of at most ``max_bytes`` bytes, else ``None``."""
    if mime_type not in PREVIEW_MIME_TYPES or len(data) > max_bytes:
        return None
    return f"data:{mime_type};base64,{base64.b64encode(data).decode('ascii')}"


def _mime_of(output: Output, path: Path | None = None) -> str | None:
    if output.mime_type:
        return output.mime_type.split(";", 1)[0].strip().lower()
    name = str(path) if path else (output.name or "")
    return mimetypes.guess_type(name)[0]


def preview_from_file(
    path: str | PathLike[str], mime_type: str | None, *, max_bytes: int = MAX_PREVIEW_BYTES
) -> str | None:
    """The ``data:`` URL preview of a downloaded image, or ``None`` if too big or not an image.

    Reads at most ``max_bytes + 1`` bytes, so a huge file costs nothing.
    """
    mime = mime_type or mimetypes.guess_type(str(path))[0]
    if mime not in PREVIEW_MIME_TYPES:
        return None
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    return data_url(data, mime, max_bytes=max_bytes)


def _human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def _cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return re.sub(r"([|\[\]<>\\`*_])", r"\\\1", str(text)).replace("\n", " ")


def _code(text: Any) -> str:
    """Text safe inside a markdown code span (where backslash escapes show literally)."""
    return str(text).replace("`", "'").replace("\n", " ")


def outputs_markdown(
    job: Job,
    outputs: Sequence[Output],
    previews: Mapping[str, str | None],
    *,
    max_bytes: int = MAX_PREVIEW_BYTES,
    seeds: Mapping[str, int] | None = None,
) -> str:
    """The markdown of the outputs artifact: one table row per output, previews inline, and the
    seeds the job ran with (to make the same picture again)."""
    lines = [
        f"## Outputs of Comfy job `{_code(job.id)}`",
        "",
        f"{len(outputs)} file(s). Download links are signed and expire; previews are inlined "
        f"for images of at most {max_bytes // 1024} KiB.",
        "",
    ]
    if seeds:
        shown = ", ".join(f"`{_code(k)}` = {v}" for k, v in seeds.items())
        lines += [
            f"Seeds: {shown} (give them as inputs to make the same outputs again).",
            "",
        ]
    lines += [
        "| Name | Type | Size | Link | Preview |",
        "| --- | --- | --- | --- | --- |",
    ]
    for output in outputs:
        name = output.name or output.id
        link = f"[download]({redact_url(output.download_url)})" if output.download_url else "—"
        preview = previews.get(output.id)
        if preview:
            shown = f"![{_cell(name)}]({preview})"
        elif _mime_of(output) in PREVIEW_MIME_TYPES:
            shown = f"no preview (over {max_bytes // 1024} KiB or not available)"
        else:
            shown = "no preview (not an image)"
        mime = _mime_of(output) or output.type
        label = f"{_cell(name)} (preview, not saved)" if output.temporary else _cell(name)
        lines.append(f"| {label} | {_cell(mime)} | {_human_size(output.size)} | {link} | {shown} |")
    return "\n".join(lines) + "\n"


async def _previews(
    outputs: Sequence[Output],
    *,
    backend: Any | None,
    paths: Mapping[str, str | PathLike[str]],
    max_bytes: int,
) -> dict[str, str | None]:
    """Previews from downloaded files when known, else from a download when the size is in bounds."""
    previews: dict[str, str | None] = {}
    made = 0
    with tempfile.TemporaryDirectory(prefix="comfy-preview-") as tmp:
        for output in outputs:
            if made >= MAX_PREVIEWS:
                break
            path = paths.get(output.id) or (paths.get(output.name) if output.name else None)
            mime = _mime_of(output, Path(path) if path else None)
            if mime not in PREVIEW_MIME_TYPES:
                continue
            try:
                if path is None:
                    if backend is None or output.size is None or output.size > max_bytes:
                        continue  # never download what cannot be shown
                    path = await backend.download(output, Path(tmp) / f"preview-{made}")
                previews[output.id] = preview_from_file(path, mime, max_bytes=max_bytes)
            except Exception as exc:
                logger.warning("No preview of Comfy output %s: %r", output.id, exc)
                continue
            made += previews[output.id] is not None
    return previews
