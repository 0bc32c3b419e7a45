# Source this to use the `airflow` CLI on this project:  source config/airflow-env.sh
# (`make airflow` does the same). Settings: config/airflow.cfg. State: airflow_home/ (gitignored).
_newsrec="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export NEWSREC_HOME="$_newsrec"
# The DAGs run on this checkout's params.yaml (and so its data, models and registry), whichever checkout the
# editable `newsrec` install points at; export NEWSREC_PARAMS before sourcing to run on another file.
export NEWSREC_PARAMS="${NEWSREC_PARAMS:-$_newsrec/params.yaml}"
export AIRFLOW_HOME="$_newsrec/airflow_home"
export AIRFLOW_CONFIG="$_newsrec/config/airflow.cfg"
export PATH="$_newsrec/.venv/bin:$PATH"
mkdir -p "$AIRFLOW_HOME"
# Every Airflow process must sign and check task tokens with the same secrets: made once, kept local.
if [ ! -s "$AIRFLOW_HOME/secrets.env" ]; then
  (umask 077 && python3 -c 'import secrets
for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
    print(f"{key}={secrets.token_urlsafe(32)}")' > "$AIRFLOW_HOME/secrets.env")
fi
set -a; . "$AIRFLOW_HOME/secrets.env"; set +a
unset _newsrec
