"""Airflow DAGs: they import cleanly into the expected task graphs, and each runs end to end with
`dag.test()` on the tiny profile, against a throwaway Airflow home (SQLite) and the repo's airflow.cfg."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import flows
from pipelines.config import load_params

pytestmark = pytest.mark.dag

ROOT = Path(__file__).resolve().parents[1]
DAG_IDS = {"clicks_hourly", "train_ranker", "drift_monitor"}
HEAVY = ("great_expectations", "mlflow", "evidently", "lightgbm", "faiss", "duckdb", "pandas")
EPOCH_MS = int(load_params("data", ROOT / "params.yaml")["epoch_ms"])
# Windows small enough for a 24-hour dataset (as the serving tests use), and a quick booster.
SPLIT = {"test_hours": 3, "val_hours": 3, "label_hours": 3, "train_snapshots": 3, "min_history_hours": 9}
TRAIN_FAST = {"num_boost_round": 60, "early_stopping_rounds": 20}


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """A fresh Airflow metadata DB, configured by config/airflow.cfg like `make airflow`.

    Airflow reads its configuration once, when it is first imported: this must run before that.
    """
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW_CONFIG": str(ROOT / "config" / "airflow.cfg"),
        "NEWSREC_HOME": str(ROOT),
        "AIRFLOW__API_AUTH__JWT_SECRET": "dag-tests-only",
        "AIRFLOW__API__SECRET_KEY": "dag-tests-only",
    }
    if "airflow" in sys.modules:
        from airflow.configuration import conf

        if conf.get("core", "dags_folder") != str(ROOT / "dags"):
            pytest.fail("Airflow was imported before the DAG tests configured it; run tests/test_dags.py alone")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from airflow.utils.db import initdb

    initdb()
    yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def dagbag(airflow_home):
    from airflow.models.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"), include_examples=False)


def write_params(folder: Path, data_root: Path, smtp=None, **sections) -> Path:
    """A params.yaml for one test: the repo's, pointed at `data_root` and at loopback services."""
    params = load_params(path=ROOT / "params.yaml")
    params["paths"]["data"] = str(data_root)
    params["paths"]["gx"] = str(ROOT / "great_expectations")
    params["paths"]["drift_config"] = str(ROOT / "monitoring" / "drift.yaml")
    if smtp is not None:
        params["alerts"].update(smtp_host=smtp.host, smtp_port=smtp.port)
    for section, values in sections.items():
        params[section] = {**params[section], **values}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ structure


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == DAG_IDS


def test_task_graphs(dagbag):
    def edges(dag_id):
        dag = dagbag.dags[dag_id]
        return {(t.task_id, d) for t in dag.tasks for d in sorted(t.downstream_task_ids)}

    assert edges("clicks_hourly") == {
        ("wait_for_drop", "stage_drop"), ("stage_drop", "validate"),
        ("validate", "aggregates"), ("validate", "alert_quarantined"), ("validate", "refresh_index"),
        ("aggregates", "refresh_index"),
    }
    assert edges("train_ranker") == {
        ("split", "learned"), ("learned", "candidates"), ("split", "features"), ("candidates", "train"),
        ("features", "train"),
        ("train", "evaluate"), ("evaluate", "register"), ("register", "lineage"), ("lineage", "promote"),
        ("promote", "publish"),
    }
    # what the lineage task commits to dvc.lock is exactly the stages the DAG runs
    assert set(flows.TRAIN_STAGES) == set(dagbag.dags["train_ranker"].task_ids) - {"lineage", "promote", "publish"}
    assert edges("drift_monitor") == {("windows", "report"), ("report", "alert_drift")}


def test_out_of_the_box_nothing_runs_unless_triggered_and_triggers_run(dagbag):
    """The data replays 2017: switching a DAG on must not start a wall-clock hour or a retrain, and a DAG
    that runs only when triggered starts unpaused, so the README's `airflow dags trigger` runs at once."""
    for dag_id in ("clicks_hourly", "train_ranker"):
        dag = dagbag.dags[dag_id]
        assert dag.timetable.summary == "None", dag_id
        assert dag.is_paused_upon_creation is False, dag_id
    drift = dagbag.dags["drift_monitor"]
    assert not drift.timetable.periodic and flows.MODEL_ASSET in str(drift.timetable.asset_condition)
    assert drift.is_paused_upon_creation is False
    hourly = dagbag.dags["clicks_hourly"]
    assert hourly.max_active_runs == 1  # triggered hours are validated in the order they were triggered
    assert hourly.params["hour"] is None  # the Trigger form's hour number, empty: from the logical date
    assert hourly.get_task("wait_for_drop").mode == "reschedule"
    assert hourly.get_task("validate").depends_on_past
    outlets = [a.name for a in dagbag.dags["train_ranker"].get_task("publish").outlets]
    assert outlets == [flows.MODEL_ASSET]
    assert all(t.retries == 0 for d, t in (("clicks_hourly", "alert_quarantined"), ("drift_monitor", "alert_drift"))
               for t in [dagbag.dags[d].get_task(t)])
    for dag in dagbag.dags.values():
        assert dag.dagrun_timeout is not None
        assert all(t.execution_timeout is not None for t in dag.tasks if t.task_id != "wait_for_drop")


def test_schedules_from_params_map_runs_to_hours_and_chain_training_to_drift(airflow_home, tmp_path, monkeypatch):
    from airflow.models.dagbag import DagBag

    params = write_params(tmp_path, tmp_path / "data",
                          schedule={"clicks_hourly": True, "train_ranker": "@daily", "drift_monitor": "0 */6 * * *"})
    monkeypatch.setenv(flows.PARAMS_ENV, str(params))
    bag = DagBag(dag_folder=str(ROOT / "dags"), include_examples=False)
    assert bag.import_errors == {}
    hourly = bag.dags["clicks_hourly"]
    assert hourly.start_date == flows.epoch_datetime(EPOCH_MS) and not hourly.catchup
    interval = hourly.timetable.infer_manual_data_interval(run_after=flows.hour_start(10, EPOCH_MS))
    assert flows.hour_of(interval.end, EPOCH_MS) == 10  # hourly intervals aligned on the epoch
    assert hourly.max_active_runs == 4 and hourly.is_paused_upon_creation is None  # backfills run in parallel
    assert bag.dags["train_ranker"].timetable.summary == "0 0 * * *"  # @daily
    drift = bag.dags["drift_monitor"].timetable
    assert drift.periodic and flows.MODEL_ASSET in str(drift.asset_condition)


def test_parsing_the_dags_imports_nothing_heavy(airflow_home):
    code = (
        "import sys\nfrom airflow.models.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r}, include_examples=False)\n"
        "assert not bag.import_errors, bag.import_errors\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    (loaded,) = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert loaded == "HEAVY="


# ------------------------------------------------------------------------------------------ clicks_hourly


@pytest.fixture
def hourly_root(tiny_raw, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_raw / "raw", root / "raw")
    return root


def run_hours(dagbag, hours):
    dag = dagbag.dags["clicks_hourly"]
    return {h: dag.test(logical_date=flows.hour_start(h, EPOCH_MS)) for h in hours}


def test_backfilling_hours_twice_gives_identical_files(dagbag, hourly_root, tmp_path, monkeypatch):
    monkeypatch.setenv(flows.PARAMS_ENV, str(write_params(tmp_path / "work", hourly_root)))
    outputs = []
    for _ in range(2):
        runs = run_hours(dagbag, [0, 1, 2])
        for hour, run in runs.items():
            assert str(run.state) == "success", (hour, states(run))
            assert states(run)["alert_quarantined"] == "skipped"
        outputs.append({part: digest(hourly_root / part) for part in ("validated/clicks", "aggregates")})
        # each landed hour published the serving index at its end; the live one is the newest
        assert json.loads((hourly_root / "serving_index" / "CURRENT.json").read_text())["cutoff_hour"] == 3
    assert outputs[0] == outputs[1]
    assert sorted(outputs[0]["validated/clicks"]) == [f"hour={h:03d}/part-0.parquet" for h in (0, 1, 2)]
    assert {p.split("/")[0] for p in outputs[0]["aggregates"]} == {"popularity", "coclick"}


def test_quarantined_drop_sends_an_alert_and_the_run_succeeds(dagbag, hourly_root, tmp_path, monkeypatch,
                                                              smtp_sink):
    from pipelines.baddrops import inject_bad_drop

    inject_bad_drop(hourly_root / "raw" / "clicks", 5, "click_before_session")
    # Aggregates from an earlier landing of hour 5: the replay that quarantines it must remove them.
    stale = hourly_root / "aggregates" / "coclick" / "hour=005"
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "part-0.parquet").write_bytes(b"from an earlier run")
    monkeypatch.setenv(flows.PARAMS_ENV, str(write_params(tmp_path / "work", hourly_root)))
    # Inside Airflow the alert goes through Airflow's SMTP connection (here: the loopback sink).
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT",
                       f"smtp://{smtp_sink.host}:{smtp_sink.port}?from_email=airflow%40newsrec.test")

    run = run_hours(dagbag, [5])[5]

    assert str(run.state) == "success", states(run)
    assert states(run) == {"wait_for_drop": "success", "stage_drop": "success", "validate": "success",
                           "aggregates": "skipped", "refresh_index": "skipped", "alert_quarantined": "success"}
    assert (hourly_root / "quarantine" / "clicks" / "hour=005" / "reason.txt").is_file()
    assert not (hourly_root / "validated" / "clicks" / "hour=005").exists()
    assert not stale.exists()
    (msg,) = smtp_sink.messages
    assert msg["Subject"] == "[newsrec] quarantined hourly drop 005"
    assert msg["From"] == "airflow@newsrec.test"
    body = msg.get_body(("plain",)).get_content()
    assert "click_timestamp" in body or "session" in body
    assert {a.get_filename() for a in msg.iter_attachments()} == {"reason.txt", "result.json"}


def test_triggered_by_hour_number_without_a_mail_server_a_quarantined_hour_ends_at_once(airflow_home, hourly_root,
                                                                                        tmp_path, monkeypatch):
    """The Trigger form's `hour` (no logical date) picks the hour. With the default SMTP settings and no
    server listening, the alert is tried once and skipped with the reason; the run succeeds at once and
    the quarantine shows in the grid (aggregates and refresh_index skipped)."""
    import socket
    import time

    from pipelines.baddrops import inject_bad_drop

    inject_bad_drop(hourly_root / "raw" / "clicks", 5, "click_before_session")
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(flows.PARAMS_ENV, str(write_params(tmp_path / "work", hourly_root,
                                                          alerts={"smtp_host": "127.0.0.1", "smtp_port": port})))
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)

    # A DAG object of its own: in-process, Airflow writes a run's conf into the DAG's Param objects, so the
    # shared one would hand hour 5 to every later test run (task processes of a real deployment parse anew).
    from airflow.models.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags"), include_examples=False).dags["clicks_hourly"]
    started = time.monotonic()
    run = dag.test(logical_date=None, run_conf={"hour": 5})

    assert time.monotonic() - started < 120  # no half hour of alert retries
    assert str(run.state) == "success", states(run)
    assert states(run) == {"wait_for_drop": "success", "stage_drop": "success", "validate": "success",
                           "aggregates": "skipped", "refresh_index": "skipped", "alert_quarantined": "skipped"}
    assert (hourly_root / "quarantine" / "clicks" / "hour=005" / "reason.txt").is_file()


def test_a_missing_drop_keeps_the_sensor_waiting(dagbag, hourly_root, tmp_path, monkeypatch):
    monkeypatch.setenv(flows.PARAMS_ENV, str(write_params(tmp_path / "work", hourly_root)))
    p = flows.project(flows.params_file())
    assert flows.drop_available(p["paths"]["data"], 23)
    assert not flows.drop_available(p["paths"]["data"], 24)  # tiny has hours 0-23


def test_an_hours_article_drop_is_validated_before_its_clicks_and_reported(dagbag, tiny_drops_raw, tmp_path,
                                                                          monkeypatch, smtp_sink):
    root = tmp_path / "data"
    shutil.copytree(tiny_drops_raw / "raw", root / "raw")
    # Hour 1's new articles come without their embeddings; its clicks read older articles only.
    (root / "raw" / "articles" / "embeddings_hour_001.pickle").unlink()
    monkeypatch.setenv(flows.PARAMS_ENV, str(write_params(tmp_path / "work", root)))
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT",
                       f"smtp://{smtp_sink.host}:{smtp_sink.port}?from_email=airflow%40newsrec.test")

    runs = run_hours(dagbag, [0, 1])

    mine = ("validate", "aggregates", "alert_quarantined")
    first, second = ([states(runs[h])[t] for t in mine] for h in (0, 1))
    assert first == ["success", "success", "skipped"]
    assert (root / "validated" / "articles" / "hour=000" / "embeddings.npy").is_file()
    assert second == ["success", "success", "success"]
    assert (root / "validated" / "clicks" / "hour=001" / "part-0.parquet").is_file()
    assert (root / "quarantine" / "articles" / "hour=001" / "reason.txt").is_file()
    (msg,) = smtp_sink.messages
    assert msg["Subject"] == "[newsrec] quarantined article drop 001"
    assert "embeddings missing" in msg.get_body(("plain",)).get_content()


# ------------------------------------------------------------------------------------------ training + drift


@pytest.fixture(scope="module")
def trained(dagbag, tmp_path_factory):
    """A validated tiny dataset with a context shift from hour 18, its aggregates, and one train_ranker run."""
    from pipelines.aggregates import aggregate_all
    from pipelines.synth import Profile, synthesize
    from pipelines.validate import LANDED, Settings, validate_all

    work = tmp_path_factory.mktemp("train_work")
    root = work / "data"
    profile = Profile.from_params(load_params("synth", ROOT / "params.yaml"), "tiny")
    synthesize(root / "raw", profile, seed=7, epoch_ms=EPOCH_MS, drift_from=18, drift_kind="context")
    results = validate_all(root, epoch_ms=EPOCH_MS,
                           settings=Settings.from_params(load_params("validate", ROOT / "params.yaml")),
                           gx_dir=ROOT / "great_expectations", docs=False)
    assert all(r.status == LANDED for r in results), [r.reason for r in results if r.status != LANDED]
    aggregate_all(root, EPOCH_MS, int(load_params("aggregates", ROOT / "params.yaml")["coclick_max_distance"]))
    params = write_params(work, root, split=SPLIT, train=TRAIN_FAST, paths={"drift_reports": str(work / "reports")})
    mp = pytest.MonkeyPatch()
    mp.setenv(flows.PARAMS_ENV, str(params))
    run = dagbag.dags["train_ranker"].test()
    mp.undo()
    return {"work": work, "root": root, "params": params, "run": run}


def test_train_ranker_trains_registers_and_gates(trained):
    run, work = trained["run"], trained["work"]
    assert str(run.state) == "success", states(run)
    assert set(states(run).values()) == {"success"}
    for produced in ("data/split.json", "models/ranker", "metrics/eval.json", "models/registered.json"):
        assert (work / produced).exists(), produced
    p = flows.project(trained["params"])
    from mlflow import MlflowClient

    from pipelines.tracking import use_tracking

    use_tracking(p["mlflow"])
    champion = MlflowClient().get_model_version_by_alias(p["register"]["model_name"], "champion")
    assert flows.champion_test_start(p) == (21, str(champion.version))  # tiny: hours 0-23, test 21-23

    # what an engineer deciding on the version reads in the MLflow UI: its card, lineage, data, curve
    from pipelines import model_card as card

    assert champion.description.startswith(f"# {p['register']['model_name']} v{champion.version}")
    for section in ("## Test metrics, as served", "## Known limits", "## Lineage", "reranker / best baseline"):
        assert section in champion.description
    assert len(champion.tags[card.TAG_COMMIT]) in (40, len("unknown")) and champion.tags[card.TAG_PARAMS]
    assert champion.tags[card.TAG_HOURS] == "0-23 (24 hours)"
    # this folder is no DVC repository: the lineage task says so instead of committing anything
    assert champion.tags[card.TAG_PUSHED].startswith("not recorded: ")
    client = MlflowClient()
    run = client.get_run(champion.run_id)
    assert run.info.run_name.startswith("ranker to hour 24") and run.data.tags[card.TAG_COMMIT]
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["validated clicks (bytes per hour)"]
    curve = client.get_metric_history(champion.run_id, f"val_ndcg_at_{p['train']['eval_at']}_by_round")
    assert len(curve) >= int(run.data.metrics["best_iteration"]) and curve[0].step == 1
    assert {"model_card.md", "importance_gain.png"} <= {a.path for a in client.list_artifacts(champion.run_id)}
    assert "evaluation/eval_report.html" in {a.path for a in client.list_artifacts(champion.run_id, "evaluation")}


@pytest.mark.timeout(1800)
def test_train_ranker_in_a_dvc_checkout_leaves_dvc_lock_current_and_the_data_hashes_on_the_version(
        dagbag, tmp_path, monkeypatch):
    """The hourly side as DVC knows it (`dvc repro aggregates`), then one train_ranker run in the same git + DVC
    checkout: nothing is stale for `dvc status` afterwards, the data is in the checkout's DVC remote, and the
    registered version carries the md5 of each data input of train and evaluate, as dvc.lock records them."""
    from mlflow import MlflowClient
    from test_e2e_dvc import tiny_checkout

    from pipelines import model_card as card
    from pipelines.tracking import use_tracking

    repo, bin_dir, env = tiny_checkout(tmp_path)

    def dvc(*args: str) -> str:
        done = subprocess.run([str(bin_dir / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    dvc("repro", "aggregates")
    monkeypatch.setenv(flows.PARAMS_ENV, str(repo / "params.yaml"))
    # The DAG runs in this process, which reads the tracking URI from params (relative: the checkout's mlflow.db).
    for key in [k for k in os.environ if k.startswith("NEWSREC__")]:
        monkeypatch.delenv(key)

    run = dagbag.dags["train_ranker"].test()

    assert str(run.state) == "success", states(run)
    assert json.loads(dvc("status", "--json") or "{}") == {}  # the DAG's stages are in dvc.lock, nothing stale
    assert json.loads(dvc("status", "--cloud", "--json") or "{}") == {}  # and their data is in the remote
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    registered = json.loads((repo / "models" / "registered.json").read_text())
    p = flows.project(repo / "params.yaml")
    use_tracking(p["mlflow"])
    client = MlflowClient()
    version = client.get_model_version(registered["model_name"], registered["version"])
    recorded = {k: v for k, v in version.tags.items() if k.startswith(card.TAG_DATA_MD5)}
    lock_deps = {d["path"]: d["md5"] for stage in flows.READ_BY_MODEL for d in lock["stages"][stage]["deps"]}
    assert recorded == {card.TAG_DATA_MD5 + path: md5 for path, md5 in lock_deps.items()
                        if not path.endswith(".py")}
    for path in ("data/validated", "data/aggregates", "data/features", "data/candidates", "models/ranker"):
        assert recorded[card.TAG_DATA_MD5 + path] == lock_deps[path], path
    assert version.tags[card.TAG_PUSHED].startswith("remote local: ")
    assert version.tags[card.TAG_DVC] == card.sha256(repo / "dvc.lock")
    artifacts = {a.path for a in client.list_artifacts(version.run_id, flows.LINEAGE_ARTIFACT)}
    assert artifacts == {f"{flows.LINEAGE_ARTIFACT}/dvc.lock"}


def test_a_kept_champion_shows_as_a_skipped_promote_and_drift_still_follows(trained, dagbag, monkeypatch):
    """Gating the same challenger again refuses it (it is champion already): `promote` is skipped, saying
    why, and `publish` still updates the asset drift_monitor follows."""
    monkeypatch.setenv(flows.PARAMS_ENV, str(trained["params"]))
    gate = dagbag.dags["train_ranker"].partial_subset(task_ids=["promote", "publish"], include_upstream=False)

    run = gate.test()

    assert states(run) == {"promote": "skipped", "publish": "success"}
    assert str(run.state) == "success"


def test_drift_monitor_reports_against_the_champion_window_and_alerts(trained, dagbag, monkeypatch, smtp_sink):
    # A new file beside the training params (same folder, so the same relative paths): params files are
    # cached per path for the life of a process, and this one stays alive across tasks.
    params = yaml.safe_load(trained["params"].read_text())
    params["alerts"].update(smtp_host=smtp_sink.host, smtp_port=smtp_sink.port)
    alerting = trained["params"].with_name(f"params-{smtp_sink.port}.yaml")
    alerting.write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv(flows.PARAMS_ENV, str(alerting))

    run = dagbag.dags["drift_monitor"].test()

    assert str(run.state) == "success", states(run)
    (run_dir,) = (trained["work"] / "reports").iterdir()
    summary = flows.read_json(run_dir / "summary.json")
    assert summary["reference_hours"] == "0-17" and summary["current_hours"] == "18-23"
    assert summary["reference_basis"].startswith("champion v")
    assert {"features", "scores"} == set(summary["reports"])
    assert "scores.model_score" in summary["columns"]
    # The context shift from hour 18 is what drifted, and it was emailed with the reports.
    assert summary["drift_detected"] and "features.click_referrer_type" in summary["drifted_columns"]
    (msg,) = smtp_sink.messages
    assert msg["Subject"].startswith("[newsrec] drift detected (current hours 18-23)")
    assert {a.get_filename() for a in msg.iter_attachments()} >= {"summary.json", "features.html"}


# ---------------------------------------------------------------------------- freshness, end to end


def test_an_article_published_in_hour_h_is_served_from_hour_h_plus_1(dagbag, tiny_drops_raw, serving_bundle,
                                                                     tmp_path, monkeypatch):
    """Hour 2's article drop goes through clicks_hourly (validate, aggregates, refresh_index) and the API,
    following the published serving index, serves it at hour 3 and not before."""
    import pandas as pd
    from fastapi.testclient import TestClient
    from serving_support import EarlierChampion

    from pipelines import columns as C
    from serving.app import create_app
    from serving.settings import Settings

    root = tmp_path / "data"
    shutil.copytree(tiny_drops_raw / "raw", root / "raw")
    monkeypatch.setenv(flows.PARAMS_ENV, str(write_params(tmp_path / "work", root)))
    settings = Settings.from_params(impression_log=tmp_path / "i.jsonl", click_log=tmp_path / "c.jsonl").with_(
        index_dir=root / "serving_index", hourly_index=True, explore_share=0.5, explore_fresh_hours=1.0,
        challenger_share=0.0, clock="cutoff", live_refresh_seconds=0)

    def served(fresh_ids):
        app = create_app(settings, source=EarlierChampion(serving_bundle, 0), poll=False)
        with TestClient(app) as client:
            index = client.get("/v1/models").json()["champion"]["index"]
            found = {a: client.get(f"/v1/articles/{a}").status_code for a in fresh_ids}
            items = client.get("/v1/users/999999999/recommendations", params={"k": 40}).json()["items"]
        return index, found, {i["article_id"] for i in items}

    runs = run_hours(dagbag, [0, 1])
    assert all(str(r.state) == "success" for r in runs.values()), {h: states(r) for h, r in runs.items()}
    drop = pd.read_parquet(root / "validated" / "articles" / "hour=002" / "part-0.parquet") if (
        root / "validated" / "articles" / "hour=002").exists() else None
    assert drop is None  # hour 2 has not landed yet
    hour2 = pd.read_csv(root / "raw" / C.ARTICLES_DIR / C.hour_file_name(2, "articles"))
    fresh = hour2[C.ARTICLE_ID].tolist()[:5]
    index, found, listed = served(fresh)
    assert index["cutoff_hour"] == 2 and set(found.values()) == {404} and not listed & set(fresh)

    run = run_hours(dagbag, [2])[2]
    assert str(run.state) == "success", states(run)
    assert states(run)["refresh_index"] == "success"
    index, found, listed = served(fresh)
    assert index["source"] == "hourly" and index["cutoff_hour"] == 3
    assert set(found.values()) == {200}
    assert listed & set(fresh), "a fresh article of hour 2 is in a cold user's list at hour 3 (exploration)"
