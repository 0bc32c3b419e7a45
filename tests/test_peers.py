"""The CF peer (implicit's ALS) on toy click matrices: co-read articles first, what it cannot know, bad params."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import columns as C
from pipelines.peers import CFPeer

PARAMS = {"factors": 8, "regularization": 0.01, "iterations": 30, "alpha": 40.0, "window_hours": None, "seed": 0,
          "threads": 1}
CUTOFF = 100 * C.HOUR_MS


def _clicks(reads: dict[int, list[int]], hour: int = 50) -> pd.DataFrame:
    rows = [(u, a, hour * C.HOUR_MS + i) for u, arts in reads.items() for i, a in enumerate(arts)]
    return pd.DataFrame(rows, columns=[C.USER_ID, C.CLICK_ARTICLE_ID, C.CLICK_TIMESTAMP])


def _toy() -> pd.DataFrame:
    """Two reading groups: users 0-5 read 10, 11, 12 together; users 6-11 read 20, 21, 22 together.
    User 12 read 10 and 11 only, user 13 read 20 only."""
    reads = {u: [10, 11, 12] for u in range(6)} | {u: [20, 21, 22] for u in range(6, 12)}
    return _clicks(reads | {12: [10, 11], 13: [20]})


@pytest.mark.unit
def test_the_peer_ranks_the_co_read_article_first_and_never_a_read_one():
    clicks = _toy()
    peer = CFPeer.fit(clicks, CUTOFF, PARAMS)
    recs = peer.recommend(np.array([12, 13]), clicks, np.array([10, 11, 12, 20, 21, 22]), n=3)
    top = recs[recs[C.RANK] == 1].set_index(C.USER_ID)[C.ARTICLE_ID]
    assert top[12] == 12  # what the readers of 10 and 11 also read
    assert top[13] in (21, 22)
    mine = recs[recs[C.USER_ID] == 12]
    assert not set(mine[C.ARTICLE_ID]) & {10, 11}
    assert mine[C.RANK].tolist() == list(range(1, len(mine) + 1))
    # the same figure through pair scores: user 12 prefers 12 to 20
    s = peer.score(np.array([12, 12, 99]), np.array([12, 20, 12]))
    assert s[0] > s[1] and np.isnan(s[2])  # a user it never saw has no score


@pytest.mark.unit
def test_the_peer_only_knows_what_was_clicked_before_its_cutoff_and_in_its_window():
    clicks = pd.concat([_toy(), _clicks({0: [30]}, hour=120)])  # article 30 clicked after the cutoff
    peer = CFPeer.fit(clicks, CUTOFF, PARAMS)
    assert 30 not in peer.items
    assert np.isnan(peer.score(np.array([0]), np.array([30]))[0])
    recs = peer.recommend(np.arange(14), clicks, np.array([10, 11, 12, 20, 21, 22, 30]), n=10)
    assert 30 not in set(recs[C.ARTICLE_ID])
    # a 10-hour window before hour 100 holds none of the hour-50 clicks: nothing to learn, nothing to propose
    recent = CFPeer.fit(clicks, CUTOFF, {**PARAMS, "window_hours": 10})
    assert len(recent.items) == 0 and recent.recommend(np.arange(14), clicks, np.arange(40), n=5).empty


@pytest.mark.unit
def test_the_peer_is_deterministic_for_a_seed_on_any_thread_count():
    a = CFPeer.fit(_toy(), CUTOFF, PARAMS)
    b = CFPeer.fit(_toy(), CUTOFF, PARAMS)
    np.testing.assert_array_equal(a.user_factors, b.user_factors)
    rng = np.random.default_rng(3)  # enough readers for the threads to split them
    many = _clicks({u: sorted(set(rng.integers(0, 300, 12).tolist())) for u in range(2000)})
    one = CFPeer.fit(many, CUTOFF, PARAMS)
    for threads in (2, 0):
        other = CFPeer.fit(many, CUTOFF, {**PARAMS, "threads": threads})
        np.testing.assert_array_equal(one.user_factors, other.user_factors)
        np.testing.assert_array_equal(one.item_factors, other.item_factors)


@pytest.mark.unit
@pytest.mark.parametrize("bad, match", [({"factors": 0}, "factors"), ({"alpha": 0}, "alpha"),
                                        ({"window_hours": -1}, "window_hours"), ({"threads": -1}, "threads")])
def test_bad_peer_params_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        CFPeer.fit(_toy(), CUTOFF, {**PARAMS, **bad})
    with pytest.raises(ValueError, match="lacks"):
        CFPeer.fit(_toy(), CUTOFF, {"factors": 8})


@pytest.mark.unit
def test_peer_lists_continue_in_trending_order_where_the_peer_runs_out():
    from pipelines.evaluate import cf_peer_lists

    clicks = _toy()
    peer = CFPeer.fit(clicks, CUTOFF, PARAMS)
    trending = pd.DataFrame({C.ARTICLE_ID: [40, 41, 10, 20], "trend": [9.0, 8.0, 7.0, 6.0]})
    ranked, own = cf_peer_lists(peer, np.array([12, 99]), clicks, np.array([10, 11, 12, 20, 21, 22, 40, 41]),
                                trending, depth=8)
    cold = ranked[ranked[C.USER_ID] == 99]
    assert cold[C.ARTICLE_ID].tolist() == [40, 41, 10, 20]  # unknown to the peer: the trending order
    warm = ranked[ranked[C.USER_ID] == 12].sort_values(C.RANK)
    assert warm[C.ARTICLE_ID].iloc[0] == 12 and set(warm[C.ARTICLE_ID]) >= {40, 41}  # peer's list, then trending
    assert not set(warm[C.ARTICLE_ID]) & {10, 11}
    assert set(own[C.USER_ID]) == {12} and not set(own[C.ARTICLE_ID]) & {40, 41}  # its reach: its own list
