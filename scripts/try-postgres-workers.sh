#!/usr/bin/env bash
# Try docs/how-to/scaling.md on one machine: a Prefect server on PostgreSQL, a process work pool,
# two workers, the emulator as the Comfy server, and flow runs of run_comfy_workflow shared out
# between the workers. Everything runs under a temporary folder on loopback ports and is stopped at
# the end. Needs PostgreSQL's initdb and pg_ctl on PATH (Debian: apt-get install postgresql).
#
#   bash scripts/try-postgres-workers.sh [RUNS]      # RUNS flow runs, default 6
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-6}
BIN=$PWD/.venv/bin
KEY=comfyui-scaling-try-key
TMP=$(mktemp -d /tmp/prefect-comfy-scaling.XXXXXX)
free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PIDS=()
RUN_PG=()
cleanup() {
  local status=$?
  if [ "$status" != 0 ]; then
    for log in "$TMP"/*.log; do echo "== $log"; tail -n 15 "$log"; done >&2
  fi
  # Each background command leads a process group of its own (setsid): stop the whole group,
  # politely first; a worker can take its time over SIGTERM, so after 20 s it is killed.
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  local deadline=$((SECONDS + 20))
  for pid in "${PIDS[@]}"; do
    while kill -0 -- "-$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  "${RUN_PG[@]}" pg_ctl -D "$TMP/pg" -m fast stop >/dev/null 2>&1 || true
  if [ -n "${KEEP:-}" ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
wait_for() {  # wait_for URL SECONDS
  local deadline=$((SECONDS + $2))
  until curl -sf "$1" >/dev/null; do
    ((SECONDS < deadline)) || { echo "no answer from $1 after $2 s" >&2; exit 1; }
    sleep 0.3
  done
}

# PostgreSQL, as a user that may run it (initdb refuses root)
PG_PORT=$(free_port)
if [ "$(id -u)" = 0 ]; then RUN_PG=(runuser -u nobody --); chown nobody "$TMP"; fi
"${RUN_PG[@]}" initdb -D "$TMP/pg" -U postgres --auth=trust >/dev/null
"${RUN_PG[@]}" pg_ctl -D "$TMP/pg" -o "-p $PG_PORT -k $TMP -c listen_addresses=127.0.0.1" -l "$TMP/pg.log" start >/dev/null
psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE prefect"
echo "PostgreSQL on 127.0.0.1:$PG_PORT"

# The Prefect server on it
export PREFECT_HOME=$TMP/home PREFECT_SERVER_ANALYTICS_ENABLED=false
API_PORT=$(free_port)
export PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://postgres@127.0.0.1:$PG_PORT/prefect"
START=$SECONDS
setsid "$BIN/prefect" server start --host 127.0.0.1 --port "$API_PORT" >"$TMP/server.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$API_PORT/api/health" 120
echo "Prefect server on PostgreSQL answered /api/health after $((SECONDS - START)) s"
unset PREFECT_API_DATABASE_CONNECTION_URL
export PREFECT_API_URL=http://127.0.0.1:$API_PORT/api

# The Comfy server: the emulator
EMU_PORT=$(free_port)
setsid "$BIN/prefect-comfy" emulator --port "$EMU_PORT" --api-key "$KEY" --step-duration 0.05 >"$TMP/emulator.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$EMU_PORT/_emulator/health" 60

# The credentials block, the pool, two workers, a deployment
"$BIN/python" -c "
from prefect_comfy import ComfyCloudCredentials
ComfyCloudCredentials(api_key='$KEY', base_url='http://127.0.0.1:$EMU_PORT').save('comfy', overwrite=True)"
"$BIN/prefect" work-pool create comfy --type process >/dev/null
"$BIN/prefect" work-pool set-concurrency-limit comfy 4 >/dev/null
for name in worker-a worker-b; do
  PREFECT_WORKER_QUERY_SECONDS=1 setsid "$BIN/prefect" worker start --pool comfy --name "$name" --limit 2 \
    >"$TMP/$name.log" 2>&1 &
  PIDS+=($!)
done
mkdir -p "$TMP/flows"
cat >"$TMP/flows/render.py" <<'EOF'
from prefect import flow

from prefect_comfy import ComfyCloudCredentials, run_comfy_workflow

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "EmulatorSleep", "inputs": {"seconds": 3, "images": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "scaled"}},
}


@flow
def render() -> list[str]:
    result = run_comfy_workflow(ComfyCloudCredentials.load("comfy"), GRAPH, timeout=120)
    return [p.name for p in result.paths]
EOF
"$BIN/python" - "$TMP/flows" "$RUNS" <<'EOF'
import sys
import time

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

source, runs = sys.argv[1], int(sys.argv[2])
flow.from_source(source=source, entrypoint="render.py:render").deploy(
    name="render", work_pool_name="comfy", print_next_steps=False
)
started = time.monotonic()
ids = [run_deployment("render/render", timeout=0).id for _ in range(runs)]
with get_client(sync_client=True) as client:
    while True:
        states = [client.read_flow_run(i).state for i in ids]
        if all(s.is_final() for s in states):
            break
        if time.monotonic() - started > 300:
            sys.exit(f"not all runs ended in 300 s: {[s.type.value for s in states]}")
        time.sleep(1)
print(f"{runs} flow runs: {[s.type.value for s in states].count('COMPLETED')} completed "
      f"in {time.monotonic() - started:.0f} s")
sys.exit(0 if all(s.is_completed() for s in states) else 1)
EOF
for name in worker-a worker-b; do
  echo "$name ran $(grep -c "submitted to infrastructure" "$TMP/$name.log" || true) flow run(s)"
done
