"""`newsrec forget-user`: one user disappears from every place the project keeps them, and stays gone."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import columns as C
from pipelines import forget_user as F
from pipelines.config import load_params

ROOT = Path(__file__).resolve().parents[1]
KEY = b"test-erasure-key-0123456789"
EPOCH_MS = int(load_params("data")["epoch_ms"])


# --- unit: the pieces -----------------------------------------------------------------------------------------


@pytest.mark.unit
def test_csv_rows_of_others_keep_their_exact_text():
    data = b"user_id,session_id,x\n7,1,a\n8,2,  b\n7,3,c\n10,4,d\n"
    out, removed = F.csv_without_user(data, 7)
    assert removed == 2
    assert out == b"user_id,session_id,x\n8,2,  b\n10,4,d\n"
    assert F.csv_without_user(data, 70) == (data, 0)
    assert F.csv_without_user(b"", 7) == (b"", 0)


@pytest.mark.unit
def test_malformed_csv_falls_back_to_lines():
    data = b'user_id,session_id\n7,1\n"8",2,extra,fields\n7\n'
    out, removed = F.csv_without_user(data, 7)
    assert removed == 2 and out == b'user_id,session_id\n"8",2,extra,fields\n'


@pytest.mark.unit
def test_gx_result_loses_the_id_only_on_user_columns():
    result = {"results": [
        {"expectation_config": {"kwargs": {"column": "user_id"}},
         "result": {"partial_unexpected_list": [7, 9, 7], "partial_unexpected_counts": [{"value": 7, "count": 2}]}},
        {"expectation_config": {"kwargs": {"column": "click_article_id"}},
         "result": {"partial_unexpected_list": [7]}},
    ]}
    scrubbed, removed = F.scrub_gx_result(result, 7)
    assert removed == 3
    assert scrubbed["results"][0]["result"] == {"partial_unexpected_list": [9], "partial_unexpected_counts": []}
    assert scrubbed["results"][1]["result"]["partial_unexpected_list"] == [7]  # an article id, not a user


@pytest.mark.unit
def test_tokens_are_keyed_and_the_key_is_required():
    assert F.user_token(5, KEY) == F.user_token(5, KEY) != F.user_token(5, KEY + b"x")
    assert len(F.user_token(5, KEY)) == 64
    with pytest.raises(F.ErasureError, match="NEWSREC_ERASURE_KEY"):
        F.erasure_key("NEWSREC_ERASURE_KEY", {})
    with pytest.raises(F.ErasureError):
        F.erasure_key("K", {"K": "short"})


@pytest.mark.unit
def test_ids_match_as_integers_not_as_text():
    data = b"user_id,session_id\n0005959,1\n 5959,2\n59590,3\n\"5959\",4\n"
    out, removed = F.csv_without_user(data, 5959)
    assert removed == 3 and out == b"user_id,session_id\n59590,3\n"
    assert F.same_id("0005959", 5959) and F.same_id(5959.0, 5959) and not F.same_id("59590", 5959)
    assert not F.same_id(True, 1) and not F.same_id("x", 5959)
    # The catalogue has no users: an article whose id equals the user's stays.
    catalogue = b"article_id,category_id\n5959,3\n"
    assert F.csv_without_user(catalogue, 5959) == (catalogue, 0)


@pytest.mark.unit
def test_gx_rows_of_the_user_leave_the_result():
    result = {"results": [{"expectation_config": {"kwargs": {"column_list": ["user_id", "session_id"]}},
                           "result": {"partial_unexpected_list": [{"user_id": "0005959", "session_id": 1},
                                                                  {"user_id": 8, "session_id": 2}]}}]}
    scrubbed, removed = F.scrub_gx_result(result, 5959)
    assert removed == 1
    assert scrubbed["results"][0]["result"]["partial_unexpected_list"] == [{"user_id": 8, "session_id": 2}]


@pytest.mark.unit
def test_bundles_temp_copies_and_gx_store_lose_the_user(tmp_path):
    from pipelines.fileio import verify_manifest, write_manifest
    from pipelines.serving_index import HISTORY_COLUMNS, load_history, save_history

    root = tmp_path / "root"
    users = root / "serving_index" / "hour=010" / "features"
    users.mkdir(parents=True)
    pd.DataFrame({C.USER_ID: [3, 7, 9], "u_clicks": [1, 2, 3]}).to_parquet(users / "users.parquet")
    np.save(users / "profiles.npy", np.array([[3.0], [7.0], [9.0]], dtype=np.float32))
    history = pd.DataFrame({c: [3, 7, 7, 9] for c in HISTORY_COLUMNS})
    save_history(history, users.parent / "history.npy")
    write_manifest(users.parent)
    # A writer's temporary copies left by a crash, and a GX result in the results store.
    part = root / "validated" / C.CLICKS_DIR / "hour=004"
    part.mkdir(parents=True)
    pd.DataFrame({C.USER_ID: [7, 8]}).to_parquet(part / ".part-0.parquet.999999.tmp")
    raw = root / "raw" / C.CLICKS_DIR
    raw.mkdir(parents=True)
    (raw / ".clicks_hour_004.csv.pid999999.ab12.tmp").write_text("user_id,session_id\n7,1\n8,2\n")
    gx = root / "gx" / "validations" / "clicks_hour" / "run"
    gx.mkdir(parents=True)
    (gx / "result.json").write_text(json.dumps({"results": [{"expectation_config": {"kwargs": {"column": "user_id"}},
                                                             "result": {"partial_unexpected_list": [7, 8]}}]}))

    report = F.ErasureReport()
    F.erase_data_root(root, 7, report)
    assert _user_rows(root, 7) == {}
    assert report.removed["derived"] == 3 and report.removed["validated"] == 1 and report.removed["raw"] == 1
    assert report.removed["gx_store"] == 1
    kept = pd.read_parquet(users / "users.parquet")[C.USER_ID].tolist()
    assert kept == [3, 9] and np.load(users / "profiles.npy")[:, 0].tolist() == [3.0, 9.0]  # still aligned
    assert load_history(users.parent / "history.npy")[C.USER_ID].tolist() == [3, 9]
    assert verify_manifest(users.parent)  # rewritten with the files
    assert pd.read_parquet(part / ".part-0.parquet.999999.tmp")[C.USER_ID].tolist() == [8]
    assert "\n7," not in (raw / ".clicks_hour_004.csv.pid999999.ab12.tmp").read_text()


# --- the whole erasure on a real (tiny) data root ----------------------------------------------------------


def _user_rows(root: Path, user_id: int) -> dict[str, int]:
    """Rows mentioning the user in every csv, parquet and jsonl file under `root`."""
    found = {}
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            n = int((frame[C.USER_ID] == str(user_id)).sum()) if C.USER_ID in frame else 0
        elif path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            n = int((frame[C.USER_ID] == user_id).sum()) if C.USER_ID in frame else 0
        elif path.suffix == ".jsonl" and path.name != "erasures.jsonl":
            n = sum(json.loads(line).get(C.USER_ID) == user_id for line in path.read_text().splitlines())
        elif path.name == "result.json":
            n = path.read_text().count(f": {user_id},") + path.read_text().count(f"[{user_id}")
        else:
            continue
        if n:
            found[str(path.relative_to(root))] = n
    return found


@pytest.fixture
def root(tiny_validated, tmp_path):
    """A private copy of the validated tiny root with aggregates, a quarantined drop and event logs."""
    from pipelines.aggregates import aggregate_hour

    root = tmp_path / "root"
    shutil.copytree(tiny_validated, root)
    epoch = EPOCH_MS
    hours = sorted(int(p.name.split("=")[1]) for p in (root / "validated" / C.CLICKS_DIR).glob("hour=*"))
    for hour in hours:
        aggregate_hour(root, hour, epoch, 5)
    return root


def _busy_user(root: Path) -> tuple[int, list[int]]:
    from pipelines.split import load_clicks

    clicks = load_clicks(root / "validated" / C.CLICKS_DIR, None, None)
    per_user = clicks.groupby(C.USER_ID)[C.HOUR].nunique()
    user = int(per_user.idxmax())
    return user, sorted(clicks.loc[clicks[C.USER_ID] == user, C.HOUR].unique().tolist())


@pytest.mark.integration
def test_forget_user_everywhere(root, tmp_path, s3_env, redis_server, monkeypatch):
    from pipelines import storage
    from pipelines.split import load_clicks
    from serving.state import RedisUserState

    user, hours = _busy_user(root)
    assert len(hours) >= 2
    other = 1 + user
    clicks_dir = root / "raw" / C.CLICKS_DIR
    before_rows = sum(len(pd.read_csv(p)) for p in clicks_dir.glob("*.csv"))

    # A quarantined drop holding the user, with a GX result that names them.
    q = root / "quarantine" / C.CLICKS_DIR / f"hour={hours[0]:03d}"
    q.mkdir(parents=True)
    shutil.copy(clicks_dir / C.hour_file_name(hours[0]), q / C.hour_file_name(hours[0]))
    (q / "result.json").write_text(json.dumps({"results": [{
        "expectation_config": {"kwargs": {"column": C.USER_ID}},
        "result": {"partial_unexpected_list": [user, other]}}]}))
    (q / "reason.txt").write_text("test quarantine\n")
    # The same drop replaced by a later delivery: validation keeps it in the archive.
    shutil.copytree(q, root / "archive" / C.CLICKS_DIR / f"hour={hours[0]:03d}" / "quarantined-20260101T000000.000000Z")
    # Serving's impression and click logs.
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "impressions.jsonl").write_text(
        "".join(json.dumps({"user_id": u, "articles": [1, 2]}) + "\n" for u in (user, other, user)))
    (logs / "clicks.jsonl").write_text(json.dumps({"user_id": user, "article_id": 3}) + "\n")
    # The online store: a real Redis on loopback, under a prefix of this test's own.
    prefix = f"newsrec-test-{uuid.uuid4().hex[:8]}:"
    store = RedisUserState(redis_server, prefix, max_clicks=10, ttl_seconds=60)
    store.add_click(user, 11, 1)
    store.add_click(user, 12, 2)
    store.add_click(other, 13, 3)
    # The same drops landed on S3 (a versioned bucket, as in terraform/), so older versions exist.
    bucket = f"forget-{uuid.uuid4().hex[:12]}"
    storage.make_buckets([bucket])
    storage.s3_client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    raw_uri = f"s3://{bucket}/globo"
    storage.land_drops(root / "raw", raw_uri, hours)
    # A derived per-user table (as features/ and candidates/ write them).
    derived = root / "features" / "snap" / "users.parquet"
    derived.parent.mkdir(parents=True)
    pd.DataFrame({C.USER_ID: [user, other, user], "clicks": [3, 4, 5]}).to_parquet(derived)
    # A validated partition as it was before the erasure, to restore afterwards.
    restored = tmp_path / "backup.parquet"
    shutil.copy(root / "validated" / C.CLICKS_DIR / f"hour={hours[0]:03d}" / "part-0.parquet", restored)
    popularity_before = pd.read_parquet(root / "aggregates" / "popularity" / f"hour={hours[0]:03d}")["users"].sum()

    assert _user_rows(root, user)
    register = root / "erasures.jsonl"
    try:
        report, record = F.forget_user(
            user, root, key=KEY, raw_uri=raw_uri,
            event_logs=[logs / "impressions.jsonl", logs / "clicks.jsonl"], state_store=store,
            epoch_ms=EPOCH_MS, coclick_max_distance=5, now=lambda: dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        )
        assert store.recent(user) == [] and len(store.recent(other)) == 1
    finally:
        store.forget(other)
        store.close()

    # Gone from every file under the data root and from the logs; other users untouched.
    assert _user_rows(root, user) == {}
    assert _user_rows(logs, user) == {}
    assert _user_rows(root, other)
    removed_raw = report.removed["raw"]
    assert removed_raw > 0 and report.removed["validated"] == removed_raw
    assert sum(len(pd.read_csv(p)) for p in clicks_dir.glob("*.csv")) == before_rows - removed_raw
    assert report.removed["quarantine"] > 0 and report.removed["derived"] == 2
    assert pd.read_parquet(derived)[C.USER_ID].tolist() == [other]
    assert report.removed["event_logs"] == 3 and report.removed["online_store"] == 2
    assert report.removed["raw_remote"] == removed_raw
    assert json.loads((q / "result.json").read_text())["results"][0]["result"]["partial_unexpected_list"] == [other]
    assert len((logs / "impressions.jsonl").read_text().splitlines()) == 1
    # S3: the rewritten drops are clean and no older version keeps the user.
    s3 = storage.s3_client()
    for hour in hours:
        key = storage.parse(storage.hour_uri(raw_uri, hour)).key
        versions = s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
        assert len(versions) == 1, versions
        text = storage.read_bytes(storage.hour_uri(raw_uri, hour)).decode()
        assert not any(line.split(",")[0] == str(user) for line in text.splitlines()[1:])
    # Aggregates were rebuilt without the user's contribution.
    popularity_after = pd.read_parquet(root / "aggregates" / "popularity" / f"hour={hours[0]:03d}")["users"].sum()
    assert popularity_after < popularity_before

    # The register holds a token, a time and counts: never the id.
    line = register.read_text()
    assert json.loads(line) == record and record["erased_at"] == "2026-01-02T03:04:05+00:00"
    assert set(record) == {"token", "erased_at", "removed", "hours", "not_reached"}
    assert record["token"] == F.user_token(user, KEY) and user not in record["removed"].values()

    # A restored pre-erasure partition still never reaches training.
    shutil.copy(restored, root / "validated" / C.CLICKS_DIR / f"hour={hours[0]:03d}" / "part-0.parquet")
    monkeypatch.setenv("NEWSREC_ERASURE_KEY", KEY.decode())
    clicks = load_clicks(root / "validated" / C.CLICKS_DIR, None, None)
    assert user not in set(clicks[C.USER_ID]) and len(clicks) > 0
    monkeypatch.delenv("NEWSREC_ERASURE_KEY")
    with pytest.raises(F.ErasureError, match="NEWSREC_ERASURE_KEY"):
        load_clicks(root / "validated" / C.CLICKS_DIR, None, None)


@pytest.mark.integration
def test_cli_asks_for_yes_then_erases(tiny_validated, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny_validated, root)
    user, _ = _busy_user(root)
    cmd = [sys.executable, "-m", "pipelines.cli", "forget-user", str(user), "--data-root", str(root)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSREC")}
    env["NEWSREC__PATHS__IMPRESSION_LOG"] = str(tmp_path / "logs" / "impressions.jsonl")
    env["NEWSREC__PATHS__CLICK_LOG"] = str(tmp_path / "logs" / "clicks.jsonl")
    env["NEWSREC__MLFLOW__TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"  # none: nothing registered

    dry = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert dry.returncode == 2 and "--yes" in dry.stderr
    assert _user_rows(root, user)
    no_key = subprocess.run([*cmd, "--yes"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert no_key.returncode == 1 and "NEWSREC_ERASURE_KEY" in no_key.stderr
    assert _user_rows(root, user)

    env["NEWSREC_ERASURE_KEY"] = KEY.decode()
    done = subprocess.run([*cmd, "--yes"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "erased: raw" in done.stdout and "not reachable from here" in done.stdout
    assert _user_rows(root, user) == {}
    assert len((root / "erasures.jsonl").read_text().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()  # no registry is created to be erased


_STAGES = """
stages:
  synth:
    cmd: python -c "import pathlib; p = pathlib.Path('data/raw/clicks'); p.mkdir(parents=True, exist_ok=True);
      (p / 'clicks_hour_000.csv').write_text('user_id,session_id\\n4242,1\\n8,2\\n4242,3\\n')"
    outs:
      - data/raw
  features:
    cmd: python -c "import pandas as pd, pathlib; pathlib.Path('data/features').mkdir(exist_ok=True);
      pd.read_csv('data/raw/clicks/clicks_hour_000.csv').to_parquet('data/features/users.parquet')"
    deps:
      - data/raw
    outs:
      - data/features
"""


def _cached_user_objects(folder: Path, user_id: int) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.name.endswith(".dir"):
            data = path.read_bytes()
            if data[:4] == b"PAR1":
                import io

                frame = pd.read_parquet(io.BytesIO(data))
                hit = C.USER_ID in frame and bool((frame[C.USER_ID] == user_id).any())
            else:
                hit = str(user_id).encode() in data
            if hit:
                hits.append(str(path))
    return hits


@pytest.mark.integration
def test_dvc_treats_the_erased_outputs_as_the_truth(tmp_path):
    """After the erasure, `dvc repro` checks nothing out of the cache (dvc.lock holds the erased outputs), and
    neither the cache nor the DVC remote keeps an object with the user's rows."""
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = str(Path(sys.executable).parent / "dvc")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run("git", "init", "-q")
    run(dvc, "init", "-q")
    run(dvc, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    (repo / "dvc.yaml").write_text(_STAGES)
    run(dvc, "repro")
    run(dvc, "push")
    assert _cached_user_objects(repo / ".dvc" / "cache", 4242) and _cached_user_objects(tmp_path / "remote", 4242)

    report, _ = F.forget_user(4242, repo / "data", key=KEY, epoch_ms=EPOCH_MS, coclick_max_distance=5)
    assert report.removed["raw"] == 2 and report.removed["derived"] == 2 and report.removed["dvc_cache"] > 0
    assert any("DVC:" in note for note in report.notes)

    assert "synth" not in run(dvc, "status") and "features" not in run(dvc, "status")
    out = run(dvc, "repro")
    assert "Restored" not in out and "Running stage" not in out, out
    assert _user_rows(repo / "data", 4242) == {}
    assert _cached_user_objects(repo / ".dvc" / "cache", 4242) == []
    assert _cached_user_objects(tmp_path / "remote", 4242) == []
    assert "new:" not in run(dvc, "status", "--cloud")  # the erased versions were pushed


@pytest.mark.integration
def test_a_regenerated_dataset_does_not_make_an_erased_user_again(tmp_path, monkeypatch):
    """The demo's raw data is a DVC stage (synth): when it runs again, the users in the register stay erased."""
    from pipelines.config import load_params
    from pipelines.synth import Profile, synthesize

    profile = Profile.from_params(load_params("synth"), "tiny")
    epoch = load_params("data")["epoch_ms"]

    def users(root: Path) -> pd.Series:
        return pd.concat(pd.read_csv(p) for p in (root / "raw" / C.CLICKS_DIR).glob("*.csv"))[C.USER_ID]

    synthesize(tmp_path / "first" / "raw", profile, seed=3, epoch_ms=epoch, hours=6)
    user = int(users(tmp_path / "first").value_counts().index[0])
    root = tmp_path / "again"
    root.mkdir()
    F.record_erasure(root / "erasures.jsonl", user, KEY, F.ErasureReport(), dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    monkeypatch.setenv("NEWSREC_ERASURE_KEY", KEY.decode())
    synthesize(root / "raw", profile, seed=3, epoch_ms=epoch, hours=6)
    again = users(root)
    assert user not in set(again) and len(again) == len(users(tmp_path / "first")) - (users(tmp_path / "first") == user).sum()


@pytest.mark.unit
def test_only_stages_the_erasure_alone_changed_are_committed():
    status = {
        "synth": [{"changed outs": {"data/raw": "modified"}}],
        "validate": [{"changed deps": {"data/raw": "modified"}}, {"changed outs": {"data/validated": "modified"}}],
        "split": [{"changed deps": {"data/validated": "modified"}}],  # runs again: nothing to commit
        "features": [{"changed deps": {"data/validated": "modified", "pipelines/features.py": "modified"}},
                     {"changed outs": {"data/features": "modified"}}],  # code changed too: reproduce it
        "candidates": [{"changed outs": {"data/candidates": "deleted"}}],
        "train": [{"changed deps": {"params.yaml": {"train.seed": "modified"}}},
                  {"changed outs": {"models/ranker": "modified"}}],
    }
    assert F.stages_to_commit(status) == (["synth", "validate"], ["features", "candidates", "train"])


@pytest.mark.integration
def test_registry_artifacts_on_s3_are_rewritten_and_versions_tagged(s3_env, tmp_path):
    """A registry whose artifacts live in an object store (compose and AWS): the bundle files are downloaded,
    rewritten without the user, uploaded over the old ones with their manifest, and every version is tagged."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines import storage
    from pipelines.fileio import verify_manifest, write_manifest

    bucket = f"artifacts-{uuid.uuid4().hex[:12]}"
    storage.make_buckets([bucket])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, uri)
    exp = client.create_experiment("erasure", artifact_location=f"s3://{bucket}/mlflow")
    bundle = tmp_path / "bundle"
    (bundle / "features").mkdir(parents=True)
    pd.DataFrame({C.USER_ID: [5, 7], "u_clicks": [1, 2]}).to_parquet(bundle / "features" / "users.parquet")
    write_manifest(bundle)
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(bundle), "bundle")
    client.create_registered_model("ranker")
    client.create_model_version("ranker", f"runs:/{run.info.run_id}/bundle", run.info.run_id)

    registry = F.ModelRegistry(client, "ranker", "erasure", epoch_ms=0)
    report = F.ErasureReport()
    F.erase_model_registry(registry, 7, pd.DataFrame(columns=[C.USER_ID, C.CLICK_ARTICLE_ID, C.CLICK_TIMESTAMP]),
                           report, dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    assert report.removed["model_registry"] == 1
    back = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="bundle",
                                                    dst_path=str(tmp_path / "back")))
    assert pd.read_parquet(back / "features" / "users.parquet")[C.USER_ID].tolist() == [5]
    assert verify_manifest(back)
    assert client.get_model_version("ranker", "1").tags["erasure.last_at"] == "2026-01-02T00:00:00+00:00"
