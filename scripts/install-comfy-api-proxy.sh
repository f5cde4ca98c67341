#!/usr/bin/env bash
# Install comfy-api-proxy 0.1.6 (the self-hosted Comfy API v2 server, PyPI, MIT) into a virtual
# environment of its own in the cache folder, OUTSIDE the project (its aiohttp stack stays out of the
# project's .venv). Idempotent and safe to run twice at once (flock); a half-finished install (no
# marker file) is wiped and redone.
#
# Environment: PREFECT_COMFY_CACHE (default $HOME/.cache/prefect-comfy).
# Usage: install-comfy-api-proxy.sh [--check]
# Output (stdout, last line): COMFY_API_PROXY=<cache>/comfy-api-proxy-0.1.6/venv/bin/comfy-api-proxy
set -euo pipefail

VERSION="0.1.6"
CACHE_ROOT="${PREFECT_COMFY_CACHE:-$HOME/.cache/prefect-comfy}"
DIR="$CACHE_ROOT/comfy-api-proxy-$VERSION"
BIN="$DIR/venv/bin/comfy-api-proxy"
MARKER="$DIR/.install-complete"

if [[ "${1:-}" == "--check" ]]; then
    [[ -f "$MARKER" && -x "$BIN" ]] && { echo "COMFY_API_PROXY=$BIN"; exit 0; }
    exit 1
fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.comfy-api-proxy.lock"
flock 9
if [[ ! -f "$MARKER" || ! -x "$BIN" ]]; then
    echo "[install-comfy-api-proxy] installing comfy-api-proxy==$VERSION into $DIR" >&2
    rm -rf "$DIR"
    mkdir -p "$DIR"
    if python3 -m uv --version >/dev/null 2>&1; then
        python3 -m uv venv -q "$DIR/venv" >&2
        python3 -m uv pip install -q -p "$DIR/venv/bin/python" "comfy-api-proxy==$VERSION" >&2
    else
        python3 -m venv "$DIR/venv" >&2
        "$DIR/venv/bin/pip" install -q "comfy-api-proxy==$VERSION" >&2
    fi
    "$BIN" --help >/dev/null
    touch "$MARKER"
fi
echo "COMFY_API_PROXY=$BIN"
