"""Hourly aggregates: hand-checkable pair weights, click-hour bucketing, idempotence, decayed reads."""

from __future__ import annotations

import pandas as pd
import pytest
from clickdata import EPOCH, clicks, write_validated

from pipelines import columns as C
from pipelines.aggregates import aggregate_all, aggregate_hour, read_coclick, read_popularity
from pipelines.cli import main as cli

pytestmark = pytest.mark.unit


@pytest.fixture
def root(tmp_path):
    frame = clicks(
        [
            # hour 0: one session reads 10, 11, 12, 10 again; another 10, 11
            (1, 100, 10, 0.1),
            (1, 100, 11, 0.2),
            (1, 100, 12, 0.3),
            (1, 100, 10, 0.4),
            (2, 200, 10, 0.5),
            (2, 200, 11, 0.6),
            # hour 1: 12 then 13
            (3, 300, 12, 1.1),
            (3, 300, 13, 1.2),
            # a late click in hour 0's file, stamped hour 5
            (4, 400, 13, 5.5),
        ],
        file_hour={8: 0},
    )
    return write_validated(tmp_path, frame)


def _part(root, kind, hour):
    return pd.read_parquet(root / "aggregates" / kind / f"hour={hour:03d}" / "part-0.parquet")


def test_popularity_counts_clicks_and_users_per_click_hour(root):
    aggregate_hour(root, 0, EPOCH, coclick_max_distance=5)
    pop = _part(root, "popularity", 0)
    got = {(r.article_id, r.click_hour): (r.clicks, r.users) for r in pop.itertuples()}
    # 10 read 3 times by 2 users; the late click of 13 counts in hour 5, not in the file's hour 0
    assert got == {(10, 0): (3, 2), (11, 0): (2, 2), (12, 0): (1, 1), (13, 5): (1, 1)}


def test_coclick_pairs_weighted_by_inverse_distance(root):
    aggregate_hour(root, 0, EPOCH, coclick_max_distance=5)
    w = _part(root, "coclick", 0).set_index([C.ARTICLE_A, C.ARTICLE_B])[C.WEIGHT]
    # session 100 positions: 10@1 11@2 12@3 10@4; session 200: 10@1 11@2
    assert w[(10, 11)] == pytest.approx(1 + 1 / 2 + 1)  # (1,2) (4,2) in s100, (1,2) in s200
    assert w[(10, 12)] == pytest.approx(1 / 2 + 1)  # (1,3) and (4,3)
    assert w[(11, 12)] == pytest.approx(1.0)
    assert w[(12, 10)] == w[(10, 12)]  # both directions are stored
    assert (10, 10) not in w.index  # re-reading an article is not a pair
    aggregate_hour(root, 0, EPOCH, coclick_max_distance=1)
    w1 = _part(root, "coclick", 0).set_index([C.ARTICLE_A, C.ARTICLE_B])[C.WEIGHT]
    assert w1[(10, 12)] == pytest.approx(1.0)  # only the adjacent (4,3) pair is left


def test_rerunning_an_hour_overwrites_it_and_all_drops_orphans(root):
    aggregate_hour(root, 0, EPOCH, 5)
    first = _part(root, "coclick", 0)
    aggregate_hour(root, 0, EPOCH, 5)
    pd.testing.assert_frame_equal(first, _part(root, "coclick", 0))
    orphan = root / "aggregates" / "popularity" / "hour=007"
    orphan.mkdir(parents=True)
    (orphan / "part-0.parquet").write_bytes(b"stale")
    assert aggregate_all(root, EPOCH, 5) == [0, 1]
    assert not orphan.exists()
    with pytest.raises(FileNotFoundError, match="not validated"):
        aggregate_hour(root, 3, EPOCH, 5)


def test_reads_see_only_clicks_before_the_cutoff_with_decay(root):
    aggregate_all(root, EPOCH, 5)
    pop = read_popularity(root, 2, [1], half_life_hours=1.0).set_index(C.ARTICLE_ID)
    assert sorted(pop.index) == [10, 11, 12, 13]
    assert pop.loc[13, C.CLICKS] == 1 and pop.loc[13, "last_click_hour"] == 1  # the late click is not there
    assert pop.loc[12, C.CLICKS] == 2 and pop.loc[12, "clicks_1h"] == 1
    # a click in hour 0 seen from cutoff hour 2 is 1.5 h old (mid-hour): weight 0.5 ** 1.5
    assert pop.loc[10, "trend"] == pytest.approx(3 * 0.5**1.5)
    assert read_popularity(root, 6, [1], 1.0).set_index(C.ARTICLE_ID).loc[13, C.CLICKS] == 2
    cocl = read_coclick(root, 2, half_life_hours=1.0, top_k=1)
    assert cocl.groupby(C.ARTICLE_A).size().max() == 1
    assert cocl.set_index(C.ARTICLE_A).loc[10, C.ARTICLE_B] == 11
    only = read_coclick(root, 2, 1.0, top_k=5, targets=[12])
    assert set(only[C.ARTICLE_B]) == {12}
    with pytest.raises(ValueError, match="half_life"):
        read_popularity(root, 2, [1], 0.0)


def test_cli_needs_validated_data(tmp_path, capsys):
    (tmp_path / "validated" / "clicks").mkdir(parents=True)
    assert cli(["aggregates", "--data-root", str(tmp_path), "--all"]) == 1
    assert "no validated hours" in capsys.readouterr().err


def test_coclick_weights_do_not_depend_on_row_order(tmp_path):
    """Replaying an hour gives the same bytes: the same pair co-read at many distances sums to the same
    weight whatever order the rows (and so the additions) come in."""
    import numpy as np

    rng = np.random.default_rng(7)
    rows, gaps = [], []
    for session in range(400):  # articles 1 and 2 co-read at distances 1..7 among fillers
        gap = int(rng.integers(1, 8))
        gaps.append(gap)
        reads = [1] + [100 + int(x) for x in rng.integers(0, 50, gap - 1)] + [2]
        rows += [(session, session, a, 0.01 + 0.002 * i) for i, a in enumerate(reads)]
    frame = clicks(rows)
    digests = set()
    for order in range(4):
        root = tmp_path / f"order{order}"
        shuffled = frame.sample(frac=1.0, random_state=order) if order else frame
        write_validated(root, shuffled)
        aggregate_hour(root, 0, EPOCH, 7)
        digests.add((root / "aggregates" / "coclick" / "hour=000" / "part-0.parquet").read_bytes())
    assert len(digests) == 1
    weight = _part(tmp_path / "order0", "coclick", 0).set_index([C.ARTICLE_A, C.ARTICLE_B])[C.WEIGHT]
    assert weight[(1, 2)] == pytest.approx(sum(1.0 / g for g in gaps), rel=1e-12)


def test_decayed_reads_do_not_depend_on_row_order(tmp_path):
    """`dvc repro` twice must fit the same candidate index: the decayed sums over many hourly rows come out
    the same whatever order the rows are stored (and added) in."""
    import numpy as np

    rng = np.random.default_rng(3)
    n = 2000
    cocl = pd.DataFrame({C.ARTICLE_A: np.ones(n, np.int64), C.ARTICLE_B: np.full(n, 2, np.int64),
                         C.CLICK_HOUR: rng.integers(0, 40, n), C.WEIGHT: rng.random(n)})
    pop = pd.DataFrame({C.ARTICLE_ID: np.ones(n, np.int64), C.CLICK_HOUR: rng.integers(0, 40, n),
                        C.CLICKS: rng.integers(1, 50, n), C.USERS: np.ones(n, np.int64)})
    results = []
    for order in range(3):
        root = tmp_path / f"order{order}"
        for kind, frame in (("coclick", cocl), ("popularity", pop)):
            shuffled = frame.sample(frac=1.0, random_state=order) if order else frame
            for hour, part in shuffled.groupby(shuffled[C.CLICK_HOUR] // 10):
                out = root / "aggregates" / kind / f"hour={int(hour):03d}"
                out.mkdir(parents=True)
                part.to_parquet(out / "part-0.parquet", index=False)
        results.append((read_coclick(root, 45, 6.0, 5)[C.WEIGHT].tolist(),
                        read_popularity(root, 45, [24], 3.0)["trend"].tolist()))
    assert results[0] == results[1] == results[2]
    expected = float((cocl[C.WEIGHT] * 0.5 ** ((45 - cocl[C.CLICK_HOUR] - 0.5) / 6.0)).sum())
    assert results[0][0][0] == pytest.approx(expected, rel=1e-12)
