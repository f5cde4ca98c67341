"""How the command line reports a failure: one line on stderr and an exit code that says what kind.

Exit codes (also in ``docs/cli.md``):

====  =====================================================================================
0     success
1     the work failed: a job failed, was cancelled or timed out; a server or network error
2     usage: a bad argument or file, a missing key or block, no Prefect API for ``--block``
3     the API key was refused
130   interrupted with Ctrl-C (a job the command had started was cancelled)
====  =====================================================================================

A traceback is printed only with ``--debug``.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from prefect_comfy.exceptions import (
    AuthenticationError,
    ComfyConfigError,
    ComfyError,
    InvalidWorkflow,
    WebSocketAuthError,
)
from prefect_comfy.redaction import redact
from prefect_comfy.settings import environment_value

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_INTERRUPTED = 130

MAX_MESSAGE = 400
"""Characters of an error message that are printed (the rest is in the ``--debug`` traceback)."""


class UsageProblem(ComfyConfigError):
    """Something the user gave the command cannot work; the message says what to do instead."""


class CommandFailed(ComfyError):
    """The command ran but its work did not succeed (a job it watched failed, say)."""


class PrefectUnavailable(ComfyError):
    """The Prefect server that holds the blocks did not answer."""


class Interrupted(Exception):
    """Ctrl-C stopped the command after it did what the message says (a job cancelled, say)."""


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception that ended a command."""
    if isinstance(exc, (AuthenticationError, WebSocketAuthError)):
        return EXIT_AUTH
    if isinstance(exc, (ComfyConfigError, InvalidWorkflow)):
        return EXIT_USAGE
    if isinstance(exc, (Interrupted, KeyboardInterrupt)):
        return EXIT_INTERRUPTED
    return EXIT_FAILED


def from_ctrl_c(exc: BaseException) -> bool:
    """Whether ``exc`` is, or comes from, a KeyboardInterrupt (Ctrl-C) that a library wrapped."""
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        if isinstance(found, KeyboardInterrupt):
            return True
        seen.add(id(found))
        if found.__cause__ is None and found.__suppress_context__:  # ``raise ... from None``
            return False
        found = found.__cause__ or found.__context__
    return False


def one_line(exc: BaseException) -> str:
    """The exception as one line, without any API key from the environment."""
    if isinstance(exc, KeyboardInterrupt):
        return "Interrupted"
    text = str(exc).strip()
    if not isinstance(exc, (ComfyError, Interrupted)):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    text = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    return redact(text, [environment_value("COMFY_API_KEY")])


def report(exc: BaseException, *, debug: bool) -> int:
    """Print ``exc`` on stderr (with its traceback when ``debug``); return the exit code."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    hint = "" if debug or isinstance(exc, (ComfyError, Interrupted)) else " (--debug shows where)"
    prefix = "" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "Error: "
    print(f"{prefix}{one_line(exc)}{hint}", file=sys.stderr, flush=True)
    return exit_code(exc)


def interrupted_download(
    job_id: str, out: Path, kept: list[Path], total: int | None
) -> Interrupted:
    """Ctrl-C during the downloads of a completed job: print what was kept, and say so."""
    for path in kept:
        print(path, flush=True)  # stdout: the paths, one a line, as a finished run prints them
    of = f" of {total}" if total is not None else ""
    return Interrupted(
        f"Interrupted while downloading: Comfy job {job_id} completed; {len(kept)}{of} "
        f"output(s) downloaded whole into {out} (paths above). Get the rest with "
        f"'prefect-comfy outputs {job_id} --out {out}'"
    )
