"""Temporal split: window arithmetic, point-in-time click reading, and no leakage from later windows."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from clickdata import EPOCH, H, at, clicks, write_validated

from pipelines import columns as C
from pipelines.lake import landed_hours
from pipelines.split import (
    eval_targets,
    get_snapshot,
    load_clicks,
    plan_snapshots,
    read_snapshots,
    snapshot_clicks,
    snapshots_clicks,
    write_snapshots,
)

PLAN = {"test_hours": 4, "val_hours": 4, "label_hours": 3, "train_snapshots": 3, "min_history_hours": 6}


@pytest.mark.unit
def test_windows_are_cut_from_the_last_hour_backwards():
    snaps = plan_snapshots(list(range(24)), EPOCH, **PLAN)
    got = [(s.name, s.role, s.cutoff_hour, s.end_hour) for s in snaps]
    assert got == [
        ("train_h007", "train", 7, 10),
        ("train_h010", "train", 10, 13),
        ("train_h013", "train", 13, 16),
        ("val_h016", "val", 16, 19),
        ("val_h019", "val", 19, 20),  # cut short at the test start
        ("test", "test", 20, 24),
        ("serve", "serve", 24, 24),
    ]
    test = snaps[-2]
    assert test.cutoff_ms == EPOCH + 20 * H and test.end_ms == EPOCH + 24 * H


@pytest.mark.unit
def test_a_quarantined_hour_leaves_a_hole_instead_of_shifting_windows():
    hours = [h for h in range(24) if h != 18]
    assert [s.cutoff_hour for s in plan_snapshots(hours, EPOCH, **PLAN)] == [7, 10, 13, 16, 19, 20, 24]


@pytest.mark.unit
def test_train_cutoffs_without_enough_history_are_dropped_and_too_short_data_is_an_error():
    snaps = plan_snapshots(list(range(18)), EPOCH, **PLAN)  # val 10, test 14: train cutoffs 7 only
    assert [s.name for s in snaps if s.role == "train"] == ["train_h007"]
    with pytest.raises(ValueError, match="too few"):
        plan_snapshots(list(range(12)), EPOCH, **PLAN)
    with pytest.raises(ValueError, match="no validated hours"):
        plan_snapshots([], EPOCH, **PLAN)
    with pytest.raises(ValueError, match="label_hours"):
        plan_snapshots(list(range(24)), EPOCH, **{**PLAN, "label_hours": 0})


@pytest.mark.unit
def test_split_file_round_trip(tmp_path):
    snaps = plan_snapshots(list(range(24)), EPOCH, **PLAN)
    path = write_snapshots(snaps, tmp_path / "s" / "snapshots.json")
    assert read_snapshots(path) == snaps
    assert [s.name for s in read_snapshots(path, roles=["val", "test"])] == ["val_h016", "val_h019", "test"]
    assert get_snapshot(path, "test") == snaps[-2]
    with pytest.raises(KeyError, match="no snapshot 'nope'"):
        get_snapshot(path, "nope")
    assert json.loads(path.read_text())["snapshots"][0]["role"] == "train"


@pytest.fixture
def late_outlier_root(tmp_path):
    # user 1 reads 10 then 11 in hour 0; user 2 reads 12 in hour 1; hour 0's file also carries a late
    # click of user 3 stamped in hour 5; user 4 reads 10 in hour 6.
    frame = clicks(
        [(1, 100, 10, 0.1), (1, 100, 11, 0.2), (2, 200, 12, 1.5), (3, 300, 13, 5.5), (4, 400, 10, 6.2)],
        file_hour={3: 0},
    )
    return write_validated(tmp_path, frame)


@pytest.mark.unit
def test_history_drops_late_outliers_at_or_after_the_cutoff_and_target_keeps_them(late_outlier_root):
    vdir = late_outlier_root / "validated" / "clicks"
    assert landed_hours(vdir) == [0, 1, 6]
    hist = load_clicks(vdir, None, at(2), epoch_ms=EPOCH)
    assert hist[C.CLICK_ARTICLE_ID].tolist() == [10, 11, 12]
    assert hist[C.HOUR].tolist() == [0, 0, 1]
    target = load_clicks(vdir, at(2), at(7))
    assert target[C.CLICK_ARTICLE_ID].tolist() == [13, 10]
    assert target[C.HOUR].tolist() == [0, 6]  # the late click comes from hour 0's file
    with pytest.raises(ValueError, match="unknown click column"):
        load_clicks(vdir, None, None, columns=["nope"])
    with pytest.raises(FileNotFoundError):
        load_clicks(late_outlier_root / "missing", None, None)


@pytest.mark.unit
def test_one_read_of_the_clicks_gives_every_snapshot_what_its_own_read_gives(tiny_validated):
    vdir = tiny_validated / "validated" / "clicks"
    snaps = plan_snapshots(landed_hours(vdir), EPOCH, **PLAN)
    snaps.append(dataclasses.replace(snaps[-1], name="serve", role="serve", end_ms=snaps[-1].cutoff_ms))
    seen = []
    for snap, history, target in snapshots_clicks(vdir, snaps):
        own_history, own_target = snapshot_clicks(vdir, snap)
        pd.testing.assert_frame_equal(history, own_history)
        pd.testing.assert_frame_equal(target, own_target)
        assert (len(target) > 0) == (snap.role != "serve") and len(history) > 0
        seen.append(snap.name)
    assert seen == [s.name for s in snaps]
    assert list(snapshots_clicks(vdir, [])) == []


@pytest.mark.unit
def test_eval_targets_keep_available_unread_articles_and_flag_warm_users():
    history = pd.DataFrame(
        {C.USER_ID: [1, 1], C.CLICK_ARTICLE_ID: [10, 11], C.CLICK_TIMESTAMP: [at(1), at(2)]}
    )
    target = pd.DataFrame(
        {
            C.USER_ID: [1, 1, 1, 1, 2, 3],
            C.CLICK_ARTICLE_ID: [10, 12, 12, 13, 12, 13],
            C.CLICK_TIMESTAMP: [at(5)] * 6,
        }
    )
    articles = pd.DataFrame({C.ARTICLE_ID: [10, 11, 12, 13], C.CREATED_AT_TS: [at(0), at(0), at(3), at(4.5)]})
    got = eval_targets(history, target, articles, cutoff_ms=at(4))
    # 10 was read before, 13 did not exist at the cutoff, 12 twice counts once; user 3 has nothing left.
    assert got.to_dict("records") == [
        {C.USER_ID: 1, C.ARTICLE_ID: 12, C.WARM: True},
        {C.USER_ID: 2, C.ARTICLE_ID: 12, C.WARM: False},
    ]


def _perturb_future(root, cutoff_ms: int, seed: int = 0) -> None:
    """Rewrite every click at or after the cutoff (articles, users, extra rows), including late outliers
    planted in files before the cutoff: whatever fitting at the cutoff reads must not notice."""
    rng = np.random.default_rng(seed)
    vdir = root / "validated" / "clicks"
    files = sorted(vdir.glob("hour=*/part-0.parquet"))
    n_articles = 2000
    for f in files:
        frame = pd.read_parquet(f)
        future = frame[C.CLICK_TIMESTAMP] >= cutoff_ms
        frame.loc[future, C.CLICK_ARTICLE_ID] = rng.integers(0, n_articles, int(future.sum()))
        frame.loc[future, C.USER_ID] = rng.integers(0, 50, int(future.sum()))
        frame.to_parquet(f, index=False)
    # A late outlier: a file before the cutoff carrying a click stamped after it.
    early = pd.read_parquet(files[0])
    late = early.iloc[:3].copy()
    late[C.CLICK_TIMESTAMP] = cutoff_ms + 123
    late[C.CLICK_ARTICLE_ID] = [1, 2, 3]
    pd.concat([early, late]).to_parquet(files[0], index=False)


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


@pytest.mark.data
def test_nothing_after_a_cutoff_reaches_what_is_fitted_at_it(tiny_validated, tmp_path):
    """Fit popularity, co-clicks, the candidate index, candidates and features at the val cutoff on the
    real tiny data and on a copy whose clicks at/after the cutoff are rewritten: all must be identical."""
    from pipelines.aggregates import aggregate_all, read_coclick, read_popularity
    from pipelines.candidates import CandidateIndex
    from pipelines.config import load_params
    from pipelines.features import fit_tables, read_articles, read_embeddings

    epoch = load_params("data")["epoch_ms"]
    cparams = load_params("candidates")
    fparams = load_params("features")
    snap = get_snapshot(
        write_snapshots(
            plan_snapshots(landed_hours(tiny_validated / "validated" / "clicks"), epoch, **PLAN),
            tmp_path / "snaps.json",
        ),
        "val_h016",
    )
    roots = {}
    for name in ("real", "perturbed"):
        root = tmp_path / name
        shutil.copytree(tiny_validated / "raw", root / "raw")
        shutil.copytree(tiny_validated / "validated", root / "validated")
        if name == "perturbed":
            _perturb_future(root, snap.cutoff_ms)
        aggregate_all(root, epoch, load_params("aggregates")["coclick_max_distance"])
        roots[name] = root
    articles = read_articles(roots["real"] / "raw" / C.METADATA_FILE)
    embeddings = read_embeddings(roots["real"] / "raw" / C.EMBEDDINGS_FILE)

    fitted = {}
    for name, root in roots.items():
        history, target = snapshot_clicks(root / "validated" / "clicks", snap)
        index = CandidateIndex.fit(root, articles, embeddings, snap.cutoff_ms, cparams, epoch)
        users = np.unique(np.r_[history[C.USER_ID].unique()[:40], [10**6]])  # warm users and one cold one
        fitted[name] = {
            "history": history.drop(columns=[C.HOUR]),
            "target": target,
            "popularity": read_popularity(root, snap.cutoff_hour, [1, 6, 24], 2.0),
            "coclick": read_coclick(root, snap.cutoff_hour, 6.0, 50),
            "index": index,
            "candidates": index.candidates(history, users=users),
            "features": fit_tables(history, articles, embeddings, snap.cutoff_ms, fparams),
        }
    real, pert = fitted["real"], fitted["perturbed"]
    # The perturbation really changed the future (else this test could not fail).
    assert not real["target"][C.CLICK_ARTICLE_ID].equals(pert["target"][C.CLICK_ARTICLE_ID])
    for key in ("history", "popularity", "coclick", "candidates"):
        _frames_equal(real[key], pert[key])
    _frames_equal(real["index"].pool, pert["index"].pool)
    _frames_equal(real["index"].coclick, pert["index"].coclick)
    _frames_equal(real["index"].similar, pert["index"].similar)
    np.testing.assert_array_equal(real["index"].emb_ids, pert["index"].emb_ids)
    for table in ("users", "user_categories", "articles"):
        _frames_equal(getattr(real["features"], table), getattr(pert["features"], table))
    np.testing.assert_array_equal(real["features"].profiles, pert["features"].profiles)
    # And the aggregates of the same data at a later cutoff do see the changed clicks.
    later = snap.end_hour
    assert not read_popularity(roots["real"], later, [1], 2.0).equals(
        read_popularity(roots["perturbed"], later, [1], 2.0)
    )
