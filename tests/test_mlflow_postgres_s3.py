"""The production shape of the registry: MLflow on PostgreSQL with model artifacts in S3.

A real `mlflow server` (PostgreSQL backend store on 127.0.0.1:5432, artifacts proxied to a bucket on a moto
S3 server on loopback) receives a model trained by the pipeline's own stages; the promotion gate moves
`champion` to it; the API's bundle source loads the champion back through the server. A second test has the
client talk to PostgreSQL directly and write artifacts to S3 itself (MLFLOW_S3_ENDPOINT_URL).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

MODEL = "newsrec-ranker"
METRICS_V1 = {"all": {"ndcg@10": 0.30}, "warm": {"ndcg@10": 0.35}, "cold": {"ndcg@10": 0.20}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(postgres_db, s3_env, tmp_path):
    """`mlflow server` on loopback: PostgreSQL backend, artifacts proxied to s3://<bucket>/mlflow."""
    from pipelines import storage

    bucket = f"artifacts-{uuid.uuid4().hex[:12]}"
    storage.make_buckets([bucket])
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=dict(os.environ, MLFLOW_BACKEND_STORE_URI=postgres_db,
                 MLFLOW_ARTIFACTS_DESTINATION=f"s3://{bucket}/mlflow"),
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{(tmp_path / 'mlflow-server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "bucket": bucket, "db": postgres_db}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _rows(db_url: str, sql: str) -> list[tuple]:
    import psycopg2

    dsn = db_url.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_register_promote_and_serve_through_a_postgres_s3_server(mlflow_server, serving_bundle, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from pipelines import storage
    from pipelines.registry import aliases, promote, register
    from pipelines.tracking import use_tracking
    from serving.registry_source import MlflowBundleSource

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Clients have no say in where artifacts go: artifact_root null lets the server proxy them to S3.
    use_tracking({"tracking_uri": mlflow_server["url"], "artifact_root": None, "experiment": "pg-s3"})
    try:
        version = register(serving_bundle, METRICS_V1, "window-a", MODEL, "challenger")
        client = MlflowClient()
        decision = promote(client, MODEL, "ndcg@10", 0.001, 0.0)
        assert decision.promoted, decision.reason
        assert aliases(client, MODEL) == {"champion": version, "challenger": version}
        experiment = mlflow.get_experiment_by_name("pg-s3")
        assert experiment.artifact_location.startswith("mlflow-artifacts:")
    finally:
        mlflow.set_tracking_uri("")
        mlflow.set_registry_uri("")

    # The registry lives in PostgreSQL...
    versions = _rows(mlflow_server["db"], f"SELECT version FROM model_versions WHERE name = '{MODEL}' ORDER BY 1")
    assert [v for (v,) in versions] == [1]
    alias_rows = _rows(mlflow_server["db"], "SELECT alias, version FROM registered_model_aliases ORDER BY 1")
    assert alias_rows == [("challenger", 1), ("champion", 1)]
    # ...and the model with its serving bundle in the bucket.
    keys = storage.list_files(f"s3://{mlflow_server['bucket']}/mlflow")
    bundle_files = [k for k in keys if "/bundle/" in k or "bundle" in k.split("/")]
    assert any(k.endswith("MLmodel") for k in keys) and len(bundle_files) >= 3, keys[:20]

    # The API's own loader fetches the champion back through the server (and so from S3).
    source = MlflowBundleSource(mlflow_server["url"], MODEL)
    ref = source.resolve("champion")
    assert ref is not None and str(ref.version) == "1"
    try:
        served = source.load(ref)
    finally:
        mlflow.set_tracking_uri("")
        mlflow.set_registry_uri("")
    assert served.bundle is not None


def test_client_writes_artifacts_to_s3_itself(postgres_db, s3_env, serving_bundle, tmp_path, monkeypatch):
    """No tracking server: the registry in PostgreSQL, artifacts written by the client to s3:// directly."""
    import mlflow

    from pipelines import storage
    from pipelines.registry import register
    from pipelines.tracking import use_tracking

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    bucket = f"direct-{uuid.uuid4().hex[:12]}"
    storage.make_buckets([bucket])
    use_tracking({"tracking_uri": postgres_db, "artifact_root": f"s3://{bucket}/runs", "experiment": "direct"})
    try:
        version = register(serving_bundle, METRICS_V1, "window-a", MODEL, "challenger")
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@challenger", dst_path=str(tmp_path / "dl")))
    finally:
        mlflow.set_tracking_uri("")
        mlflow.set_registry_uri("")
    assert version == "1"
    assert storage.list_files(f"s3://{bucket}/runs"), "nothing written to the bucket"
    assert (local / "MLmodel").exists()
    names = {p.name for p in local.rglob("*") if p.is_file()}
    assert {p.name for p in serving_bundle.rglob("*") if p.is_file()} <= names
