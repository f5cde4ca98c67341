"""The one streaming download: safe names inside the target folder, redirects by hand, bounded.

`download` streams a URL to disk through an `HttpSession`
(the key goes only where the session's dialect allows, decided afresh on every redirect hop):

- **A safe path, always.** Downloaded into a folder, a file gets `safe_relative_path` of its
  name: subfolders are kept *inside* the folder (``sub1/same.png`` and ``same.png`` are two
  files), and ``.``, ``..``, empty parts, NUL and control characters are dropped, over-long names are
  shortened. A path that would still leave the folder (a symlink inside it) is flattened.
- **Nothing overwritten, nothing lost.** In a folder a name already taken gets a suffix
  (``same (1).png``), claimed atomically (a hard link, no-clobber), so two outputs never share a
  path; a file there with the same bytes is the download already done (a second ``outputs`` writes
  nothing new). Given an explicit file path, the file is replaced as asked.
- **The user's permissions.** A file gets the mode a file the user creates gets (``0o666`` less the
  umask: ``0o644`` with the usual ``022``), not the ``0o600`` of a temporary file.
- **Atomic.** Bytes go to a unique temporary file beside the target, renamed into place once
  complete; a failed attempt leaves nothing behind, and no temporary file is ever written outside
  the target's folder.
- **Bounded.** An optional size limit (``COMFY_MAX_DOWNLOAD_BYTES`` or ``max_bytes=``) and a stall
  timeout (``COMFY_DOWNLOAD_STALL_TIMEOUT``, 60 s: no byte for that long fails the attempt, which is
  then retried like any transport error).

Example:
    >>> str(safe_relative_path("../../etc/passwd")), str(safe_relative_path("sub1/./same.png"))
    ('etc/passwd', 'sub1/same.png')
    >>> str(safe_relative_path("..")), str(safe_relative_path("a\\x00b.png"))
    ('output', 'ab.png')
"""

from __future__ import annotations

import contextlib
import filecmp
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from os import PathLike
from pathlib import Path, PurePosixPath

import httpx

from prefect_comfy.exceptions import ComfyProtocolError, ComfyTransportError, ResponseTooLarge
from prefect_comfy.transport.deadlines import within
from prefect_comfy.transport.errors import quiet_url
from prefect_comfy.transport.http import HttpSession

__all__ = [
    "CHUNK_SIZE",
    "MAX_REDIRECTS",
    "DownloadLimits",
    "download",
    "safe_relative_path",
]

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
"""Redirects a download follows (each hop decides afresh whether it may carry the key)."""
CHUNK_SIZE = 1 << 16
"""Bytes read or written at a time when streaming files."""
MAX_NAME_BYTES = 200
"""The longest file or folder name written (UTF-8 bytes), below every file system's 255."""
MAX_DEPTH = 8
"""The most folder levels an output name may create inside the target folder."""
FALLBACK_NAME = "output"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_MAX_SUFFIXES = 10_000


@dataclass(frozen=True)
class DownloadLimits:
    """Bounds of one download.

    Attributes:
        max_bytes: the largest file accepted (``None``: no limit).
        stall_timeout: seconds without a byte before the attempt fails (``None``: no limit).
    """

    max_bytes: int | None = None
    stall_timeout: float | None = 60.0


def _short(part: str) -> str:
    if len(part.encode()) <= MAX_NAME_BYTES:
        return part
    stem, dot, ext = part.rpartition(".")
    keep = f".{ext}" if dot and stem and 0 < len(ext.encode()) <= 16 else ""
    room = MAX_NAME_BYTES - len(keep.encode())
    head = part[: len(part) - len(keep)].encode()[:room].decode("utf-8", errors="ignore")
    return head + keep


def safe_relative_path(name: str, fallback: str = FALLBACK_NAME) -> PurePosixPath:
    """A relative path for an output name that cannot leave the folder it is joined to.

    Parts are split on ``/`` and ``\\``; empty parts, ``.`` and ``..`` are dropped; NUL and control
    characters are removed; each part is cut to `MAX_NAME_BYTES`; at most `MAX_DEPTH`
    folders are kept. An empty result is ``fallback`` (made safe the same way).
    """
    parts = []
    for raw in re.split(r"[/\\]", str(name)):
        part = _UNSAFE.sub("", raw).strip()
        if part and part not in (".", ".."):
            parts.append(_short(part))
    if not parts:
        if fallback == FALLBACK_NAME:
            return PurePosixPath(FALLBACK_NAME)
        return safe_relative_path(fallback)
    if len(parts) > MAX_DEPTH + 1:
        parts = parts[:MAX_DEPTH] + parts[-1:]
    return PurePosixPath(*parts)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _place(folder: Path, relative: PurePosixPath) -> Path:
    """The target for ``relative`` in ``folder`` (its subfolders made); flattened if it cannot be."""
    target = folder.joinpath(*relative.parts)
    if len(relative.parts) > 1:
        # A file may hold a folder's name: then the name is flattened below.
        with contextlib.suppress(FileExistsError, NotADirectoryError):
            target.parent.mkdir(parents=True, exist_ok=True)
        if target.parent.is_dir() and _inside(target.parent, folder):
            return target
        target = folder / _short("_".join(relative.parts))
    folder.mkdir(parents=True, exist_ok=True)
    return target


def _claim(tmp: str, target: Path) -> Path:
    """Move ``tmp`` to ``target`` or, if taken, to ``stem (n).ext``: never over another file."""
    suffix = "".join(target.suffixes[-1:])
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    for n in range(_MAX_SUFFIXES):
        candidate = target if n == 0 else target.with_name(f"{stem} ({n}){suffix}")
        try:
            os.link(tmp, candidate)
        except FileExistsError:
            if _same_bytes(tmp, candidate):  # downloaded before: keep that one
                os.unlink(tmp)
                return candidate
            continue
        except OSError:  # no hard links here: reserve the name, then replace it
            try:
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except (FileExistsError, IsADirectoryError):
                if _same_bytes(tmp, candidate):
                    os.unlink(tmp)
                    return candidate
                continue
            os.replace(tmp, candidate)
            return candidate
        os.unlink(tmp)
        return candidate
    raise ComfyProtocolError(f"{_MAX_SUFFIXES} files named like {target.name!r} already exist")


def _same_bytes(one: str | Path, other: Path) -> bool:
    """Whether ``other`` is a regular file with exactly the bytes of ``one``."""
    try:
        return other.is_file() and filecmp.cmp(one, other, shallow=False)
    except OSError:
        return False


def _user_file_mode() -> int:
    """``0o666`` less the process's umask: the mode of a file the user creates."""
    try:  # read without changing it (another thread could create a file meanwhile)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


async def _write(
    session: HttpSession,
    request: httpx.Request,
    response: httpx.Response,
    target: Path,
    claim: bool,
    limits: DownloadLimits,
) -> Path:
    where = quiet_url(request.url)
    declared = response.headers.get("Content-Length", "")
    if limits.max_bytes is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        raise _too_large(where, limits.max_bytes)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".comfy-", suffix=".part")
    try:
        size = 0
        with os.fdopen(fd, "wb") as f, session.translating(request):
            chunks = response.aiter_bytes(CHUNK_SIZE)
            while True:
                try:
                    chunk = await within(anext(chunks), limits.stall_timeout)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise ComfyTransportError(
                        f"The download of {where} stalled: no data for {limits.stall_timeout:g} s "
                        "(COMFY_DOWNLOAD_STALL_TIMEOUT)"
                    ) from None
                size += len(chunk)
                if limits.max_bytes is not None and size > limits.max_bytes:
                    raise _too_large(where, limits.max_bytes)
                f.write(chunk)
        os.chmod(tmp, _user_file_mode())  # mkstemp made it 0o600
        if claim:
            final = _claim(tmp, target)
        else:
            os.replace(tmp, target)
            final = target
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    logger.debug("Downloaded %s to %s", where, final)
    return final


def _too_large(where: str, limit: int) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"The download of {where} is larger than the limit of {limit:,} bytes; nothing was kept. "
        "Raise the limit (max_bytes= or COMFY_MAX_DOWNLOAD_BYTES) if the file is expected."
    )


async def _once(
    session: HttpSession, url: httpx.URL, target: Path, claim: bool, limits: DownloadLimits
) -> Path:
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        request = session.client.build_request("GET", current)
        response = await session.send(request, stream=True)
        try:
            if response.is_redirect:
                location = response.headers.get("Location")
                if not location:
                    raise ComfyProtocolError(
                        f"{session.dialect.name} redirected {quiet_url(current)} nowhere "
                        f"(HTTP {response.status_code} without a Location)"
                    )
                current = current.join(location)
                continue
            return await _write(session, request, response, target, claim, limits)
        finally:
            await response.aclose()
    raise ComfyProtocolError(f"Too many redirects downloading {quiet_url(url)}")


async def download(
    session: HttpSession,
    url: httpx.URL,
    dest: str | PathLike[str],
    name: str,
    *,
    max_bytes: int | None = None,
    stall_timeout: float | None = None,
) -> Path:
    """Stream ``url`` to disk, retried; returns the file's path.

    Args:
        session: the server's session (key rule, retries, error translation).
        url: what to download (redirects are followed by hand).
        dest: a folder (an existing one, or a path ending in ``/``): the file goes to
            ``dest / safe_relative_path(name)``, suffixed if taken; or a file path, replaced.
        name: the output's name, with any subfolder (``sub1/same.png``).
        max_bytes: the largest file accepted (default ``COMFY_MAX_DOWNLOAD_BYTES``, no limit).
        stall_timeout: seconds without a byte before an attempt fails (default
            ``COMFY_DOWNLOAD_STALL_TIMEOUT``, 60).

    Raises:
        ResponseTooLarge: the file is larger than ``max_bytes`` (not retried).
        ComfyError: the translated failure after the retry budget.
    """
    s = session.settings
    limits = DownloadLimits(
        max_bytes=max_bytes if max_bytes is not None else s.max_download_bytes,
        stall_timeout=stall_timeout if stall_timeout is not None else s.download_stall_timeout,
    )
    folder = Path(dest)
    into_folder = folder.is_dir() or str(dest).endswith(("/", os.sep))
    if into_folder:
        target = _place(folder, safe_relative_path(name))
    else:
        target = folder
        target.parent.mkdir(parents=True, exist_ok=True)
    return await session.retry.call(
        lambda: _once(session, url, target, into_folder, limits), what=f"GET {quiet_url(url)}"
    )
