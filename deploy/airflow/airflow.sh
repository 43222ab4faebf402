#!/usr/bin/env bash
# Start Airflow 3 standalone (api-server, scheduler with the LocalExecutor, dag-processor,
# triggerer) on safemon's DAGs, from a fresh clone: installs .venv if needed, exports the
# settings, puts the virtualenv on PATH (standalone starts its components as `airflow`
# subprocesses), and prints the UI's URL and login once it answers. Ctrl-C stops it all.
#
# Without SAFEMON_TARGETS_FILE it runs the demo: the recorded model is served on
# 127.0.0.1:8765 and pipeline/demo/targets.yaml is copied to $AIRFLOW_HOME/targets.yaml.
# Every AIRFLOW_* and SAFEMON_* variable already set is kept.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
make --no-print-directory install >&2

export PATH="$ROOT/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.safemon/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
url="http://localhost:$AIRFLOW__API__PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-$url/execution/}"
export SAFEMON_AIRFLOW_URL="${SAFEMON_AIRFLOW_URL:-$url}"
# Absolute, so every task process opens the same store whatever its working directory.
export SAFEMON_CLICKHOUSE_DSN="${SAFEMON_CLICKHOUSE_DSN:-chdb://$ROOT/.safemon/clickhouse}"
mkdir -p "$AIRFLOW_HOME"

# Job control puts each background job in its own process group, apart from this script's:
# Ctrl-C reaches only this script, whose trap sends SIGINT to each job's leader. standalone
# then stops its components with one SIGTERM each (a component that got Ctrl-C's SIGINT as
# well could hang in its shutdown); whatever is left after a grace period is killed, with
# everything it started.
set -m
groups=()
stop() {
    trap - EXIT INT TERM
    for g in "${groups[@]}"; do kill -INT "$g" 2>/dev/null || true; done
    for _ in $(seq 30); do
        running=0
        for g in "${groups[@]}"; do ps -e -o pgid=,stat= | awk -v g="$g" '$1 == g && $2 !~ /^Z/ {f = 1} END {exit !f}' && running=1; done
        [ "$running" = 0 ] && return 0
        sleep 1
    done
    echo "airflow.sh: still running 30s after Ctrl-C, killing what is left" >&2
    for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
}
trap stop EXIT
trap 'exit 130' INT TERM
if [ -z "${SAFEMON_TARGETS_FILE:-}" ]; then
    export SAFEMON_TARGETS_FILE="$AIRFLOW_HOME/targets.yaml"
    [ -f "$SAFEMON_TARGETS_FILE" ] || cp pipeline/demo/targets.yaml "$SAFEMON_TARGETS_FILE"
    safemon target replay --file pipeline/demo/recording.jsonl --port 8765 >&2 &
    groups+=($!)
fi

# Print the URL and login once the API answers (the password file appears on first start).
python - "$url" "$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated" <<'PY' &
import json, sys, time, httpx
url, passwords = sys.argv[1:]
for _ in range(300):
    try:
        if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(1)
logins = ", ".join(f"{user} / {password}" for user, password in json.load(open(passwords)).items())
print(f"\nsafemon: Airflow UI on {url}  login: {logins}\n", file=sys.stderr, flush=True)
PY
groups+=($!)

airflow standalone &
groups+=($!)
wait $!
