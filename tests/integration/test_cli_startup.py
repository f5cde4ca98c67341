"""The command line's first moments (issue 19, 5; issue 20, 16).

- ``--version`` and every ``--help`` answer without importing Prefect (it takes seconds): a
  condition on the modules the command imported, read from ``python -X importtime``, not a timing;
- Ctrl-C at any early moment (while the command imports itself, Prefect, or starts its flow run)
  ends it with one line and exit code 130, never a traceback. The moments are counted from a marker
  the launcher prints as the package starts loading, so each lands inside the command's own code.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import CLI, command_paths, env_for, write_json
from tests.support.keys import API_KEY
from tests.support.terminal import run_in_terminal
from tests.support.workflows import slow_workflow

IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", re.MULTILINE)


def imported_modules(*args: str, env: dict[str, str]) -> set[str]:
    """The modules ``prefect-comfy ARGS`` imports, as ``python -X importtime`` lists them."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *CLI[1:], *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return set(IMPORT_LINE.findall(done.stderr))


@pytest.mark.parametrize(
    "args",
    [["--version"], ["-h"]] + [[*path, "--help"] for path in command_paths()],
    ids=" ".join,
)
def test_version_and_help_do_not_import_prefect(args: list[str], emulator) -> None:
    modules = imported_modules(*args, env=env_for(emulator, COLUMNS="100"))
    assert "prefect_comfy.cli" in modules  # the listing is read right
    prefect = sorted(m for m in modules if m == "prefect" or m.startswith("prefect."))
    assert not prefect, prefect[:10]


LAUNCHER = """\
import os, sys

class Marker:  # says when the package starts importing its first module of its own
    def find_spec(self, name, path=None, target=None):
        if name == "prefect_comfy.settings":
            os.write(1, b"<<loading>>\\r\\n")
            sys.meta_path.remove(self)

sys.meta_path.insert(0, Marker())
sys.argv[0] = "prefect-comfy"  # what the console script's argv[0] ends with
from prefect_comfy.cli import main  # the console script's own two lines
sys.exit(main())
"""
"""The ``prefect-comfy`` console script, with a marker printed as ``prefect_comfy`` begins to load
(after its first lines ran, before anything heavy is imported)."""


def interrupted_at(moment: float, args: list[str], env: dict[str, str]) -> tuple[int, str]:
    return run_in_terminal(
        [sys.executable, "-c", LAUNCHER, *args],
        {**env, "TERM": "xterm-256color", "COLUMNS": "120"},
        timeout=120,
        interrupt_after=moment,
        interrupt_from="<<loading>>",
    )


def assert_one_interrupted_line(code: int, screen: str) -> None:
    assert "Traceback" not in screen and "KeyboardInterrupt" not in screen, screen[-3000:]
    # 130, or killed by SIGINT itself (what a shell also reports as 130): Python does that at exit
    # when the Ctrl-C landed in an eval() of a string, as typing's forward references are.
    assert code in (130, -2), (code, screen[-3000:])
    # What a terminal shows of each line: the text after its last carriage return (a live board
    # clears its line with "\r" before the message).
    shown = [line.rsplit("\r", 1)[-1] for line in screen.replace("\r\n", "\n").split("\n")]
    assert any(line.startswith("Interrupted") for line in shown), screen[-3000:]
    assert API_KEY not in screen


@pytest.mark.parametrize("moment", [0.0, 0.2, 0.5, 1.0, 2.0])
def test_ctrl_c_in_the_first_moments_is_one_line(moment: float, emulator, tmp_path: Path) -> None:
    """Regression (issue 20, 16): Ctrl-C in the first ~1.5 s printed a KeyboardInterrupt traceback."""
    workflow = write_json(tmp_path / "slow.json", slow_workflow(400, step_seconds=0.05))
    args = ["run", str(workflow), "--no-prefect", "--out", str(tmp_path / "out")]
    assert_one_interrupted_line(*interrupted_at(moment, args, env_for(emulator)))


@pytest.mark.prefect
@pytest.mark.parametrize("moment", [1.0, 3.0, 6.0])
def test_ctrl_c_while_a_command_imports_prefect_is_one_line(
    moment: float, emulator: Any, prefect_api_url: str, tmp_path: Path
) -> None:
    """``run`` with a Prefect API imports Prefect inside the command, then starts a flow run."""
    workflow = write_json(tmp_path / "slow.json", slow_workflow(400, step_seconds=0.05))
    args = ["run", str(workflow), "--out", str(tmp_path / "out")]
    env = env_for(emulator, PREFECT_API_URL=prefect_api_url)
    assert_one_interrupted_line(*interrupted_at(moment, args, env))
