#!/usr/bin/env bash
# Runs once, when the postgres volume is first initialised: one owner and one database per service,
# so Airflow and MLflow cannot touch each other's tables.
set -euo pipefail

create() {
    local name="$1" password="$2"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v name="$name" -v password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
}

create airflow "${AIRFLOW_DB_PASSWORD:?}"
create mlflow "${MLFLOW_DB_PASSWORD:?}"
