"""The official ComfyUI workflow templates that match the tested ComfyUI, read from their wheels.

ComfyUI 0.3.75 pins ``comfyui-workflow-templates==0.7.25`` (its requirements.txt). That package is only a
meta package: the index of templates is in ``comfyui-workflow-templates-core`` (``manifest.json``) and
the workflow files are in four media bundles (``comfyui-workflow-templates-media-{api,image,other,
video}``, about 93 MB of wheels, mostly preview pictures). ``scripts/install-comfyui.sh`` leaves them
out of ComfyUI's venv, so :func:`ensure_templates` downloads the five wheels once with
``pip download --no-deps`` into ``${PREFECT_COMFY_CACHE:-~/.cache/prefect-comfy}/templates-0.7.25/``
and the templates are read straight from the wheels (zip files); nothing is unpacked and nothing of
it goes into git.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEMPLATES_VERSION = "0.7.25"
#: The distributions ``comfyui-workflow-templates==0.7.25`` requires (its METADATA ``Requires-Dist``).
DISTRIBUTIONS = {
    "comfyui-workflow-templates-core": "0.3.12",
    "comfyui-workflow-templates-media-api": "0.3.14",
    "comfyui-workflow-templates-media-video": "0.3.12",
    "comfyui-workflow-templates-media-image": "0.3.17",
    "comfyui-workflow-templates-media-other": "0.3.15",
}
#: Time allowed for the download (measured: about 10 s here; 93 MB).
DOWNLOAD_TIMEOUT_S = 15 * 60


class TemplatesUnavailable(RuntimeError):
    """The template wheels are not in the cache and could not be downloaded."""


@dataclass(frozen=True)
class Template:
    """One workflow template: where it lives and its bytes."""

    id: str
    bundle: str  # "media-image", ...
    distribution: str  # "comfyui-workflow-templates-media-image"
    version: str  # of the distribution
    path: str  # inside the wheel
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def load(self) -> dict:
        return json.loads(self.data)


def cache_dir() -> Path:
    root = Path(os.environ.get("PREFECT_COMFY_CACHE", Path.home() / ".cache" / "prefect-comfy"))
    return root / f"templates-{TEMPLATES_VERSION}"


def _wheel_name(distribution: str, version: str) -> str:
    return f"{distribution.replace('-', '_')}-{version}-py3-none-any.whl"


def wheel_path(distribution: str, directory: Path | None = None) -> Path:
    return (directory or cache_dir()) / _wheel_name(distribution, DISTRIBUTIONS[distribution])


def _pip_python() -> str:
    """An interpreter with pip (the project's uv-made venv has none): as install-comfyui.sh picks."""
    candidates = [os.environ.get("PREFECT_COMFY_BASE_PYTHON"), "python3.11", "python3"]
    for candidate in candidates:
        if not candidate:
            continue
        path = shutil.which(candidate)
        if (
            path
            and subprocess.run(
                [path, "-m", "pip", "--version"], capture_output=True, check=False
            ).returncode
            == 0
        ):
            return path
    return sys.executable


def ensure_templates(directory: Path | None = None) -> Path:
    """Return the folder holding the five template wheels, downloading the missing ones first.

    Raises:
        TemplatesUnavailable: pip could not download them (registry unreachable); the message has
            pip's last lines.
    """
    directory = directory or cache_dir()
    missing = [d for d in DISTRIBUTIONS if not wheel_path(d, directory).is_file()]
    if not missing:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    pins = [f"{d}=={DISTRIBUTIONS[d]}" for d in missing]
    cmd = [_pip_python(), "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d"]
    try:
        proc = subprocess.run(
            [*cmd, str(directory), *pins],
            capture_output=True,
            text=True,
            timeout=DOWNLOAD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TemplatesUnavailable(f"could not download {', '.join(pins)}: {exc}") from None
    still_missing = [d for d in DISTRIBUTIONS if not wheel_path(d, directory).is_file()]
    if proc.returncode != 0 or still_missing:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-8:])
        raise TemplatesUnavailable(
            f"could not download {', '.join(pins)} into {directory} "
            f"(pip exited {proc.returncode}):\n{tail}"
        )
    return directory


def iter_templates(directory: Path | None = None) -> Iterator[Template]:
    """Every template of the manifest in ``comfyui-workflow-templates-core``, sorted by id."""
    directory = directory or cache_dir()
    core = "comfyui-workflow-templates-core"
    with zipfile.ZipFile(wheel_path(core, directory)) as zf:
        manifest = json.loads(zf.read("comfyui_workflow_templates_core/manifest.json"))
    wheels: dict[str, zipfile.ZipFile] = {}
    try:
        for entry in sorted(manifest["templates"], key=lambda e: e["id"]):
            distribution = f"comfyui-workflow-templates-{entry['bundle']}"
            if distribution not in wheels:
                wheels[distribution] = zipfile.ZipFile(wheel_path(distribution, directory))
            package = distribution.replace("-", "_")
            path = f"{package}/templates/{entry['id']}.json"
            yield Template(
                id=entry["id"],
                bundle=entry["bundle"],
                distribution=distribution,
                version=DISTRIBUTIONS[distribution],
                path=path,
                data=wheels[distribution].read(path),
            )
    finally:
        for zf in wheels.values():
            zf.close()
