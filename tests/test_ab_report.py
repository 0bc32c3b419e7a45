"""A/B readout: hand-checkable statistics, click attribution, and a simulated experiment."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines import ab_report as ab
from pipelines.cli import main as cli
from serving.ab import assign_variant, bucket


@pytest.mark.unit
def test_wilson_interval_matches_hand_computation():
    # 50/100 at 95%: centre 0.5, half-width z*sqrt(.25/100 + z^2/40000)/(1+z^2/100) = 0.0951.
    low, high = ab.wilson_interval(50, 100, 0.95)
    assert low == pytest.approx(0.4038, abs=1e-4)
    assert high == pytest.approx(0.5962, abs=1e-4)
    # No successes still gives a non-degenerate upper bound, unlike the normal interval.
    low, high = ab.wilson_interval(0, 20, 0.95)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.1611, abs=1e-4)


@pytest.mark.unit
def test_two_proportion_test_known_values():
    # 100/1000 vs 130/1000: pooled p=0.115, se=sqrt(.115*.885*2/1000)=0.014267, z=2.1027, p=0.0355.
    t = ab.two_proportion_test(100, 1000, 130, 1000, 0.95)
    assert t["z"] == pytest.approx(2.1027, abs=1e-3)
    assert t["chi2"] == pytest.approx(t["z"] ** 2)
    assert t["p_value"] == pytest.approx(0.0355, abs=5e-4)
    assert t["relative_lift"] == pytest.approx(0.3)
    same = ab.two_proportion_test(100, 1000, 100, 1000, 0.95)
    assert same["z"] == 0 and same["p_value"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one trial"):
        ab.two_proportion_test(0, 0, 1, 10, 0.95)


@pytest.mark.unit
def test_assignment_is_stable_and_follows_the_share():
    users = np.arange(20_000)
    first = [assign_variant("s1", u, 0.2) for u in users]
    assert first == [assign_variant("s1", u, 0.2) for u in users]
    share = np.mean([v == "challenger" for v in first])
    assert 0.19 < share < 0.21
    assert all(assign_variant("s1", u, 0.0) == "champion" for u in users[:500])
    assert all(assign_variant("s1", u, 1.0) == "challenger" for u in users[:500])
    # A new salt reshuffles: the two experiments' challenger groups overlap only by chance (~0.2*0.2).
    other = np.array([bucket("s2", u) < 0.2 for u in users])
    overlap = np.mean(other & np.array([v == "challenger" for v in first]))
    assert 0.03 < overlap < 0.05


@pytest.mark.unit
def test_attribution_by_id_then_by_latest_impression_in_window():
    imps = [
        {"impression_id": "a", "user_id": 1, "variant": "champion", "ts_ms": 1_000, "articles": [10, 11]},
        {"impression_id": "b", "user_id": 1, "variant": "champion", "ts_ms": 5_000, "articles": [11, 12]},
        {"impression_id": "c", "user_id": 2, "variant": "challenger", "ts_ms": 1_000, "articles": [10]},
    ]
    clicks = [
        {"user_id": 1, "article_id": 11, "ts_ms": 6_000, "impression_id": "a"},  # explicit, shown there
        {"user_id": 1, "article_id": 12, "ts_ms": 6_000, "impression_id": None},  # implicit -> b
        {"user_id": 1, "article_id": 11, "ts_ms": 7_000},  # implicit, latest showing 11 -> b
        {"user_id": 2, "article_id": 10, "ts_ms": 100_000},  # outside the 10 s window
        {"user_id": 2, "article_id": 99, "ts_ms": 2_000},  # never shown
        {"user_id": 1, "article_id": 10, "ts_ms": 500},  # before any impression
        {"user_id": 2, "article_id": 10, "ts_ms": 900_000, "impression_id": "c"},  # an id replayed long after
        {"user_id": 1, "article_id": 12, "ts_ms": 1_500, "impression_id": "c"},  # not shown by that id, nor before
    ]
    got = ab.attribute_clicks(ab.load_impressions(imps), ab.load_clicks(clicks), window_ms=10_000)
    assert sorted(zip(got["impression_id"], got["article_id"])) == [("a", 11), ("b", 11), ("b", 12)]

    report = ab.ab_report(imps, clicks, attribution_seconds=10, confidence=0.95)
    assert report["clicks_logged"] == 8 and report["clicks_attributed"] == 3
    assert report["variants"]["champion"]["ctr"] == 1.0
    assert report["variants"]["challenger"]["ctr"] == 0.0
    user_level = ab.ab_report(imps, clicks, attribution_seconds=10, confidence=0.95, unit="user")
    assert user_level["variants"]["champion"]["trials"] == 1


@pytest.mark.unit
def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="empty"):
        ab.ab_report([], [], 60, 0.95)
    with pytest.raises(ValueError, match="unit"):
        ab.ab_report([{"impression_id": "a", "user_id": 1, "variant": "x", "ts_ms": 1, "articles": []}], [], 60, 0.95,
                     unit="session")
    with pytest.raises(ValueError, match="without"):
        ab.ab_report([{"impression_id": "a", "variant": "x", "ts_ms": 1, "articles": []}], [], 60, 0.95)


def _simulate(tmp_path, n_users, ctr_champion, ctr_challenger, share, seed):
    """Impression/click logs of an experiment whose true CTRs are known."""
    rng = np.random.default_rng(seed)
    imps, clicks = [], []
    for user in range(n_users):
        variant = assign_variant("sim", user, share)
        p = ctr_challenger if variant == "challenger" else ctr_champion
        for j in range(3):
            ts = 1_000_000 * user + 10_000 * j
            shown = rng.choice(1000, size=10, replace=False).tolist()
            imps.append({"impression_id": f"{user}-{j}", "user_id": user, "variant": variant, "ts_ms": ts,
                         "articles": shown})
            if rng.random() < p:
                clicks.append({"user_id": user, "article_id": shown[rng.integers(10)], "ts_ms": ts + 5_000})
    imp_path, click_path = tmp_path / "imps.jsonl", tmp_path / "clicks.jsonl"
    imp_path.write_text("".join(json.dumps(r) + "\n" for r in imps))
    click_path.write_text("".join(json.dumps(r) + "\n" for r in clicks))
    return imp_path, click_path


@pytest.mark.unit
def test_cli_detects_a_real_lift_and_not_a_null_one(tmp_path, capsys):
    imp_path, click_path = _simulate(tmp_path, 6000, 0.10, 0.15, 0.5, seed=1)
    out = tmp_path / "report.json"
    rc = ab.main(["--impressions", str(imp_path), "--clicks", str(click_path), "--attribution-seconds", "60",
                  "--out", str(out)])
    assert rc == 0
    assert "challenger_vs_champion" in capsys.readouterr().out
    report = json.loads(out.read_text())
    t = report["comparisons"]["challenger_vs_champion"]
    assert t["significant"] and t["diff_ci_low"] < 0.05 < t["diff_ci_high"]
    for v in report["variants"].values():
        assert v["ctr_ci_low"] < v["ctr"] < v["ctr_ci_high"]

    imp_path, click_path = _simulate(tmp_path, 3000, 0.10, 0.10, 0.5, seed=2)
    ab.main(["--impressions", str(imp_path), "--clicks", str(click_path), "--out", str(out)])
    assert not json.loads(out.read_text())["comparisons"]["challenger_vs_champion"]["significant"]


@pytest.mark.unit
def test_cli_missing_log_is_a_clear_error(tmp_path, capsys):
    rc = cli(["ab-report", "--impressions", str(tmp_path / "nope.jsonl"), "--clicks", str(tmp_path / "c.jsonl")])
    assert rc == 1
    assert "log not found" in capsys.readouterr().err
