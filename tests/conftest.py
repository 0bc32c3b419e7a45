"""Shared fixtures. Each tier of tests (see pyproject markers) builds what it needs from these."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Real datasets live beside the repository (never inside it: their licences forbid committing them).
SHARED_REALDATA = ROOT.parent / "shared" / "realdata"
REALDATA = SHARED_REALDATA / "globo-news-portal-partial"
MIND_SUBSET = SHARED_REALDATA / "mind-small-subset"


@pytest.fixture(autouse=True)
def _run_from_project_root(monkeypatch):
    """CLIs read params.yaml from the working directory, as DVC runs them."""
    monkeypatch.chdir(ROOT)


def _real_dataset(path: Path, what: str) -> Path:
    """`path` when it exists; otherwise skip the test, or fail it where CI=true (CI must run every real-data test)."""
    if path.exists():
        return path
    reason = f"real {what} missing: {path} (../shared/realdata must sit beside the repository)"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def realdata_dir() -> Path:
    """The real partial Globo files (one hour of clicks, part of the metadata)."""
    return _real_dataset(REALDATA, "Globo fixture")


@pytest.fixture(scope="session")
def mind_dir() -> Path:
    """A real random subset of MIND-small's train split: behaviors.tsv (5,000 impressions) and news.tsv."""
    return _real_dataset(MIND_SUBSET, "MIND subset")


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """A data root whose raw/ holds `newsrec synth --profile tiny --seed 7` (~24 hours, ~4k clicks).

    Session-scoped and shared: copy it before changing anything inside.
    """
    from pipelines.config import load_params
    from pipelines.synth import Profile, synthesize

    params = ROOT / "params.yaml"
    root = tmp_path_factory.mktemp("tiny_root")
    profile = Profile.from_params(load_params("synth", params), "tiny")
    synthesize(root / "raw", profile, seed=7, epoch_ms=load_params("data", params)["epoch_ms"])
    return root


def _validated_copy(raw_root: Path, name: str, tmp_path_factory) -> tuple[Path, list]:
    """A copy of `raw_root`'s raw/ validated with the repo's params; every drop must land."""
    import shutil

    from pipelines.config import load_params
    from pipelines.validate import LANDED, Settings, validate_all

    params = ROOT / "params.yaml"
    root = tmp_path_factory.mktemp(name)
    shutil.copytree(raw_root / "raw", root / "raw")
    results = validate_all(root, epoch_ms=load_params("data", params)["epoch_ms"],
                           settings=Settings.from_params(load_params("validate", params)),
                           gx_dir=ROOT / "great_expectations", docs=False)
    rejected = [f"{r.kind} {r.hour:03d}: {r.reason}" for r in results if r.status != LANDED]
    assert results and not rejected, f"tiny synthetic drops failed validation: {rejected}"
    return root, results


@pytest.fixture(scope="session")
def tiny_validated(tiny_raw, tmp_path_factory) -> Path:
    """A copy of tiny_raw's data root after `validate --all`: every hour landed in validated/clicks/hour=NNN/.

    Session-scoped and shared: copy it before changing anything inside.
    """
    return _validated_copy(tiny_raw, "tiny_validated", tmp_path_factory)[0]


@pytest.fixture(scope="session")
def tiny_drops_raw(tmp_path_factory) -> Path:
    """tiny_raw's world written with `--article-drops`: raw/ holds the articles published before hour 000, and
    raw/articles/ one article drop per hour (csv + embeddings pickle) with the rest.

    Session-scoped and shared: copy it before changing anything inside.
    """
    from pipelines.config import load_params
    from pipelines.synth import Profile, synthesize

    params = ROOT / "params.yaml"
    root = tmp_path_factory.mktemp("tiny_drops_root")
    profile = Profile.from_params(load_params("synth", params), "tiny")
    synthesize(root / "raw", profile, seed=7, epoch_ms=load_params("data", params)["epoch_ms"], article_drops=True)
    return root


@pytest.fixture(scope="session")
def tiny_drops_validated(tiny_drops_raw, tmp_path_factory) -> tuple[Path, list]:
    """A copy of tiny_drops_raw's data root after `validate --all`, and the results: every drop of both kinds
    landed (validated/articles/hour=NNN/ and validated/clicks/hour=NNN/).

    Session-scoped and shared: copy it before changing anything inside.
    """
    return _validated_copy(tiny_drops_raw, "tiny_drops_validated", tmp_path_factory)


@pytest.fixture
def smtp_sink():
    """A real SMTP server on loopback (aiosmtpd) that keeps every message it receives, parsed."""
    import email
    import email.policy
    import socket

    from aiosmtpd.controller import Controller

    class Sink:
        def __init__(self) -> None:
            self.messages: list[email.message.EmailMessage] = []
            self.envelopes: list = []

        async def handle_DATA(self, server, session, envelope):
            self.envelopes.append(envelope)
            self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            return "250 OK"

    with socket.socket() as s:  # aiosmtpd 1.4 needs a concrete port to probe its own readiness
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    sink.host, sink.port = "127.0.0.1", port
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint on loopback: moto's server (HTTP, not the in-process mock), for the session.

    Yields its endpoint URL. Buckets outlive a test: each test makes its own (see `s3_env`).
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point boto3, DVC's s3fs and MLflow in this process and its children at `s3_server`."""
    from pipelines import storage

    for name, value in {
        "AWS_ENDPOINT_URL_S3": s3_server,
        "MLFLOW_S3_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    storage.s3_client.cache_clear()
    yield s3_server
    storage.s3_client.cache_clear()


@pytest.fixture(scope="session")
def serving_bundle(tiny_validated, tmp_path_factory) -> Path:
    """A serving bundle folder fitted by the real stages on a copy of tiny_validated (see serving_support)."""
    import shutil

    from serving_support import build_bundle_dir

    root = tmp_path_factory.mktemp("serving_root")
    shutil.copytree(tiny_validated, root, dirs_exist_ok=True)
    return build_bundle_dir(root, tmp_path_factory.mktemp("serving_work"))


@pytest.fixture(scope="session")
def serving_registry(serving_bundle, tmp_path_factory) -> dict:
    """A SQLite MLflow registry holding `serving_bundle` as version 1 (champion) and 2 (challenger)."""
    from serving_support import register_versions

    where = tmp_path_factory.mktemp("serving_mlflow")
    uri = f"sqlite:///{where / 'mlflow.db'}"
    versions = register_versions(serving_bundle, uri, where / "mlartifacts", "newsrec-ranker",
                                 ["champion", "challenger"])
    return {"tracking_uri": uri, "model_name": "newsrec-ranker", "versions": versions}


@pytest.fixture
def postgres_db():
    """A fresh database on the local PostgreSQL (127.0.0.1:5432, trust auth), dropped afterwards.

    Starts the machine's cluster when it is down. Yields the database's SQLAlchemy URL (psycopg2 driver).
    """
    import os
    import subprocess
    import time
    import uuid

    import psycopg2

    def connect():
        return psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3)

    try:
        admin = connect()
    except psycopg2.OperationalError:
        version = max(os.listdir("/etc/postgresql"), key=float)
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=True)
        deadline = time.time() + 30
        while True:
            try:
                admin = connect()
                break
            except psycopg2.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
    admin.autocommit = True
    name = f"newsrec_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _redis_up() -> bool:
    import shutil
    import subprocess

    cli = shutil.which("redis-cli")
    if cli is None:
        return False
    return subprocess.run([cli, "-h", "127.0.0.1", "-p", "6379", "ping"], check=False, capture_output=True, text=True,
                          timeout=5).stdout.strip() == "PONG"


@pytest.fixture(scope="session")
def redis_server() -> str:
    """URL of a real Redis on loopback (db 15, which the service never uses by default); started without
    persistence when it is not already running. Tests use their own key prefix and delete their keys."""
    import shutil
    import subprocess
    import time

    if not _redis_up():
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("redis-server is not installed on this machine")
        subprocess.run(
            [server, "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
             "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"],
            check=True, timeout=30,
        )
        for _ in range(50):
            if _redis_up():
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("redis-server did not answer after starting it")
    return "redis://127.0.0.1:6379/15"


@pytest.fixture
def redis_prefix(redis_server):
    """A key prefix of this test's own on the test Redis; its keys are deleted afterwards."""
    import uuid

    import redis

    prefix = f"newsrec-test:{uuid.uuid4().hex}:"
    yield prefix
    with redis.Redis.from_url(redis_server) as r:
        keys = r.keys(prefix + "*")
        if keys:
            r.delete(*keys)
