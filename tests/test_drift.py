"""Drift reports: hour specs and windows (unit), Evidently verdicts on synthetic drops with and without
injected drift (data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import drift
from pipelines.config import load_params

ROOT = Path(__file__).resolve().parents[1]
# Demo-sized hours (~1,100 clicks each) keep sampling noise well below the thresholds; 36 of them are
# enough: reference = the first day, current = the last 6 hours, drift injected from hour 24.
HOURS, DRIFT_FROM = 36, 24
REFERENCE, CURRENT = list(range(24)), list(range(30, 36))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("spec", "hours"),
    [("5", [5]), ("0-3", [0, 1, 2, 3]), ("0-2,5,7-8", [0, 1, 2, 5, 7, 8]), ("3,1,1-2", [1, 2, 3])],
)
def test_hour_specs_round_trip(spec, hours):
    assert drift.parse_hours(spec) == hours
    assert drift.parse_hours(drift.format_hours(hours)) == hours


@pytest.mark.unit
@pytest.mark.parametrize("spec", ["", "a-b", "5-3", "1,,x"])
def test_bad_hour_specs_are_refused(spec):
    with pytest.raises(ValueError):
        drift.parse_hours(spec)


@pytest.mark.unit
def test_windows_default_to_latest_hours_and_the_hours_before():
    ref, cur = drift.resolve_windows(range(100), None, None, current_hours=6, reference_hours=48)
    assert cur == list(range(94, 100)) and ref == list(range(46, 94))
    # A given training window loses the hours that are also current (a model trained up to now).
    ref, cur = drift.resolve_windows(range(100), None, range(96), current_hours=6, reference_hours=48)
    assert ref == list(range(94))
    with pytest.raises(ValueError, match="no reference hours"):
        drift.resolve_windows(range(6), None, None, current_hours=6, reference_hours=48)


def _config(**over):
    cfg = drift.load_config(ROOT / load_params("paths")["drift_config"])
    cfg.update(over)
    return cfg


@pytest.mark.unit
def test_verdicts_are_read_by_column_name_from_evidently():
    rng = np.random.default_rng(0)
    n = 3000
    ref = pd.DataFrame({"device": rng.choice([1, 2, 3], n, p=[0.6, 0.3, 0.1]), "age": rng.exponential(10, n)})
    cur = pd.DataFrame({"device": rng.choice([1, 2, 3], n, p=[0.2, 0.3, 0.5]), "age": rng.exponential(10, n)})
    _, parsed = drift.run_report(ref, cur, ["device"], ["age"], _config())
    assert parsed["columns"]["device"]["drifted"] and not parsed["columns"]["age"]["drifted"]
    assert parsed["columns"]["device"]["method"] == "jensenshannon"
    assert parsed["dataset"] == {"drifted": 1, "share": 0.5, "drift_share": 0.1, "detected": True}


@pytest.fixture(scope="module")
def drift_roots(tmp_path_factory):
    """Three validated data roots from the same seed: no drift, a context shift and a category surge."""
    from pipelines.synth import Profile, synthesize
    from pipelines.validate import LANDED, Settings, validate_all

    params = ROOT / "params.yaml"
    epoch_ms = load_params("data", params)["epoch_ms"]
    profile = Profile.from_params(load_params("synth", params), "demo")
    roots = {}
    for kind in ("none", "context", "category"):
        root = tmp_path_factory.mktemp(f"drift_{kind}")
        extra = {} if kind == "none" else {"drift_from": DRIFT_FROM, "drift_kind": kind}
        synthesize(root / "raw", profile, seed=3, epoch_ms=epoch_ms, hours=HOURS, **extra)
        results = validate_all(root, epoch_ms=epoch_ms,
                               settings=Settings.from_params(load_params("validate", params)),
                               gx_dir=ROOT / "great_expectations", docs=False)
        assert all(r.status == LANDED for r in results), [r.reason for r in results if r.status != LANDED]
        roots[kind] = root
    return roots


@pytest.mark.data
def test_no_injected_drift_is_not_detected(drift_roots, tmp_path):
    summary = drift.drift_report(drift_roots["none"], REFERENCE, CURRENT, tmp_path / "run", _config())
    assert summary["drift_detected"] is False, summary["drifted_columns"]
    assert summary["drifted_columns"] == [] and summary["share_drifted"] == 0.0
    assert summary["rows"]["features"]["current"] > 5000


@pytest.mark.data
def test_context_shift_is_detected_in_the_context_columns(drift_roots, tmp_path):
    summary = drift.drift_report(drift_roots["context"], REFERENCE, CURRENT, tmp_path / "run", _config())
    assert summary["drift_detected"] is True
    drifted = {c.split(".", 1)[1] for c in summary["drifted_columns"]}
    assert {"click_deviceGroup", "click_os", "click_referrer_type"} <= drifted
    assert "category_id" not in drifted


@pytest.mark.data
def test_category_surge_is_detected_in_the_category_mix(drift_roots, tmp_path):
    summary = drift.drift_report(drift_roots["category"], REFERENCE, CURRENT, tmp_path / "run", _config())
    assert summary["drift_detected"] is True
    assert "features.category_id" in summary["drifted_columns"]
    assert not any("click_" in c for c in summary["drifted_columns"])


@pytest.mark.data
def test_drift_before_the_reference_ends_is_not_blamed_on_the_current_window(drift_roots, tmp_path):
    # Drift from hour 24 on both sides: the comparison is within the drifted regime, so nothing moves.
    summary = drift.drift_report(drift_roots["context"], list(range(24, 30)), CURRENT, tmp_path / "run", _config())
    assert summary["drift_detected"] is False, summary["drifted_columns"]


@pytest.mark.data
def test_cli_writes_reports_per_run_and_scores_join_in(drift_roots, tmp_path, capsys):
    root = drift_roots["context"]
    rng = np.random.default_rng(1)
    ref_scores, cur_scores = tmp_path / "ref.parquet", tmp_path / "cur.parquet"
    pd.DataFrame({"fused_score": rng.normal(0, 1, 4000), "emb_score": rng.normal(0, 1, 4000)}).to_parquet(ref_scores)
    # Model scores shift by half a standard deviation; the candidate scores do not.
    pd.DataFrame({"fused_score": rng.normal(0.5, 1, 4000), "emb_score": rng.normal(0, 1, 4000)}).to_parquet(cur_scores)
    out = tmp_path / "reports"
    argv = ["--data-root", str(root), "--reference", "0-23", "--current", "30-35", "--out", str(out),
            "--run-id", "r1", "--reference-scores", str(ref_scores), "--current-scores", str(cur_scores),
            "--fail-on-drift"]
    assert drift.main(argv) == 3
    assert "DRIFT DETECTED" in capsys.readouterr().out
    run = out / "r1"
    assert sorted(p.name for p in run.iterdir()) == [
        "features.html", "features.json", "scores.html", "scores.json", "summary.json"]
    summary = json.loads((run / "summary.json").read_text())
    assert "scores.fused_score" in summary["drifted_columns"]
    assert "scores.emb_score" not in summary["drifted_columns"]
    assert summary["reference_hours"] == "0-23" and summary["current_hours"] == "30-35"
    # The Evidently JSON is the full result; the summary's verdicts come from it.
    evidently = json.loads((run / "features.json").read_text())
    assert any(m["config"].get("column") == "click_os" for m in evidently["metrics"])


@pytest.mark.data
def test_missing_hours_are_reported_and_no_data_is_an_error(drift_roots, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(drift_roots["none"], root)
    shutil.rmtree(root / "validated" / "clicks" / "hour=031")
    summary = drift.drift_report(root, REFERENCE, CURRENT, tmp_path / "run", _config())
    assert summary["missing_hours"]["current"] == [31]
    with pytest.raises(FileNotFoundError, match="no validated hours among 100-101"):
        drift.drift_report(root, REFERENCE, [100, 101], tmp_path / "run2", _config())


def test_clicks_on_articles_from_article_drops_keep_their_features(tiny_drops_validated):
    """Every validated click is a row, also those on articles that arrived in an hourly article drop."""
    from pipelines.drift import feature_frame
    from pipelines.split import load_clicks

    root, _ = tiny_drops_validated
    frame = feature_frame(root, range(24))
    clicks = load_clicks(root / "validated" / "clicks", None, None)
    assert len(frame) == len(clicks) and frame["category_id"].notna().all()
