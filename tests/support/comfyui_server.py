"""Find, install and run a real ComfyUI server for tests (no pytest dependency).

The install itself is done by ``scripts/install-comfyui.sh`` into a cache folder outside the project
(``${PREFECT_COMFY_CACHE:-~/.cache/prefect-comfy}/comfyui-0.3.75-<key>``). This module:

- :func:`find_comfyui` returns the existing install (or the one named by ``PREFECT_COMFY_COMFYUI_DIR``),
- :func:`ensure_comfyui` installs it when missing and says why when it cannot,
- :func:`running_comfyui` starts ``main.py`` on a free loopback port with every folder (input, output,
  temp, user, models) under a temporary path, waits until it answers HTTP, and stops it again.

Environment:
    PREFECT_COMFY_COMFYUI_DIR     a ComfyUI folder (with main.py) to use instead of the cache.
    PREFECT_COMFY_COMFYUI_PYTHON  its interpreter (default: ``<dir>/../venv/bin/python``, then
                                  ``<dir>/venv/bin/python``, then ``<dir>/.venv/bin/python``).
    PREFECT_COMFY_CACHE           cache root used by the install script.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-comfyui.sh"
CHECKPOINT_SCRIPT = REPO_ROOT / "scripts" / "build-test-checkpoint.py"
#: The random-weight SD1.5-style checkpoint that scripts/build-test-checkpoint.py builds.
TEST_CHECKPOINT = "prefect-comfy-tiny-sd15.safetensors"
#: Time allowed to build it (measured: 11-30 s on 2 shared cores).
CHECKPOINT_TIMEOUT_S = 10 * 60

#: Time allowed for a fresh install (measured: about 65-70 s and 1.6 GB on 2 cores).
INSTALL_TIMEOUT_S = 20 * 60
#: Time allowed for the server to answer ``/system_stats`` (measured: about 5 s).
STARTUP_TIMEOUT_S = 120.0

T = TypeVar("T")


@dataclass(frozen=True)
class ComfyUIInstall:
    """A ComfyUI source folder and the interpreter of its own virtual environment."""

    comfyui_dir: Path  # contains main.py
    python: Path

    @property
    def main_py(self) -> Path:
        return self.comfyui_dir / "main.py"


@dataclass
class RunningComfyUI:
    """A ComfyUI process started by :func:`running_comfyui`."""

    install: ComfyUIInstall
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    input_dir: Path
    output_dir: Path
    temp_dir: Path
    user_dir: Path
    models_dir: Path  # <tmp>/models (--base-directory), not the cached install's
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ws_url(self, client_id: str) -> str:
        return f"ws://{self.host}:{self.port}/ws?clientId={client_id}"

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)


# --------------------------------------------------------------------------------------------------
# small utilities


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    description: str = "condition",
) -> T:
    """Call ``check`` until it returns something other than None/False; fail after ``timeout`` s.

    The only place where these helpers sleep: a poll with a deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {description}")
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _parse_result_lines(text: str) -> ComfyUIInstall | None:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("COMFYUI_DIR", "COMFYUI_PYTHON"):
            values[key] = value.strip()
    if "COMFYUI_DIR" not in values or "COMFYUI_PYTHON" not in values:
        return None
    install = ComfyUIInstall(Path(values["COMFYUI_DIR"]), Path(values["COMFYUI_PYTHON"]))
    if not install.main_py.is_file() or not install.python.exists():
        return None
    return install


# --------------------------------------------------------------------------------------------------
# finding and installing


def _from_env() -> ComfyUIInstall | None:
    raw = os.environ.get("PREFECT_COMFY_COMFYUI_DIR")
    if not raw:
        return None
    comfyui_dir = Path(raw).expanduser().resolve()
    if not (comfyui_dir / "main.py").is_file():
        raise RuntimeError(f"PREFECT_COMFY_COMFYUI_DIR={raw} has no main.py")
    explicit = os.environ.get("PREFECT_COMFY_COMFYUI_PYTHON")
    candidates = (
        [Path(explicit).expanduser()]
        if explicit
        else [
            comfyui_dir.parent / "venv" / "bin" / "python",
            comfyui_dir / "venv" / "bin" / "python",
            comfyui_dir / ".venv" / "bin" / "python",
        ]
    )
    for python in candidates:
        if python.exists():
            return ComfyUIInstall(comfyui_dir, python)
    raise RuntimeError(
        f"PREFECT_COMFY_COMFYUI_DIR={raw}: no interpreter found (tried {', '.join(map(str, candidates))}); "
        "set PREFECT_COMFY_COMFYUI_PYTHON"
    )


def find_comfyui() -> ComfyUIInstall | None:
    """The ComfyUI to test against, or None when it is not installed.

    ``PREFECT_COMFY_COMFYUI_DIR`` wins; otherwise asks ``install-comfyui.sh --check``, which knows the
    cache folder for the current pins and reports it only when its install finished (marker file).
    """
    from_env = _from_env()
    if from_env is not None:
        return from_env
    if not INSTALL_SCRIPT.is_file():
        return None
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), "--check"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        return None
    return _parse_result_lines(proc.stdout)


def ensure_comfyui(log_path: Path | None = None) -> ComfyUIInstall:
    """Return the installed ComfyUI, running ``scripts/install-comfyui.sh`` first when it is missing.

    Raises RuntimeError with the tail of the installer's output when it cannot be installed.
    """
    found = find_comfyui()
    if found is not None:
        return found
    if not INSTALL_SCRIPT.is_file():
        raise RuntimeError(f"ComfyUI is not installed and {INSTALL_SCRIPT} is missing")
    if log_path is None:
        cache = Path(
            os.environ.get("PREFECT_COMFY_CACHE", Path.home() / ".cache" / "prefect-comfy")
        )
        cache.mkdir(parents=True, exist_ok=True)
        log_path = cache / "install-comfyui.last-run.log"
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            proc = subprocess.run(
                ["bash", str(INSTALL_SCRIPT)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"installing ComfyUI took longer than {INSTALL_TIMEOUT_S} s; installer output "
                f"({log_path}):\n{_tail(log_path, 40)}"
            ) from None
        log.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"installing ComfyUI failed ({INSTALL_SCRIPT} exited {proc.returncode}); installer output "
            f"({log_path}):\n{_tail(log_path, 40)}"
        )
    install = _parse_result_lines(proc.stdout)
    if install is None:
        raise RuntimeError(
            f"{INSTALL_SCRIPT} succeeded but printed no usable COMFYUI_DIR=/COMFYUI_PYTHON= lines:\n"
            f"{proc.stdout[-2000:]}\n{_tail(log_path, 20)}"
        )
    return install


def ensure_test_checkpoint(install: ComfyUIInstall) -> Path:
    """The test checkpoint in the cache, built by ``scripts/build-test-checkpoint.py`` when missing.

    Raises RuntimeError with the script's output when it cannot be built.
    """
    proc = subprocess.run(
        [str(install.python), str(CHECKPOINT_SCRIPT)],
        cwd=install.comfyui_dir,
        env={**os.environ, "PYTHONPATH": str(install.comfyui_dir)},
        capture_output=True,
        text=True,
        timeout=CHECKPOINT_TIMEOUT_S,
        check=False,
    )
    found = [
        line.partition("=")[2]
        for line in proc.stdout.splitlines()
        if line.startswith("CHECKPOINT=")
    ]
    if proc.returncode != 0 or not found or not Path(found[-1]).is_file():
        raise RuntimeError(
            f"building the test checkpoint failed ({CHECKPOINT_SCRIPT} exited {proc.returncode}):\n"
            f"{proc.stdout[-1000:]}{proc.stderr[-3000:]}"
        )
    return Path(found[-1])


def add_checkpoint(server: RunningComfyUI, checkpoint: Path) -> str:
    """Link ``checkpoint`` into the running server's ``models/checkpoints``; return its ``ckpt_name``.

    ComfyUI rescans a model folder whose modification time changed, so a running server sees it.
    """
    folder = server.models_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / checkpoint.name
    if not link.exists():
        link.symlink_to(checkpoint)
    return checkpoint.name


# --------------------------------------------------------------------------------------------------
# running


def _http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/system_stats", timeout=2) as resp:
            if resp.status != 200:
                return False
            json.loads(resp.read())
            return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


@contextlib.contextmanager
def running_comfyui(
    install: ComfyUIInstall,
    tmp_path: Path,
    *,
    extra_args: Sequence[str] = (),
    startup_timeout: float = STARTUP_TIMEOUT_S,
    host: str = "127.0.0.1",
) -> Iterator[RunningComfyUI]:
    """Start ComfyUI on a free port of ``host`` with its folders under ``tmp_path``; stop it on exit.

    Logs (stdout and stderr) go to ``tmp_path / "comfyui.log"``. Raises RuntimeError with the log tail
    when the process dies or does not answer ``GET /system_stats`` within ``startup_timeout`` seconds.
    """
    tmp_path = Path(tmp_path)
    dirs = {name: tmp_path / name for name in ("input", "output", "temp", "user", "models")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / "comfyui.log"
    port = free_port(host)
    args = [
        str(install.python),
        "main.py",
        "--cpu",
        "--listen",
        host,
        "--port",
        str(port),
        "--disable-auto-launch",
        # Models (and custom_nodes, disabled below) under tmp_path: tests may copy model files in
        # without touching the cached install. The folders below override the rest of it.
        "--base-directory",
        str(tmp_path),
        "--output-directory",
        str(dirs["output"]),
        "--input-directory",
        str(dirs["input"]),
        "--temp-directory",
        str(dirs["temp"]),
        "--user-directory",
        str(dirs["user"]),
        # Faster and hermetic start-up: no custom nodes, no Comfy API (paid cloud) nodes, which also
        # stops the server from contacting the internet; no database file in the install folder.
        "--disable-all-custom-nodes",
        "--disable-api-nodes",
        "--database-url",
        "sqlite:///:memory:",
        *extra_args,
    ]
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args,
            cwd=install.comfyui_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: we can signal it and its children
        )
    server = RunningComfyUI(
        install=install,
        host=host,
        port=port,
        process=process,
        log_path=log_path,
        input_dir=dirs["input"],
        output_dir=dirs["output"],
        temp_dir=dirs["temp"],
        user_dir=dirs["user"],
        models_dir=dirs["models"],
        args=args,
    )
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"ComfyUI exited with {process.returncode} before answering HTTP; "
                    f"log {log_path}:\n{_tail(log_path)}"
                )
            return _http_ready(server.url)

        try:
            wait_for(
                ready, timeout=startup_timeout, interval=0.2, description="ComfyUI /system_stats"
            )
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}; log {log_path}:\n{_tail(log_path)}") from None
        yield server
    finally:
        _stop(process)
