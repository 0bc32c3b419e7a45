#!/usr/bin/env bash
# Regenerates docs/img/airflow_grid_backfill.png: Airflow standalone on a scratch copy of the demo data, hours
# 0-7 replayed through clicks_hourly with hour 5 turned into a bad drop, then the DAG's grid in headless
# Chromium (tools/cdp_screenshot.py). Needs `make setup` and Debian's chromium. Takes a few minutes; touches nothing in the checkout
# but the picture.
#     tools/screenshot_airflow.sh [OUT.png]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$repo/docs/img/airflow_grid_backfill.png}"
work="$(mktemp -d /tmp/newsrec-airflow-shot.XXXXXX)"
port="${AIRFLOW_SHOT_PORT:-18080}"
airflow_pid=""
# standalone starts a process tree (api-server, scheduler, workers...): stop the whole group, or they outlive us
trap '[ -n "$airflow_pid" ] && kill -- "-$airflow_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

export PATH="$repo/.venv/bin:$PATH" NEWSREC_HOME="$repo"
export AIRFLOW_HOME="$work/airflow_home" AIRFLOW_CONFIG="$repo/config/airflow.cfg"
export AIRFLOW__API__PORT="$port" AIRFLOW__API__BASE_URL="http://127.0.0.1:$port"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$port/execution/"
# the picture needs no log-in page; this Airflow listens on 127.0.0.1 only and lives for this script
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True
export AIRFLOW__API_AUTH__JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
export AIRFLOW__API__SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
# the DAGs read this params file and work from its folder: a scratch dataset, the committed GX project
cp "$repo/params.yaml" "$work/params.yaml"
ln -s "$repo/great_expectations" "$work/great_expectations"
export NEWSREC_PARAMS="$work/params.yaml"
newsrec synth --profile demo --hours 8 --out "$work/data/raw" --bad 5:missing_column > /dev/null

mkdir -p "$AIRFLOW_HOME"
if curl -fs "http://127.0.0.1:$port/api/v2/monitor/health" > /dev/null 2>&1; then
    echo "port $port is taken (another Airflow?): set AIRFLOW_SHOT_PORT" >&2
    exit 1
fi
setsid airflow standalone > "$work/standalone.log" 2>&1 &
airflow_pid=$!
for _ in $(seq 120); do
    curl -fs "http://127.0.0.1:$port/api/v2/monitor/health" > /dev/null 2>&1 && break
    sleep 2
done
for _ in $(seq 60); do  # the dag processor parses dags/ a little after the API is up
    airflow dags list 2>/dev/null | grep -q clicks_hourly && break
    sleep 2
done
for h in $(seq 0 7); do
    airflow dags trigger clicks_hourly --conf "{\"hour\": $h}" > /dev/null
done
for _ in $(seq 180); do
    left="$(airflow dags list-runs clicks_hourly -o plain 2>/dev/null | grep -cE 'queued|running' || true)"
    [ "$left" = 0 ] && break
    sleep 5
done
airflow dags list-runs clicks_hourly -o plain
# one browser session: the log-in sets a session cookie, then the DAG's page with its grid
python "$repo/tools/cdp_screenshot.py" --first "http://127.0.0.1:$port/auth/token/login" \
    --url "http://127.0.0.1:$port/dags/clicks_hourly" --out "$out"
echo "wrote $out"
