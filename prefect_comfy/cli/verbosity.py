"""How much the command line logs: quiet by default, ``--verbose`` (``-v``) for every line.

By default a command prints its own lines (a bar, a link, a result, one-line errors) and, of the
log lines, only warnings and errors: the Prefect server still gets every line of a flow run, and
its UI shows them. ``-v`` shows the INFO lines too, Prefect's (a flow run's, its tasks') and this
package's own (connects, reconnects, state changes); ``-vv`` adds DEBUG.
"""

from __future__ import annotations

import logging
import os
import sys

_LOG_FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s"
_PACKAGE_LOGGER = "prefect_comfy"

_level = 0


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time: above a live bar (which replaces it while
    it is drawn) rather than across it."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:  # StreamHandler.__init__ sets it: ignored
        pass


_handler = _CurrentStderr()
_handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%H:%M:%S"))


def set_verbosity(level: int) -> None:
    """0: quiet (warnings and errors); 1 (``-v``): INFO too; 2 or more (``-vv``): DEBUG too.

    Before Prefect is imported (commands import it lazily), ``-vv`` also sets Prefect's own
    logging level (``PREFECT_LOGGING_LEVEL``) to DEBUG for this process.
    """
    global _level
    _level = max(0, level)
    package = logging.getLogger(_PACKAGE_LOGGER)
    if _level == 0:
        package.removeHandler(_handler)
        package.setLevel(logging.NOTSET)
        return
    chosen = logging.INFO if _level == 1 else logging.DEBUG
    package.setLevel(chosen)
    if _handler not in package.handlers:
        package.addHandler(_handler)
    if _level >= 2:
        if "prefect" in sys.modules:
            logging.getLogger("prefect").setLevel(logging.DEBUG)
        else:
            os.environ["PREFECT_LOGGING_LEVEL"] = "DEBUG"


def verbosity() -> int:
    """The level given by ``-v`` (0 when quiet)."""
    return _level
