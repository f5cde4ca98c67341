"""comfy-api-proxy 0.1.6 (the self-hosted Comfy API v2 server) in front of a running ComfyUI, for tests.

Installed by ``scripts/install-comfy-api-proxy.sh`` into a venv of its own in the cache folder; an
install that cannot be done fails the tests with the installer's message, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.comfyui_server import REPO_ROOT, RunningComfyUI, free_port

INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-comfy-api-proxy.sh"
STARTUP_TIMEOUT_S = 60.0
PROXY_TOKEN = "proxy-test-token-not-real"


@dataclass
class RunningProxy:
    url: str
    token: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def ensure_proxy() -> Path:
    """The ``comfy-api-proxy`` executable, installed first if needed."""
    done = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"comfy-api-proxy could not be installed:\n{done.stderr[-3000:]}")
    line = done.stdout.strip().splitlines()[-1]
    return Path(line.split("=", 1)[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/health", timeout=2) as resp:
            return resp.status == 200 and bool(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def running_proxy(comfyui: RunningComfyUI, tmp_path: Path) -> Iterator[RunningProxy]:
    """Start the proxy on a free loopback port in front of ``comfyui`` (with a token); stop it after."""
    binary = ensure_proxy()
    port = free_port()
    log_path = tmp_path / "comfy-api-proxy.log"
    state = tmp_path / "proxy-state"
    state.mkdir(parents=True, exist_ok=True)
    args = [
        str(binary), "run", "--comfyui", comfyui.url, "--host", "127.0.0.1", "--port", str(port),
        "--token", PROXY_TOKEN, "--state-dir", str(state),
        "--comfyui-base-dir", str(comfyui.models_dir.parent),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ)
        )
    proxy = RunningProxy(f"http://127.0.0.1:{port}", PROXY_TOKEN, log_path, process)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _ready(proxy.url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"comfy-api-proxy did not start:\n{proxy.log_tail()}")
            time.sleep(0.2)  # polling a subprocess's port under a deadline, not synchronising tests
        yield proxy
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
