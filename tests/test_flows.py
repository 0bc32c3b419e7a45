"""What the DAGs do around the steps: hour of a run, stage commands from dvc.yaml, alert texts (unit)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from pipelines import flows
from pipelines.config import load_params

EPOCH_MS = 1506826800000  # 2017-10-01 03:00 UTC, Globo's hour 000


@pytest.mark.unit
def test_a_runs_logical_date_is_the_start_of_its_hour():
    start = datetime(2017, 10, 1, 3, tzinfo=UTC)
    assert flows.epoch_datetime(EPOCH_MS) == start
    assert flows.hour_of(start, EPOCH_MS) == 0
    assert flows.hour_of(start + timedelta(hours=384), EPOCH_MS) == 384
    for hour in (0, 7, 100):
        assert flows.hour_of(flows.hour_start(hour, EPOCH_MS), EPOCH_MS) == hour


@pytest.mark.unit
@pytest.mark.parametrize(
    ("when", "message"),
    [
        (datetime(2017, 10, 1, 3, 30, tzinfo=UTC), "not the start of an hour"),
        (datetime(2017, 10, 1, 2, tzinfo=UTC), "before hour 000"),
        (datetime(2017, 10, 1, 3), "no time zone"),
        (None, "no logical date"),
    ],
)
def test_logical_dates_that_are_no_hour_are_refused(when, message):
    with pytest.raises(ValueError, match=message):
        flows.hour_of(when, EPOCH_MS)


@pytest.mark.unit
def test_a_run_names_its_hour_by_number_or_by_logical_date():
    assert flows.run_hour(5, None, EPOCH_MS) == 5  # triggered with {"hour": 5}, no logical date
    assert flows.run_hour(5, datetime(2026, 12, 1, 0, 17, tzinfo=UTC), EPOCH_MS) == 5  # the number wins
    assert flows.run_hour(None, flows.hour_start(7, EPOCH_MS), EPOCH_MS) == 7
    with pytest.raises(ValueError, match="neither an `hour` param nor a logical date"):
        flows.run_hour(None, None, EPOCH_MS)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="not an hour number"):
            flows.run_hour(bad, None, EPOCH_MS)


@pytest.mark.unit
def test_the_sensor_says_where_it_waits(tmp_path):
    where = flows.drop_location(tmp_path / "data", 7)
    assert str((tmp_path / "data" / "raw" / "clicks" / "clicks_hour_007.csv").resolve()) in where
    assert "clicks.zip" in where and "hour=007" in where
    assert flows.drop_location("data", 7, "s3://bucket/raw") == "s3://bucket/raw/clicks/clicks_hour_007.csv"


@pytest.mark.unit
def test_nothing_is_scheduled_unless_params_say_so():
    params = load_params()
    assert {flows.scheduled(params, d) for d in ("clicks_hourly", "train_ranker", "drift_monitor")} == {None}
    assert flows.scheduled({"schedule": {"train_ranker": "@daily"}}, "train_ranker") == "@daily"
    assert flows.scheduled({}, "clicks_hourly") is None


@pytest.mark.unit
def test_the_promotion_decision_reads_as_one_line():
    kept = {"promoted": False, "reason": "gain -0.0100", "challenger": "5", "champion": "4"}
    assert flows.promotion_summary(kept) == "kept champion v4: gain -0.0100"
    assert flows.promotion_summary({**kept, "promoted": True, "reason": "wins"}) == "promoted v5: wins"


@pytest.mark.unit
def test_stage_commands_come_from_dvc_yaml_with_params_filled_in(tmp_path):
    params = load_params()
    params["paths"] = {**params["paths"], "data": "/data/with space"}
    argv = flows.stage_command("train", params)
    assert argv[0] == "train"
    assert argv[argv.index("--split") + 1] == "/data/with space/split.json"
    dvc = tmp_path / "dvc.yaml"
    dvc.write_text("stages:\n  a:\n    cmd: newsrec x --y ${nope.key}\n  b:\n    cmd: mkdir -p z && newsrec x\n")
    with pytest.raises(KeyError, match="nope.key"):
        flows.stage_command("a", params, dvc)
    with pytest.raises(ValueError, match="not a single newsrec command"):
        flows.stage_command("b", params, dvc)
    with pytest.raises(KeyError, match="no stage 'c'"):
        flows.stage_command("c", params, dvc)


@pytest.mark.unit
def test_training_outputs_are_the_train_stages_paths(tmp_path):
    params = load_params()
    params["paths"] = {**params["paths"], "data": str(tmp_path / "root")}
    assert flows.training_outputs(params) is None  # nothing trained yet


@pytest.mark.unit
def test_run_folders_are_file_system_safe():
    assert flows.run_folder("scheduled__2017-10-01T03:00:00+00:00") == "scheduled__2017-10-01T03_00_00_00_00"
    assert flows.run_folder("manual/../x") == "manual_.._x"


@pytest.mark.unit
def test_project_reads_paths_against_the_params_folder_and_never_changes_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    params_file = tmp_path / "project" / "params.yaml"
    params_file.write_text("paths: {data: d, drift_reports: monitoring/reports}\n"
                           "mlflow: {tracking_uri: 'sqlite:///mlflow.db', artifact_root: mlartifacts}\n")
    monkeypatch.chdir(tmp_path)
    p = flows.project(params_file)
    assert Path.cwd() == tmp_path
    project = (tmp_path / "project").resolve()
    assert p["paths"] == {"data": str(project / "d"), "drift_reports": str(project / "monitoring" / "reports")}
    assert p["mlflow"] == {"tracking_uri": f"sqlite:///{project / 'mlflow.db'}",
                           "artifact_root": str(project / "mlartifacts")}


@pytest.mark.unit
def test_quarantine_alert_names_the_hour_the_reason_and_the_files(tmp_path):
    folder = tmp_path / "quarantine" / "clicks" / "hour=005"
    folder.mkdir(parents=True)
    (folder / "reason.txt").write_text("null_ids: 12 rows with a null user_id\n")
    (folder / "result.json").write_text(json.dumps({"success": False}))
    result = {"hour": 5, "status": "quarantined", "rows": 180, "checks": ["null_ids"],
              "reason": "null_ids: 12 rows with a null user_id", "path": "quarantine/clicks/hour=005",
              "source": "raw/clicks/clicks_hour_005.csv"}
    subject, body, files = flows.quarantine_alert(tmp_path, result, EPOCH_MS, tmp_path / "params.yaml")
    assert subject == "quarantined hourly drop 005"
    assert "2017-10-01 08:00-09:00 UTC" in body and "null_ids: 12 rows" in body and "180 rows" in body
    assert [f.name for f in files] == ["reason.txt", "result.json"]
    # The fix advice is the whole step: validating alone would leave the hour without its aggregates.
    assert """airflow dags trigger clicks_hourly --conf '{"hour": 5}'""" in body
    steps = [line.strip() for line in body.splitlines() if line.strip().startswith("newsrec ")]
    assert [s.split()[1] for s in steps] == ["validate", "aggregates", "refresh"]
    assert all(f"--data-root {tmp_path} --hour 5 --params {tmp_path / 'params.yaml'}" in s for s in steps)


@pytest.mark.unit
def test_an_hours_outcome_carries_its_article_drop_and_alerts_name_it(tmp_path):
    from pipelines.validate import HourResult

    clicks = HourResult(5, "landed", 180, (), "", "validated/clicks/hour=005/part-0.parquet",
                        "raw/clicks/clicks_hour_005.csv")
    articles = HourResult(5, "quarantined", 12, ("embeddings",), "embeddings: embeddings missing",
                          "quarantine/articles/hour=005", "raw/articles/articles_hour_005.csv", "articles")
    outcome = flows.hour_outcome([articles, clicks])
    assert outcome["status"] == "landed" and outcome["hour"] == 5 and outcome["articles"]["status"] == "quarantined"
    assert flows.hour_outcome([clicks])["articles"] is None  # not every hour has new articles
    assert flows.quarantined_drops(flows.hour_outcome([clicks])) == []
    with pytest.raises(ValueError, match="no click drop"):
        flows.hour_outcome([articles])
    unreadable = HourResult(5, "unreadable", None, ("read",), "cannot read raw/clicks/clicks_hour_005.csv: "
                            "Permission denied; ...", "raw/clicks/clicks_hour_005.csv", "raw/clicks/clicks_hour_005.csv")
    with pytest.raises(OSError, match="Permission denied"):  # the validate task fails (retries, emails)
        flows.hour_outcome([articles, unreadable])

    folder = tmp_path / "quarantine" / "articles" / "hour=005"
    folder.mkdir(parents=True)
    (folder / "reason.txt").write_text("embeddings: embeddings missing\n")
    (folder / "result.json").write_text(json.dumps({"success": False}))
    subject, body, files = flows.quarantine_alert(tmp_path, outcome, EPOCH_MS)
    assert subject == "quarantined article drop 005"
    assert body.startswith("Article drop 005 (2017-10-01 08:00-09:00 UTC)") and "12 articles" in body
    assert "stay out of the catalogue" in body and files == [folder / "reason.txt", folder / "result.json"]

    refused = HourResult(5, "quarantined", 180, ("articles",), "articles: ...", "quarantine/clicks/hour=005",
                         "raw/clicks/clicks_hour_005.csv")
    both = flows.hour_outcome([articles, refused])
    assert [d["kind"] for d in flows.quarantined_drops(both)] == ["articles", "clicks"]
    subject = flows.quarantine_alert(tmp_path, both, EPOCH_MS)[0]
    assert subject == "quarantined hourly drop 005 and its article drop"


@pytest.mark.unit
def test_the_data_hashes_of_a_version_are_the_non_code_deps_dvc_lock_records():
    from pipelines import model_card as card

    def dep(path: str, md5: str) -> dict:
        return {"path": path, "hash": "md5", "md5": md5}

    lock = {"schema": "2.0", "stages": {
        "train": {"deps": [dep("data/validated", "a1.dir"), dep("pipelines/train.py", "c1"),
                           dep("data/raw/articles_embeddings.pickle", "e1")]},
        "evaluate": {"deps": [dep("data/validated", "a1.dir"), dep("models/ranker", "r1.dir")]},
    }}
    assert card.data_hashes(lock, flows.READ_BY_MODEL) == {
        "newsrec.dvc_md5.data/validated": "a1.dir", "newsrec.dvc_md5.data/raw/articles_embeddings.pickle": "e1",
        "newsrec.dvc_md5.models/ranker": "r1.dir"}
    lock["stages"]["evaluate"]["deps"][0]["md5"] = "other.dir"  # a lock not written in one go
    with pytest.raises(ValueError, match="data/validated with two hashes"):
        card.data_hashes(lock, flows.READ_BY_MODEL)
    with pytest.raises(ValueError, match="no stage 'register'"):
        card.data_hashes(lock, ["register"])


@pytest.mark.unit
def test_the_dag_commits_exactly_the_stages_dvc_yaml_has_for_it():
    stages = yaml.safe_load((flows.PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert set(flows.TRAIN_STAGES) <= set(stages) and set(flows.READ_BY_MODEL) <= set(flows.TRAIN_STAGES)
