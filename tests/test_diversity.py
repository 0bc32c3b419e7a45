"""The diversity re-rank (MMR over article embeddings) and its measures, on hand-made lists and the served list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import columns as C
from pipelines.diversity import check_params, lookup, mmr, rerank
from pipelines.metrics import list_diversity

# Six articles in two topics: 0-3 point one way (0-2 identical), 4-5 the other; scores fall with the index.
VECTORS = np.array([[1, 0], [1, 0], [1, 0], [0.8, 0.6], [0, 1], [0, 1]], dtype=np.float32)
SCORES = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])


def _ild(picks: np.ndarray) -> float:
    frame = pd.DataFrame({C.USER_ID: 1, C.ARTICLE_ID: picks, C.RANK: np.arange(1, len(picks) + 1)})
    return float(list_diversity(frame, lookup(VECTORS), pd.Series(dtype=float), k=len(picks))["ild"].iloc[0])


@pytest.mark.unit
def test_mmr_with_lambda_one_keeps_the_ranker_order():
    np.testing.assert_array_equal(mmr(SCORES, VECTORS, 4, 1.0), [0, 1, 2, 3])
    np.testing.assert_array_equal(mmr(np.ones(6), VECTORS, 6, 1.0), np.arange(6))  # ties keep their positions


@pytest.mark.unit
def test_lower_lambda_raises_intra_list_diversity():
    ilds = [_ild(mmr(SCORES, VECTORS, 3, lam)) for lam in (1.0, 0.7, 0.3)]
    assert ilds[0] == 0.0  # 0, 1, 2: one direction
    assert ilds[1] > ilds[0] and ilds[2] > ilds[0]  # (greedy MMR is not monotone in lambda beyond that)
    assert mmr(SCORES, VECTORS, 3, 0.3)[0] == 0  # the best article still leads
    assert 4 in mmr(SCORES, VECTORS, 3, 0.3)  # the other topic enters the list


@pytest.mark.unit
def test_rerank_works_per_user_within_depth():
    users = np.array([1] * 6 + [2] * 2)
    articles = np.array([0, 1, 2, 3, 4, 5, 4, 0])
    scores = np.r_[SCORES, 2.0, 1.0]
    params = {"diversity": "mmr", "mmr_lambda": 0.3, "mmr_depth": 4}
    keep = rerank(users, articles, scores, lookup(VECTORS), 3, params)
    assert list(users[keep]) == [1, 1, 1, 2, 2]
    assert set(articles[keep[:3]]) <= {0, 1, 2, 3}  # only the depth best are eligible
    off = rerank(users, articles, scores, lookup(VECTORS), 3, {"diversity": "none"})
    assert list(off) == [0, 1, 2, 6, 7]


@pytest.mark.unit
def test_rerank_of_many_users_is_each_list_alone():
    """Users' vectors are fetched a block of users at a time: every user's picks are still MMR over their own
    depth best rows, whichever block they fall in."""
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sizes = rng.integers(1, 70, 200)
    users = np.repeat(np.arange(len(sizes)), sizes)
    articles = rng.integers(0, len(vectors), len(users))
    scores = rng.random(len(users))
    params = {"diversity": "mmr", "mmr_lambda": 0.5, "mmr_depth": 50}
    keep = rerank(users, articles, scores, lookup(vectors), 10, params)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    want = [a + mmr(scores[a : a + min(n, 50)], vectors[articles[a : a + min(n, 50)]], 10, 0.5)
            for a, n in zip(starts, sizes, strict=True)]
    np.testing.assert_array_equal(keep, np.concatenate(want))


@pytest.mark.unit
def test_list_diversity_by_hand():
    recs = pd.DataFrame({C.USER_ID: [1, 1, 2, 2, 2], C.ARTICLE_ID: [0, 1, 0, 4, 9], C.RANK: [1, 2, 1, 2, 3]})
    got = list_diversity(recs, lookup(VECTORS), pd.Series({0: 5, 1: 5, 4: 6}), k=3)
    assert got.loc[1, "ild"] == 0.0 and got.loc[1, "categories"] == 1
    assert got.loc[2, "ild"] == pytest.approx(1.0)  # 9 has no embedding: only the pair (0, 4) counts
    assert got.loc[2, "categories"] == 3  # 5, 6 and one unknown


@pytest.mark.unit
def test_list_diversity_over_many_users_is_each_list_alone():
    """Lists are measured in blocks of users (a Globo replay's lists at once would be gigabytes): a shuffled
    frame of users across several blocks, some lists short, gives each user what their list gives alone."""
    rng = np.random.default_rng(7)
    users = np.repeat(np.arange(9000), 3)
    recs = pd.DataFrame({C.USER_ID: users, C.ARTICLE_ID: rng.integers(0, 7, len(users)),
                         C.RANK: np.tile([1, 2, 3], 9000)})
    recs = recs[~((recs[C.USER_ID] % 5 == 0) & (recs[C.RANK] == 3))].sample(frac=1, random_state=3)
    got = list_diversity(recs, lookup(VECTORS), pd.Series(dtype=float), k=3)
    assert len(got) == 9000
    for user in (0, 4095, 4096, 4097, 8191, 8192, 8999):
        alone = recs[recs[C.USER_ID] == user]
        want = list_diversity(alone, lookup(VECTORS), pd.Series(dtype=float), k=3).loc[user]
        assert got.loc[user, "ild"] == pytest.approx(want["ild"], nan_ok=True)
        assert got.loc[user, "categories"] == want["categories"]


@pytest.mark.unit
@pytest.mark.parametrize("bad, match", [({"diversity": "cap"}, "one of"),
                                        ({"diversity": "mmr", "mmr_lambda": 1.5, "mmr_depth": 50}, "mmr_lambda"),
                                        ({"diversity": "mmr", "mmr_lambda": 0.5}, "mmr_depth")])
def test_bad_rank_params_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        check_params(bad)


@pytest.mark.integration
def test_the_served_list_goes_through_the_same_rerank(serving_bundle):
    from pipelines.bundle import ServingBundle
    from pipelines.diversity import index_vectors
    from serving import recommend as rec

    p = rec.prepare(ServingBundle.load(serving_bundle), compile_ranker=False)
    vectors = index_vectors(p.bundle.index)
    users = [u for u, _ in p.users.listing(range(0, p.users.n_users, max(1, p.users.n_users // 12)))]
    plain_ild, diverse_ild = [], []
    for user in users:
        plain = rec.recommend(p, user, [], rec.Context(), p.cutoff_ms, 10)
        same = rec.recommend(p, user, [], rec.Context(), p.cutoff_ms, 10,
                             {"diversity": "mmr", "mmr_lambda": 1.0, "mmr_depth": 50})
        assert same.article_ids == plain.article_ids
        diverse = rec.recommend(p, user, [], rec.Context(), p.cutoff_ms, 10,
                                {"diversity": "mmr", "mmr_lambda": 0.3, "mmr_depth": 50})
        assert diverse.article_ids[0] == plain.article_ids[0] and len(diverse.article_ids) == len(plain.article_ids)
        # the same picks rerank() makes offline from the ranker's 50 best
        top50 = rec.recommend(p, user, [], rec.Context(), p.cutoff_ms, 50)
        ids = np.array(top50.article_ids)
        keep = mmr(np.array([i["score"] for i in top50.items]), vectors(ids), 10, 0.3)
        assert diverse.article_ids == ids[keep].tolist()
        for ild, res in ((plain_ild, plain), (diverse_ild, diverse)):
            frame = pd.DataFrame({C.USER_ID: 1, C.ARTICLE_ID: res.article_ids,
                                  C.RANK: np.arange(1, len(res.article_ids) + 1)})
            ild.append(list_diversity(frame, vectors, pd.Series(dtype=float), k=10)["ild"].iloc[0])
    assert np.mean(diverse_ild) > np.mean(plain_ild)


@pytest.mark.unit
def test_the_service_reads_the_same_rank_section(tmp_path):
    import yaml

    from pipelines.config import load_params
    from serving.settings import Settings

    assert Settings.from_params().rank == load_params("rank")  # one setting for the API and the evaluation
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["rank"]["mmr_lambda"] = 2
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="mmr_lambda"):
        Settings.from_params(bad)
