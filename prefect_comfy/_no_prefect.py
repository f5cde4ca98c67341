"""``prefect-comfy ... --no-prefect`` promises no Prefect: not even the first-run telemetry notice
and event that importing Prefect gives a terminal (issue 17).

Imported first by ``prefect_comfy/__init__.py``, before anything imports Prefect, which reads
``DO_NOT_TRACK`` when it is imported. The command line imports this package before it parses its
options, so this looks at ``sys.argv``: only for the ``prefect-comfy`` command itself (its console
script, or ``python -m prefect_comfy.cli``, whose ``argv[0]`` is ``-m`` while this package loads).
"""

from __future__ import annotations

import os
import sys


def _is_the_command() -> bool:
    command = sys.argv[0].replace("\\", "/") if sys.argv else ""
    return command in ("-m", "prefect-comfy") or command.endswith(
        ("/prefect-comfy", "prefect_comfy/cli/__main__.py")
    )


if "--no-prefect" in sys.argv[1:] and _is_the_command():
    os.environ.setdefault("DO_NOT_TRACK", "1")
