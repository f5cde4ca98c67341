"""The ``prefect-comfy`` command line.

Everyday work: ``run``, ``jobs list|get|cancel|watch``, ``outputs``, ``upload input|model``,
``validate``, ``deploy``, ``blocks create``; services: ``listen``, ``emulator``, ``demo``. See ``docs/cli.md``.

Each command lives in its own module and only the command being run is imported (Prefect takes
seconds to import; ``prefect-comfy emulator`` and ``--version`` do without it). ``--help`` with no
command imports them all to list them. Errors end as one line and an exit code
(`prefect_comfy.cli.errors`); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import _thread
import importlib
import importlib.metadata
import logging
import re
import signal
import sys
import threading
from typing import Annotated, Any, NamedTuple

import typer

from prefect_comfy import _interrupted_at_start
from prefect_comfy.cli.connect import lift_server_options, use_server
from prefect_comfy.cli.errors import EXIT_INTERRUPTED, from_ctrl_c, report
from prefect_comfy.cli.help import PlainCommand, PlainGroup, unwrap
from prefect_comfy.cli.verbosity import set_verbosity

VERBOSE = re.compile(r"-v+|--verbose")
"""The words of ``--verbose``, accepted anywhere on the line."""


class Entry(NamedTuple):
    """Where a command is: its module, the function (or sub-app) there, its one-line help."""

    module: str
    attribute: str
    help: str
    panel: str


_WORK = "Everyday work"
_SERVICES = "Services"

COMMANDS: dict[str, Entry] = {
    "run": Entry(
        "prefect_comfy.cli.run", "run", "Run a workflow: live progress, then its outputs.", _WORK
    ),
    "jobs": Entry("prefect_comfy.cli.jobs", "app", "List, inspect, cancel and watch jobs.", _WORK),
    "outputs": Entry(
        "prefect_comfy.cli.jobs", "outputs", "Download the outputs of a finished job.", _WORK
    ),
    "upload": Entry(
        "prefect_comfy.cli.uploads", "app", "Upload an input image or a model file.", _WORK
    ),
    "validate": Entry(
        "prefect_comfy.cli.validate", "validate", "Check a workflow file before running it.", _WORK
    ),
    "deploy": Entry(
        "prefect_comfy.cli.deploy",
        "deploy",
        "Deploy a workflow to Prefect, with run-form fields for its inputs.",
        _WORK,
    ),
    "blocks": Entry(
        "prefect_comfy.cli.blocks", "app", "Save Comfy credentials as a Prefect block.", _WORK
    ),
    "automations": Entry(
        "prefect_comfy.cli.automations",
        "app",
        "Create the automation that resumes suspended flow runs.",
        _SERVICES,
    ),
    "listen": Entry(
        "prefect_comfy.listener.cli", "listen", "Forward Comfy events into Prefect.", _SERVICES
    ),
    "emulator": Entry(
        "prefect_comfy_emulator.cli",
        "emulator",
        "Run the local emulator of the Comfy Cloud developer API.",
        _SERVICES,
    ),
    "demo": Entry(
        "prefect_comfy.cli.demo",
        "demo",
        "Run the demo: the emulator, a local Prefect server and three flows.",
        _SERVICES,
    ),
}


def version_text() -> str:
    """``prefect-comfy X (prefect Y, Python Z)``, read without importing Prefect."""

    def of(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    python = ".".join(map(str, sys.version_info[:3]))
    return f"prefect-comfy {of('prefect-comfy')} (prefect {of('prefect')}, Python {python})"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_show_version,
            help="Print the versions of prefect-comfy, Prefect and Python, and exit.",
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Print the full traceback of an error (anywhere on the line)."
        ),
    ] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="Print every log line, Prefect's and prefect-comfy's (INFO; -vv: DEBUG too). "
            "By default only warnings and errors are. Anywhere on the line.",
            show_default=False,
        ),
    ] = 0,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The Comfy server to talk to, of any kind (a ComfyUI, a Comfy API v2 server, the "
            "developer API); its kind is found by asking it. Default: COMFY_URL. Anywhere on the "
            "line.",
            metavar="URL",
            show_default=False,
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="The kind of the --url server, instead of asking it: comfyui, v2 or cloud.",
            metavar="KIND",
            show_default=False,
        ),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            "--api-key-env",
            help="The environment variable that holds the --url server's key. Default: "
            "COMFY_API_KEY (COMFY_V2_API_KEY first for v2).",
            metavar="NAME",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Orchestrate ComfyUI and Comfy Cloud from Prefect, and run Comfy jobs from the terminal.

    Credentials come from --block NAME (a saved ComfyCloudCredentials, ComfyUIServer or
    ComfyV2Credentials block), from --url URL (any kind of server), or from COMFY_API_KEY and
    COMFY_BASE_URL.
    """
    set_verbosity(verbose)
    use_server(url, kind, api_key_env)


def _not_installed(distribution: str):  # noqa: ANN202 - a Typer command
    """A command whose package (an extra) is not installed: it says how to install it."""
    extra = distribution.removeprefix("prefect_comfy_")

    def command() -> None:
        raise typer.BadParameter(
            f"{distribution} is not installed: pip install 'prefect-comfy[{extra}]' "
            f"(from a checkout: pip install -e ./{extra})"
        )

    command.__doc__ = f"Needs the {extra} extra: pip install 'prefect-comfy[{extra}]'."
    return command


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The Typer app with the command named in ``argv`` registered (all of them without one)."""
    argv = sys.argv[1:] if argv is None else argv
    app = typer.Typer(
        name="prefect-comfy",
        cls=PlainGroup,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["--help", "-h"]},
    )
    app.callback(help=unwrap(_options.__doc__))(_options)
    named = [word for word in argv if not word.startswith("-")][:1]
    if named and named[0] in COMMANDS:
        wanted = named
    elif "--version" in argv:  # answered before any command: import none
        wanted = []
    else:
        wanted = list(COMMANDS)
    for name in wanted:
        entry = COMMANDS[name]
        try:
            target = getattr(importlib.import_module(entry.module), entry.attribute)
        except ModuleNotFoundError as exc:
            if exc.name != entry.module.split(".")[0] or entry.module.startswith("prefect_comfy."):
                raise
            target = _not_installed(entry.module.split(".")[0])
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name, help=entry.help, rich_help_panel=entry.panel)
        else:
            app.command(
                name=name,
                help=unwrap(target.__doc__) or entry.help,
                short_help=entry.help,
                cls=PlainCommand,
                rich_help_panel=entry.panel,
            )(target)
    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``prefect-comfy`` console script.

    Ctrl-C anywhere (while a command imports Prefect, say, or sends its events at the end) ends
    the command with one line and exit code 130, never a traceback.
    """
    at_start = signal.getsignal(signal.SIGINT)
    the_command = at_start is _interrupted_at_start  # set by the package as the command started
    unraisable = sys.unraisablehook
    if the_command:  # Python's own Ctrl-C again: the commands cancel their jobs on it
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = press_lost_ctrl_c_again
    try:
        _run(argv)
    except KeyboardInterrupt:
        print("Interrupted", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        if the_command:  # Ctrl-C in Prefect's exit hooks: one line too
            signal.signal(signal.SIGINT, _interrupted_at_start)
            sys.unraisablehook = unraisable


def press_lost_ctrl_c_again(unraisable: Any) -> None:
    """``sys.unraisablehook`` while a command runs: a Ctrl-C is never lost.

    Python only prints an exception raised where nobody can catch it (a weakref callback, a
    ``__del__``): a Ctrl-C that lands in one, such as the module-lock callback of an import, was
    printed as "Exception ignored in: … KeyboardInterrupt" and the command went on to its end. This
    presses Ctrl-C again, where it can land; anything else is printed as Python does.
    """
    if isinstance(unraisable.exc_type, type) and issubclass(unraisable.exc_type, KeyboardInterrupt):
        # from another thread, a moment later: pressed from here, it would land in this hook
        threading.Timer(0.05, _press_ctrl_c).start()
        return
    sys.__unraisablehook__(unraisable)


def _press_ctrl_c() -> None:
    main_thread = threading.main_thread().ident
    if hasattr(signal, "pthread_kill") and main_thread is not None:
        signal.pthread_kill(main_thread, signal.SIGINT)  # a real signal: it wakes a blocked wait
    else:
        _thread.interrupt_main()


def _run(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:  # accepted anywhere on the line: move it where the group's option is parsed
        argv = ["--debug", *(word for word in argv if word != "--debug")]
    verbose = [word for word in argv if VERBOSE.fullmatch(word)]
    if verbose:  # so is -v (-vv, --verbose)
        argv = [*verbose, *(word for word in argv if not VERBOSE.fullmatch(word))]
    server, rest = lift_server_options(argv)  # the same for --url, --kind and --api-key-env
    try:
        build_app(rest)(args=[*server, *rest], prog_name="prefect-comfy")
    except SystemExit as exc:
        if from_ctrl_c(exc):  # Typer ends a KeyboardInterrupt as a silent exit 130: say it
            print("Interrupted", file=sys.stderr, flush=True)
        raise
    except BaseException as exc:  # noqa: BLE001 - every error ends as one line and a code
        if from_ctrl_c(exc) and not debug:  # Ctrl-C, wrapped by a library on its way up
            exc = KeyboardInterrupt()
        raise SystemExit(report(exc, debug=debug)) from None
    finally:
        use_server(None, None, None)  # a next main() in this process starts afresh (tests)
        send_prefect_events()
        set_verbosity(0)


EVENTS_DRAIN_TIMEOUT = 5.0
"""Seconds the command waits, at its end, for Prefect's events (a block's ``loaded``) to be sent."""


class _DrainChatter(logging.Filter):
    """Drops the events worker's "Still processing items" while the command drains it itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Still processing items")


def send_prefect_events() -> None:
    """Send the Prefect events the command queued (loading a block emits one), then stop the worker.

    Without this, Prefect's exit hook drains the worker and says "EventsWorker - Still processing
    items" while the events client connects, for up to 4 s. Nothing is done where Prefect's events
    were never imported (``--version``, ``--help``, a command without Prefect).
    """
    worker_module = sys.modules.get("prefect.events.worker")
    if worker_module is None:
        return
    chatter = _DrainChatter()
    events_logger = logging.getLogger("EventsWorker")
    events_logger.addFilter(chatter)
    try:
        worker_module.EventsWorker.drain_all(timeout=EVENTS_DRAIN_TIMEOUT, at_exit=False)
    except Exception:  # noqa: BLE001 - an unsent event must not change the command's outcome
        logging.getLogger(__name__).debug("Could not send Prefect's events", exc_info=True)
    finally:
        events_logger.removeFilter(chatter)
