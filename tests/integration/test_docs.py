"""Every ```python block of README.md and of every page of the documentation site (docs/**/*.md)
runs here, as a reader would run it.

How a block runs:

- Against the session emulator and the Prefect test harness, with ``COMFY_API_KEY`` and
  ``COMFY_BASE_URL`` pointing at the emulator and a credentials block saved as ``comfy`` first.
- The blocks of one file run in document order in one working directory of their own (a later
  block may use files an earlier one wrote, as in the docs). It holds ``flows/`` (a link to the
  repository's) and ``workflow_api.json`` (a tiny weight-free graph).
- Top-level ``await`` is allowed (the block then runs in a fresh event loop); the block runs as
  ``__main__`` from a file, so ``if __name__ == "__main__":`` parts run too.
- ``Flow.serve`` builds the deployment and applies it to the Prefect server (triggers included),
  then returns instead of serving for ever.
- Placeholders are replaced before running, by :data:`SUBSTITUTIONS` (and, for ComfyUI blocks, the
  default ComfyUI address by the ``comfyui_server`` fixture's).
- An HTML comment on the line just before the fence changes this:
  ``<!-- docs-test: skip (reason) -->`` does not run the block (the reason shows in the skip),
  ``<!-- docs-test: comfyui -->`` runs it against the real ComfyUI of ``comfyui_server``
  (marked ``comfyui``, so ``make test-fast`` leaves it out), and ``<!-- docs-test: pytest -->``
  saves the block as a test module of its own and runs pytest on it in a subprocess, as a user's
  project would: no fixtures of this suite, no placeholders, no ``COMFY_*`` variables; only
  ``PREFECT_API_URL``, the session's Prefect server (a module may start its own when it is unset).

Blocks that are not Python are checked where a tool can: ```yaml blocks must parse. The site itself
(links, the nav, the API reference) is checked by ``make docs`` (``mkdocs build --strict``), which
``make test`` runs; the README is not part of the site, so its relative links are checked here.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.support.keys import API_KEY
from tests.support.markdown import fenced_blocks, python_blocks
from tests.support.workflows import tiny_workflow

pytestmark = pytest.mark.prefect

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
COMFYUI_DEFAULT_URL = "http://127.0.0.1:8188"

SUBSTITUTIONS = {
    '"comfyui-..."': repr(API_KEY),  # the placeholder key: the emulator's test key
    '"BLOCK_NAME"': '"comfy"',  # a saved block's name: the block this test saves
    '"http://127.0.0.1:8765"': "EMULATOR_URL",  # the emulator's documented port: the session's
}
"""Placeholder (exact text, quotes included) → what the test runs instead."""


def cases(*, test_modules: bool = False) -> list[pytest.param]:
    """The Python blocks as test parameters: the examples, or (``test_modules``) the test modules."""
    params = []
    for path in DOCS:
        for block in python_blocks(path):
            if (block.directive == "pytest") != test_modules:
                continue
            marks = []
            if block.directive == "skip":
                marks.append(pytest.mark.skip(reason=block.reason or "marked skip"))
            elif block.directive == "comfyui":
                marks.append(pytest.mark.comfyui)
            params.append(pytest.param(block, id=block.id, marks=marks))
    return params


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    """One working directory per documentation file, shared by its blocks."""

    class Dirs(dict):
        def __missing__(self, doc: Path) -> Path:
            cwd = tmp_path_factory.mktemp(doc.stem)
            (cwd / "flows").symlink_to(ROOT / "flows")
            (cwd / "workflow_api.json").write_text(json.dumps(tiny_workflow("doc")))
            self[doc] = cwd
            return cwd

    return Dirs()


def _serve_by_applying(flow, name=None, **options):  # noqa: ANN001, ANN003
    """Flow.serve for the docs: apply the deployment (the server checks it), delete it, return.

    Its triggers' automations are deleted too, so that they fire in no other test.
    """
    from prefect.client.orchestration import get_client

    for option in ("pause_on_shutdown", "print_starting_message", "limit", "webserver"):
        options.pop(option, None)
    with get_client(sync_client=True) as client:
        before = {a.id for a in client.read_automations()}
        deployment_id = flow.to_deployment(name=name or flow.name, **options).apply()
        assert client.read_deployment(deployment_id).name == (name or flow.name)
        created = [a.id for a in client.read_automations() if a.id not in before]
        assert len(created) == len(options.get("triggers") or [])
        for automation_id in created:
            client.delete_automation(automation_id)
        client.delete_deployment(deployment_id)


def point_prefect_console_at_this_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make Prefect's console log handlers write to this test's captured stderr.

    They keep the stream they were made with: that of the test that first set up Prefect's
    logging, which ``capsys`` has closed since. Writing to it fails, and under ``log_prints=True``
    the failure's report is printed, logged and fails again, until a ``RecursionError``. Pointed at
    the current stream, the run's log lines are also part of the output checked for the key.
    """
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, PrefectConsoleHandler):
                monkeypatch.setattr(handler, "stream", sys.stderr)
                monkeypatch.setattr(handler.console, "file", sys.stderr)


def run_block(source: str, path: Path) -> None:
    """Run a block as ``python path`` would: as ``__main__``, whose file is ``path`` (Prefect finds a
    served flow's entrypoint through ``sys.modules["__main__"]``; in a pytest-xdist worker the
    process's own ``__main__`` has no file)."""
    path.write_text(source, encoding="utf-8")
    code = compile(source, str(path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    module = types.ModuleType("__main__")
    module.__file__ = str(path)
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = module
    try:
        result = eval(code, module.__dict__)  # noqa: S307
        if inspect.iscoroutine(result):
            asyncio.run(result)
    finally:
        sys.modules["__main__"] = saved


@pytest.mark.parametrize("block", cases())
def test_doc_example(block, request, emulator, prefect_api_url, workdirs, monkeypatch, capsys):
    from prefect.flows import Flow

    from prefect_comfy import ComfyCloudCredentials

    cwd = workdirs[block.path]
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("COMFY_API_KEY", API_KEY)
    monkeypatch.setenv("COMFY_BASE_URL", emulator.url)
    monkeypatch.setattr(Flow, "serve", _serve_by_applying)
    point_prefect_console_at_this_test(monkeypatch)
    ComfyCloudCredentials(api_key=API_KEY, base_url=emulator.url).save("comfy", overwrite=True)

    source = block.source
    for placeholder, value in SUBSTITUTIONS.items():
        value = repr(emulator.url) if value == "EMULATOR_URL" else value
        source = source.replace(placeholder, value)
    if block.directive == "comfyui":
        comfyui = request.getfixturevalue("comfyui_server")
        source = source.replace(repr(COMFYUI_DEFAULT_URL), repr(comfyui.url))
        source = source.replace(f'"{COMFYUI_DEFAULT_URL}"', repr(comfyui.url))

    run_block(source, cwd / f"example_{block.line}.py")

    out = capsys.readouterr()
    assert API_KEY not in out.out + out.err


@pytest.mark.parametrize("block", cases(test_modules=True))
def test_doc_test_module(block, prefect_api_url, tmp_path):
    """A page's example test module passes under pytest, run as in a project of the reader's own."""
    module = tmp_path / f"test_{block.path.stem.replace('-', '_')}_{block.line}.py"
    module.write_text(block.source, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "COMFY_"))}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            module.name,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert re.search(r"\b[1-9]\d* passed\b", done.stdout), report
    assert " failed" not in done.stdout and " skipped" not in done.stdout, report


def test_every_doc_test_module_is_collected():
    """The directive is spelled right where it is used: a page with ``docs-test: pytest`` gives a case."""
    marked = sum(
        text.count("docs-test: pytest") for text in (p.read_text(encoding="utf-8") for p in DOCS)
    )
    assert marked == len(cases(test_modules=True)) >= 1


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=b.id) for path in DOCS for b in fenced_blocks(path, "yaml")]
)
def test_yaml_block_parses(block):
    """A YAML example (a manifest, a prefect.yaml) is at least valid YAML, with no empty document."""
    import yaml

    documents = list(yaml.safe_load_all(block.source))
    assert documents and all(isinstance(d, dict) and d for d in documents), block.id


def test_readme_links_resolve():
    """The README is not part of the site, so mkdocs does not check its relative links: this does."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\((?!https?://|#|mailto:)([^)\s#]+)", text)
    assert targets, "the README links to the docs"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


SERVICE_PAGE = ROOT / "docs" / "how-to" / "listener-service.md"
VENV_BIN = Path(sys.executable).parent
DOCUMENTED_VENV_BIN = "/opt/prefect-comfy/.venv/bin/"


def test_systemd_unit_verifies(tmp_path):
    """The listener's systemd unit passes ``systemd-analyze verify`` (unknown keys are reported)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    (unit,) = fenced_blocks(SERVICE_PAGE, "ini")
    assert DOCUMENTED_VENV_BIN in unit.source
    path = tmp_path / "prefect-comfy-listener.service"
    path.write_text(unit.source.replace(DOCUMENTED_VENV_BIN, f"{VENV_BIN}/"), encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def listener_commands() -> list[list[str]]:
    """The ``prefect-comfy`` arguments of the systemd unit and of the Kubernetes Deployment."""
    import yaml

    (unit,) = fenced_blocks(SERVICE_PAGE, "ini")
    exec_start = re.search(r"^ExecStart=\S*/prefect-comfy (.*)$", unit.source, re.MULTILINE)
    manifests = [
        d for b in fenced_blocks(SERVICE_PAGE, "yaml") for d in yaml.safe_load_all(b.source)
    ]
    containers = [
        c
        for d in manifests
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    return [exec_start[1].split(), *(c["args"] for c in containers)]


def test_service_commands_are_accepted():
    """Every option the service recipes pass exists: the CLI parses them (an unknown one exits 2)."""
    commands = listener_commands()
    assert len(commands) == 2
    for args in commands:
        done = subprocess.run(
            [str(VENV_BIN / "prefect-comfy"), *args, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
