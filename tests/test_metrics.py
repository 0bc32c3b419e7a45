"""Ranking metrics on cases small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipelines.columns import ARTICLE_ID, RANK, USER_ID
from pipelines.metrics import (
    candidate_recall,
    coverage,
    per_user_metrics,
    rank_by_score,
    summarise,
    tie_order,
)

pytestmark = pytest.mark.unit


def recs(rows: dict[int, list[int]]) -> pd.DataFrame:
    """{user: [article at rank 1, rank 2, ...]} -> recommendation frame."""
    out = [(u, a, r + 1) for u, arts in rows.items() for r, a in enumerate(arts)]
    return pd.DataFrame(out, columns=[USER_ID, ARTICLE_ID, RANK])


def truth(rows: dict[int, list[int]]) -> pd.DataFrame:
    return pd.DataFrame([(u, a) for u, arts in rows.items() for a in arts], columns=[USER_ID, ARTICLE_ID])


def test_ideal_order_scores_one():
    m = per_user_metrics(recs({1: [10, 11, 12, 13]}), truth({1: [10, 11]}), k=10).loc[1]
    assert m.to_dict() == {"recall": 1.0, "ndcg": 1.0, "mrr": 1.0, "hr": 1.0}


def test_no_hit_scores_zero():
    m = per_user_metrics(recs({1: [20, 21, 22]}), truth({1: [10]}), k=10).loc[1]
    assert m.to_dict() == {"recall": 0.0, "ndcg": 0.0, "mrr": 0.0, "hr": 0.0}


def test_one_hit_at_rank_three():
    m = per_user_metrics(recs({1: [20, 21, 10, 22]}), truth({1: [10]}), k=10).loc[1]
    assert m["recall"] == 1.0
    assert m["hr"] == 1.0
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["ndcg"] == pytest.approx(1 / math.log2(4))  # = 0.5


def test_one_of_two_relevant_found_first():
    m = per_user_metrics(recs({1: [10, 20, 21]}), truth({1: [10, 11]}), k=10).loc[1]
    assert m["recall"] == 0.5
    # DCG = 1, ideal DCG = 1 + 1/log2(3)
    assert m["ndcg"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert m["mrr"] == 1.0


def test_hit_below_k_does_not_count_and_ideal_dcg_is_capped_at_k():
    m = per_user_metrics(recs({1: [20, 21, 10]}), truth({1: [10]}), k=2).loc[1]
    assert m.to_dict() == {"recall": 0.0, "ndcg": 0.0, "mrr": 0.0, "hr": 0.0}
    # 3 relevant, k=2, both top slots hit: the ideal can only place 2 hits, so NDCG is 1, recall 2/3.
    m = per_user_metrics(recs({1: [10, 11, 12]}), truth({1: [10, 11, 12]}), k=2).loc[1]
    assert m["ndcg"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(2 / 3)


def test_users_without_recommendations_count_as_zero_and_extra_users_are_ignored():
    m = per_user_metrics(recs({1: [10], 9: [10]}), truth({1: [10], 2: [10]}), k=10)
    assert sorted(m.index) == [1, 2]
    assert m.loc[2].sum() == 0.0
    s = summarise(m, 10)
    assert s["hr@10"] == 0.5 and s["users"] == 2


def test_duplicate_recommendation_is_an_error():
    bad = pd.DataFrame({USER_ID: [1, 1], ARTICLE_ID: [10, 10], RANK: [1, 2]})
    with pytest.raises(ValueError, match="twice"):
        per_user_metrics(bad, truth({1: [10]}))


def test_missing_column_is_a_clear_error():
    with pytest.raises(ValueError, match="rank"):
        per_user_metrics(truth({1: [10]}), truth({1: [10]}))


def test_rank_by_score_orders_desc_with_tiebreak_and_nan_last():
    scored = pd.DataFrame(
        {
            USER_ID: [1, 1, 1, 1, 2],
            ARTICLE_ID: [10, 11, 12, 13, 10],
            "s": [0.5, 0.9, 0.5, np.nan, 0.1],
            "t": [1.0, 0.0, 2.0, 5.0, 0.0],
        }
    )
    r = rank_by_score(scored, "s", tiebreak="t")
    assert r[r[USER_ID] == 1][ARTICLE_ID].tolist() == [11, 12, 10, 13]
    assert r[r[USER_ID] == 1][RANK].tolist() == [1, 2, 3, 4]
    assert len(rank_by_score(scored, "s", k=2)) == 3


def test_candidate_recall_and_coverage():
    cands = recs({1: [10, 11, 12], 2: [30]})
    cr = candidate_recall(cands, truth({1: [10, 99], 2: [30], 3: [10]}))
    assert cr.to_dict() == {1: 0.5, 2: 1.0, 3: 0.0}
    # top-2 of everyone shows articles {10, 11, 30}: 3 of a 6-article catalogue
    assert coverage(cands, catalogue_size=6, k=2) == 0.5


def _impressions(*orders: list[int]) -> pd.DataFrame:
    """One impression per list: the clicks (1/0) in the order the method ranks the shown articles."""
    rows = [(i, r + 1, c) for i, clicks in enumerate(orders) for r, c in enumerate(clicks)]
    return pd.DataFrame(rows, columns=["impression_id", RANK, "clicked"])


@pytest.mark.unit
def test_impression_metrics_on_hand_checked_impressions():
    from pipelines.metrics import impression_metrics

    # 0: the click first (perfect); 1: the click last of 4; 2: clicks at ranks 2 and 3 of 4;
    # 3: only clicks, 4: no click (no AUC: left out, as MIND's scorer does)
    got = impression_metrics(_impressions([1, 0, 0], [0, 0, 0, 1], [0, 1, 1, 0], [1, 1], [0, 0]))
    assert got.index.tolist() == [0, 1, 2]
    assert got.loc[0].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert got.loc[1, "auc"] == 0.0 and got.loc[1, "mrr"] == pytest.approx(0.25)
    assert got.loc[1, "ndcg@5"] == pytest.approx(1 / math.log2(5))  # the one click at rank 4, ideal at rank 1
    # impression 2: positives above one of two negatives each -> AUC 2/4; MRR (1/2 + 1/3) / 2
    assert got.loc[2, "auc"] == pytest.approx(0.5)
    assert got.loc[2, "mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    ideal = 1 + 1 / math.log2(3)
    assert got.loc[2, "ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / ideal)


@pytest.mark.unit
def test_impression_metrics_need_a_strict_order():
    from pipelines.metrics import impression_metrics

    with pytest.raises(ValueError, match="same rank"):
        impression_metrics(pd.DataFrame({"impression_id": [1, 1], RANK: [1, 1], "clicked": [1, 0]}))
    with pytest.raises(ValueError, match="1..n"):
        impression_metrics(pd.DataFrame({"impression_id": [1, 1], RANK: [1, 3], "clicked": [1, 0]}))
    with pytest.raises(ValueError, match="lacks"):
        impression_metrics(pd.DataFrame({"impression_id": [1], RANK: [1]}))


def test_rank_by_score_is_the_frames_own_sort():
    """The one stable sort on raw columns orders rows as the frame's multi-column sort does: ties on score and
    tiebreak, NaN in either, negative zero, users in any order."""
    rng = np.random.default_rng(2)
    n = 5_000
    scored = pd.DataFrame({
        USER_ID: rng.integers(0, 300, n),
        ARTICLE_ID: rng.permutation(n),
        "s": rng.choice([0.5, -0.0, 0.0, np.nan, 1.5, -2.0], n),
        "t": rng.choice([1.0, np.nan, 0.0, 3.0], n),
    })
    for tiebreak, k in [("t", None), ("t", 3), (None, 5)]:
        by = [USER_ID, "s"] + ([tiebreak] if tiebreak else []) + [ARTICLE_ID]
        want = scored.sort_values(by, ascending=[True, False] + ([False] if tiebreak else []) + [True],
                                  na_position="last", kind="mergesort")
        want = want.assign(**{RANK: want.groupby(USER_ID, sort=False).cumcount().to_numpy() + 1})
        want = (want if k is None else want[want[RANK] <= k]).reset_index(drop=True)
        pd.testing.assert_frame_equal(rank_by_score(scored, "s", k=k, tiebreak=tiebreak), want)
        # Sorted once into the ties' order, a frame ranks by any score with the user and score keys alone.
        presorted = tie_order(scored, tiebreak)
        assert not presorted.equals(scored)
        pd.testing.assert_frame_equal(rank_by_score(presorted, "s", k=k, tiebreak=tiebreak, presorted=True), want)


@pytest.mark.parametrize("step", [1, 2**56])  # packed pair keys; ids too far apart to pack
def test_pair_metrics_match_a_merge_on_both_columns(step):
    """Recall of the candidate list and the top-k metrics read the (user, article) pairs as a two-column merge
    does: duplicated truth rows, users without a hit or without a list, ids of any size."""
    rng = np.random.default_rng(5)
    users = step * rng.integers(0, 40, 600)
    cands = pd.DataFrame({USER_ID: users, ARTICLE_ID: rng.integers(0, 60, 600)}).drop_duplicates()
    truth = pd.DataFrame({USER_ID: step * rng.integers(0, 50, 300), ARTICLE_ID: rng.integers(0, 60, 300)})
    found = truth.drop_duplicates().merge(cands, how="left", indicator=True)
    want = (found["_merge"] == "both").groupby(found[USER_ID]).mean().rename("candidate_recall")
    pd.testing.assert_series_equal(candidate_recall(cands, truth), want)
    ranked = rank_by_score(cands.assign(s=rng.random(len(cands))), "s")
    got = per_user_metrics(ranked, truth, k=5)
    hits = ranked[ranked[RANK] <= 5].merge(truth.drop_duplicates())
    assert len(got) == truth[USER_ID].nunique()
    hit_users = hits.groupby(USER_ID).size()
    n_rel = truth.drop_duplicates().groupby(USER_ID).size()
    np.testing.assert_array_equal(got.loc[hit_users.index, "recall"].to_numpy(),
                                  hit_users.to_numpy() / n_rel[hit_users.index].to_numpy())
    pd.testing.assert_series_equal(got.loc[hit_users.index, "hr"], pd.Series(1.0, index=hit_users.index, name="hr"))
    assert (got.drop(hit_users.index)["hr"] == 0).all()
    first = hits.groupby(USER_ID)[RANK].min()
    np.testing.assert_array_equal(got.loc[first.index, "mrr"].to_numpy(), 1.0 / first.to_numpy())
