"""Airflow with its metadata DB on PostgreSQL runs the DAGs in the production shape: the hourly drop is
waited for on S3 (a moto server on loopback), staged and validated; the daily training run trains and
registers the ranker in an MLflow registry that is itself on PostgreSQL, with artifacts in S3.

Airflow reads its configuration once per process, so it runs here as the `airflow` CLI in child
processes; this process never imports it (tests/test_dags.py configures the in-process Airflow).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from pipelines import columns as C
from pipelines import storage
from pipelines.config import load_params

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = [sys.executable, "-m", "airflow"]
SPLIT = {"test_hours": 3, "val_hours": 3, "label_hours": 3, "train_snapshots": 3, "min_history_hours": 9}
TRAIN_FAST = {"num_boost_round": 60, "early_stopping_rounds": 20}

pytestmark = pytest.mark.integration


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg2://", "postgresql://")


def _query(url: str, sql: str, *args) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(_dsn(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


@pytest.fixture
def mlflow_db(postgres_db):
    """A second database on the same server, for MLflow (it and Airflow both keep an alembic_version)."""
    import psycopg2

    name = postgres_db.rsplit("/", 1)[1] + "_mlflow"
    admin = psycopg2.connect(_dsn(postgres_db.rsplit("/", 1)[0] + "/postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_db.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_dags_run_on_postgres_with_s3_drops_and_a_postgres_s3_registry(
    tiny_raw, tmp_path, postgres_db, mlflow_db, s3_env
):
    from pipelines.aggregates import aggregate_all
    from pipelines.validate import LANDED, Settings, validate_all

    epoch_ms = int(load_params("data")["epoch_ms"])
    bucket = f"stack-{uuid.uuid4().hex[:12]}"
    storage.make_buckets([bucket])
    raw_uri = f"s3://{bucket}/globo"
    storage.land_drops(tiny_raw / "raw", raw_uri)  # every hour lands on S3; the data root starts empty
    root = tmp_path / "data"
    root.mkdir()

    params = load_params(path=ROOT / "params.yaml")
    params["paths"]["data"] = str(root)
    params["paths"]["gx"] = str(ROOT / "great_expectations")
    params["paths"]["drift_config"] = str(ROOT / "monitoring" / "drift.yaml")
    params["storage"]["raw_uri"] = raw_uri
    params["mlflow"].update(tracking_uri=mlflow_db, artifact_root=f"s3://{bucket}/mlflow")
    params["split"].update(SPLIT)
    params["train"].update(TRAIN_FAST)
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    home = tmp_path / "airflow_home"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW_CONFIG": str(ROOT / "config" / "airflow.cfg"),
        "NEWSREC_HOME": str(ROOT),
        "NEWSREC_PARAMS": str(work / "params.yaml"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres_db,
        "AIRFLOW__API_AUTH__JWT_SECRET": "postgres-test-only",
        "AIRFLOW__API__SECRET_KEY": "postgres-test-only",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }

    def airflow(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([*AIRFLOW, *args], env=env, cwd=work, capture_output=True, text=True,
                              timeout=timeout, check=False)

    migrated = airflow("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    assert _query(postgres_db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'dag_run'")[0][0] == 1

    # The hourly DAG: the sensor finds hour 2's drop on S3, it is staged into the empty root and lands.
    hourly = airflow("dags", "test", "clicks_hourly", "2017-10-01T05:00:00+00:00")
    runs = _query(postgres_db, "SELECT state FROM dag_run WHERE dag_id = 'clicks_hourly'")
    assert runs == [("success",)], (runs, hourly.stdout[-3000:], hourly.stderr[-3000:])
    assert (root / "raw" / C.CLICKS_DIR / C.hour_file_name(2)).is_file()
    assert (root / "validated" / C.CLICKS_DIR / "hour=002" / "part-0.parquet").is_file()
    tasks = dict(_query(postgres_db, "SELECT task_id, state FROM task_instance WHERE dag_id = 'clicks_hourly'"))
    assert tasks["wait_for_drop"] == tasks["stage_drop"] == tasks["validate"] == "success", tasks

    # The rest of the day arrives (staged from S3, validated, aggregated), then the daily training run.
    storage.stage_raw(raw_uri, root, storage.hours_available(raw_uri))
    results = validate_all(root, epoch_ms=epoch_ms, settings=Settings.from_params(params["validate"]),
                           gx_dir=ROOT / "great_expectations", docs=False)
    assert all(r.status == LANDED for r in results)
    aggregate_all(root, epoch_ms, int(params["aggregates"]["coclick_max_distance"]))
    # No logical date: now, after the DAG's start_date (a date before it would create no task at all).
    training = airflow("dags", "test", "train_ranker", timeout=900)
    runs = _query(postgres_db, "SELECT state FROM dag_run WHERE dag_id = 'train_ranker'")
    assert runs == [("success",)], (runs, training.stdout[-3000:], training.stderr[-3000:])

    tasks = dict(_query(postgres_db, "SELECT task_id, state FROM task_instance WHERE dag_id = 'train_ranker'"))
    assert set(tasks.values()) == {"success"} and "register" in tasks, (tasks, training.stderr[-3000:])

    # The registration is in MLflow's PostgreSQL database, the model and its bundle in S3.
    versions = _query(mlflow_db, "SELECT name, version FROM model_versions")
    assert (params["register"]["model_name"], 1) in versions
    aliases = dict(_query(mlflow_db, "SELECT alias, version FROM registered_model_aliases"))
    assert aliases.get("champion") == 1, aliases
    artifacts = storage.list_files(f"s3://{bucket}/mlflow")
    assert any(k.endswith("MLmodel") for k in artifacts)
    assert any(k.endswith("ranker.txt") for k in artifacts)
    shutil.rmtree(home, ignore_errors=True)
