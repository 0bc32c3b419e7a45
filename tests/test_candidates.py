"""Candidate index: the pool, each source on a world small enough to reason about, persistence, the stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from clickdata import EPOCH, articles, at, clicks, write_raw, write_validated

from pipelines import columns as C
from pipelines.aggregates import aggregate_all
from pipelines.candidates import (
    OUTPUT_COLUMNS,
    CandidateIndex,
    build_candidates,
    candidate_recalls,
    candidate_report,
    label_candidates,
    sample_users,
)
from pipelines.lake import landed_hours
from pipelines.sources.base import PairKeys, names, top_excluding

CUTOFF = at(10)
PARAMS = {
    "pool_fresh_hours": 24,
    "pool_active_hours": 6,
    "windows": [1, 6, 24],
    "trend_half_life_hours": 1,
    "cocl_half_life_hours": 6,
    "cocl_top_k": 50,
    "recent_clicks": 10,
    "cocl_recency": 0.7,
    "profile_clicks": 20,
    "profile_half_life_hours": 24,
    "emb_trend_boost": 0.0,
    "similar_k": 3,
    "per_source": {"emb": 3, "cocl": 3, "pop": 10, "trend": 10},
    "rrf_k": 5,
    "fusion_weights": {"emb": 1.0, "cocl": 0.5, "pop": 0.1, "trend": 0.5},
    "recall_at": [2, 5],
}
# Articles: 0 back catalogue still read at hour 8; 1, 2, 5 one topic; 3, 4 another; 6 published after the
# cutoff; 7 back catalogue last read at hour 1 (stale).
CREATED = [-100, 1, 2, 3, 4, 5, 30, -200]
TOPIC = {0: 2, 1: 0, 2: 0, 3: 1, 4: 1, 5: 0, 6: 0, 7: 2}


def _embeddings() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 5.0
    return np.stack([centres[TOPIC[i]] + rng.normal(0, 0.3, 8) for i in range(len(CREATED))]).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cand_world")
    rows = [
        (5, 500, 7, 1.1),
        (5, 500, 1, 1.2),  # user 5: stale 7 then 1
        (1, 100, 1, 2.1),
        (1, 100, 2, 2.2),  # user 1: 1, 2
        (2, 200, 1, 3.1),
        (2, 200, 2, 3.2),
        (2, 200, 3, 3.3),  # user 2: 1, 2, 3
        (3, 300, 0, 8.1),
        (3, 300, 3, 8.2),  # user 3: 0, 3
        (1, 101, 4, 11.5),
        (1, 101, 5, 11.6),  # after the cutoff
    ]
    write_validated(root, clicks(rows))
    meta = articles(CREATED, categories=[TOPIC[i] for i in range(len(CREATED))])
    write_raw(root, meta, _embeddings())
    aggregate_all(root, EPOCH, 5)
    index = CandidateIndex.fit(root, meta, _embeddings(), CUTOFF, PARAMS, EPOCH)
    history = clicks(rows[:9])
    return {"root": root, "meta": meta, "index": index, "history": history}


def _rows(cands: pd.DataFrame, user: int, source: str) -> list[int]:
    mine = cands[(cands[C.USER_ID] == user) & (cands[C.rank_col(source)] > 0)]
    return mine.sort_values(C.rank_col(source))[C.ARTICLE_ID].tolist()


@pytest.mark.unit
def test_pool_is_published_before_the_cutoff_and_fresh_or_still_read(world):
    pool = world["index"].pool.set_index(C.ARTICLE_ID)
    assert sorted(pool.index) == [0, 1, 2, 3, 4, 5]  # not 6 (future), not 7 (stale)
    assert pool.loc[1, C.CLICKS] == 3 and pool.loc[4, C.CLICKS] == 0
    assert pool.loc[3, "last_click_hour"] == 8


@pytest.mark.unit
def test_an_index_fitted_on_normalised_embeddings_is_the_same_index(world):
    """A caller holding only the normalised matrix (the evaluation's replay) gets the index the raw one gives."""
    from pipelines.features import normalise_embeddings

    raw = _embeddings() * np.arange(1, len(_embeddings()) + 1, dtype=np.float32)[:, None]  # norms other than 1
    a = CandidateIndex.fit(world["root"], world["meta"], raw, CUTOFF, PARAMS, EPOCH)
    b = CandidateIndex.fit(world["root"], world["meta"], normalise_embeddings(raw), CUTOFF, PARAMS, EPOCH,
                           normalised=True)
    np.testing.assert_array_equal(a.emb, b.emb)
    pd.testing.assert_frame_equal(a.candidates(world["history"]), b.candidates(world["history"]))
    as_given = CandidateIndex.fit(world["root"], world["meta"], raw, CUTOFF, PARAMS, EPOCH, normalised=True)
    np.testing.assert_array_equal(as_given.emb, raw[as_given.emb_ids])  # taken as they are, not scaled again


@pytest.mark.unit
def test_each_source_on_a_hand_checked_world(world):
    cands = world["index"].candidates(world["history"], users=[1, 4])
    assert list(cands.columns) == OUTPUT_COLUMNS
    # user 1 read 1, 2 (topic 0): the closest unread article is 5 (topic 0); 3 was co-read with both
    assert _rows(cands, 1, "emb")[0] == 5
    assert _rows(cands, 1, "cocl") == [3]
    # popularity: 1 (3 clicks), then 3 and 2 (2 each; 3 was read more recently), 0, then unread by newest
    assert _rows(cands, 4, "pop") == [1, 3, 2, 0, 5, 4]
    # trend (half-life 1 h): 3 and 0 were read at hour 8
    assert _rows(cands, 4, "trend")[:4] == [3, 0, 1, 2]
    # read articles never come back, from any source
    assert not cands[(cands[C.USER_ID] == 1)][C.ARTICLE_ID].isin([1, 2]).any()
    assert _rows(cands, 1, "pop") == [3, 0, 5, 4]


@pytest.mark.unit
def test_cold_users_get_only_popularity_sources(world):
    cands = world["index"].candidates(world["history"], users=[4, 99])
    assert (cands[[C.rank_col("emb"), C.rank_col("cocl")]] == 0).all().all()
    assert cands[[C.score_col("emb"), C.score_col("cocl")]].isna().all().all()
    assert set(cands[C.USER_ID]) == {4, 99}


@pytest.mark.unit
def test_ranks_scores_and_fusion_are_consistent(world):
    cands = world["index"].candidates(world["history"], users=[1, 2, 3, 4])
    assert not cands.duplicated([C.USER_ID, C.ARTICLE_ID]).any()
    for s in names():
        proposed = cands[C.rank_col(s)] > 0
        assert cands.loc[proposed, C.score_col(s)].notna().all()
        assert cands.loc[~proposed, C.score_col(s)].isna().all()
        for _, g in cands[proposed].groupby(C.USER_ID):
            assert sorted(g[C.rank_col(s)]) == list(range(1, len(g) + 1))
            ordered = g.sort_values(C.rank_col(s))[C.score_col(s)].to_numpy()
            assert (np.diff(ordered) <= 1e-9).all()  # rank 1 = highest score
    w, k = PARAMS["fusion_weights"], PARAMS["rrf_k"]
    expect = sum(np.where(cands[C.rank_col(s)] > 0, w[s] / (k + cands[C.rank_col(s)]), 0.0) for s in w)
    np.testing.assert_allclose(cands[C.score_col(C.FUSED)], expect)
    first = cands[cands[C.rank_col(C.FUSED)] == 1].set_index(C.USER_ID)[C.score_col(C.FUSED)]
    assert (first == cands.groupby(C.USER_ID)[C.score_col(C.FUSED)].max()).all()


@pytest.mark.unit
def test_one_user_online_gets_what_the_batch_gave_them(world):
    index, history = world["index"], world["history"]
    batch = index.candidates(history, users=[1, 2, 3, 4])
    for user in (1, 3, 4):
        alone = index.candidates(history[history[C.USER_ID] == user], users=[user])
        pd.testing.assert_frame_equal(alone, batch[batch[C.USER_ID] == user].reset_index(drop=True))


@pytest.mark.unit
def test_save_load_round_trip(world, tmp_path):
    index = world["index"]
    loaded = CandidateIndex.load(index.save(tmp_path / "idx"))
    pd.testing.assert_frame_equal(loaded.pool, index.pool)
    pd.testing.assert_frame_equal(loaded.similar, index.similar)
    pd.testing.assert_frame_equal(loaded.candidates(world["history"]), index.candidates(world["history"]))
    with pytest.raises(FileNotFoundError, match="newsrec candidates"):
        CandidateIndex.load(tmp_path / "nothing")


@pytest.mark.unit
def test_user_profile_and_similar_articles(world):
    index = world["index"]
    users, prof = index.user_profile(world["history"])
    assert list(users) == [1, 2, 3, 5]
    np.testing.assert_allclose(np.linalg.norm(prof, axis=1), 1.0, rtol=1e-5)
    # user 5 read 7 then 1: 7 is in the index (clicked before the cutoff), so both count
    topic = index.emb[np.searchsorted(index.emb_ids, [1, 7])]
    assert prof[3] @ topic[0] > 0.3 and prof[3] @ topic[1] > 0.3
    sim = index.similar_articles([1, 6, 99], k=2)
    assert set(sim[C.ARTICLE_A]) == {1}  # 6 and 99 have no embedding in the index
    assert set(sim[C.ARTICLE_B]) == {2, 5}
    assert (sim[C.ARTICLE_A] != sim[C.ARTICLE_B]).all()


@pytest.mark.unit
def test_bad_input_is_a_clear_error(world):
    index = world["index"]
    with pytest.raises(ValueError, match="click_timestamp"):
        index.candidates(world["history"][[C.USER_ID, C.CLICK_ARTICLE_ID]])
    with pytest.raises(ValueError, match="unknown candidate source"):
        index.candidates(world["history"], n={"bogus": 3})
    with pytest.raises(ValueError, match="hour boundary"):
        CandidateIndex.fit(world["root"], world["meta"], _embeddings(), CUTOFF + 5, PARAMS, EPOCH)
    with pytest.raises(ValueError, match="do not cover"):
        CandidateIndex.fit(world["root"], world["meta"], _embeddings()[:3], CUTOFF, PARAMS, EPOCH)


@pytest.mark.unit
def test_heavy_readers_still_get_n_unread_items_without_lengthening_everyone():
    ids = np.arange(100, dtype=np.int64)
    depths = []

    def fetch(users, depth):
        depths.append((len(users), depth))
        return (
            np.repeat(users, depth),
            np.tile(ids[:depth], len(users)),
            np.tile(-ids[:depth].astype(float), len(users)),
        )

    read = PairKeys(np.full(40, 1), ids[:40], 100)  # user 1 read the 40 most popular items
    top = top_excluding(fetch, np.array([1, 2]), read, n=5, max_depth=100)
    assert top.article[top.user == 1].tolist() == [40, 41, 42, 43, 44]
    assert top.article[top.user == 2].tolist() == [0, 1, 2, 3, 4]
    assert top.rank[top.user == 1].tolist() == [1, 2, 3, 4, 5]
    assert depths[0] == (2, 21) and all(n == 1 for n, _ in depths[1:])  # only user 1 went deeper


@pytest.mark.unit
def test_user_sample_is_fixed_and_nested():
    users = np.arange(1000, 3000)
    a = sample_users(users[::-1], 100)
    assert len(a) == 100 and np.array_equal(a, sample_users(users, 100)) and np.isin(a, users).all()
    assert np.isin(sample_users(users, 50), a).all()  # a smaller sample keeps a subset of the same users
    assert np.array_equal(sample_users(users[:10], 100), users[:10])
    assert a.min() < 1200 and a.max() > 2800  # spread over the ids, not the first ones


@pytest.mark.unit
def test_labels_and_report():
    cands = pd.DataFrame(
        {
            C.USER_ID: [1, 1, 1, 2],
            C.ARTICLE_ID: [10, 11, 12, 10],
            **{C.rank_col(s): [1, 2, 0, 1] for s in names()},
            C.rank_col(C.FUSED): [1, 2, 3, 1],
        }
    )
    targets = pd.DataFrame({C.USER_ID: [1, 1, 2], C.ARTICLE_ID: [12, 99, 10], C.WARM: [True, True, False]})
    labelled = label_candidates(cands, targets)
    assert labelled[C.LABEL].tolist() == [0, 0, 1, 1]
    rep = candidate_report(candidate_recalls(labelled, targets, [1, 3]))
    assert rep["warm"]["union"] == 0.5 and rep["warm"]["fused@1"] == 0.0 and rep["warm"]["fused@3"] == 0.5
    assert rep["cold"]["emb"] == 1.0 and rep["all"]["users"] == 2


@pytest.mark.unit
def test_recalls_from_labels_are_the_joined_recalls():
    """candidate_recalls counts labels; metrics.candidate_recall joins the lists with the truth: the same figures."""
    from pipelines.metrics import candidate_recall

    rng = np.random.default_rng(3)
    pairs = np.unique(rng.integers(0, 40, (3000, 2)), axis=0)
    cands = pd.DataFrame({C.USER_ID: pairs[:, 0], C.ARTICLE_ID: pairs[:, 1]})
    for s in names():
        cands[C.rank_col(s)] = rng.integers(0, 3, len(cands))
    cands[C.rank_col(C.FUSED)] = cands.groupby(C.USER_ID).cumcount() + 1
    targets = pd.DataFrame({C.USER_ID: rng.integers(0, 45, 400), C.ARTICLE_ID: rng.integers(0, 50, 400)})
    targets[C.WARM] = targets[C.USER_ID] % 2 == 0
    got = candidate_recalls(label_candidates(cands, targets), targets, [1, 5])
    assert got.index.tolist() == sorted(targets[C.USER_ID].unique()) and (got["list_length"] > 0).any()
    assert ((got["list_length"] == 0) == ~got.index.isin(cands[C.USER_ID])).all()  # users 40-44 have no list
    lists = {s: cands[cands[C.rank_col(s)] > 0] for s in names()} | {"union": cands}
    lists |= {f"fused@{k}": cands[cands[C.rank_col(C.FUSED)] <= k] for k in (1, 5)}
    for name, rows in lists.items():
        want = candidate_recall(rows, targets).reindex(got.index).to_numpy()
        np.testing.assert_array_equal(got[name].to_numpy(), want, err_msg=name)


@pytest.mark.data
def test_stage_writes_labelled_candidates_and_indexes(tiny_validated, tmp_path, monkeypatch):
    from pipelines.config import load_params
    from pipelines.split import eval_targets, plan_snapshots, snapshot_clicks

    epoch = load_params("data")["epoch_ms"]
    params = load_params("candidates")
    root = tiny_validated
    work = tmp_path / "agg_root"
    work.mkdir()
    for sub in ("raw", "validated"):
        (work / sub).symlink_to(root / sub)
    aggregate_all(work, epoch, load_params("aggregates")["coclick_max_distance"])
    snaps = plan_snapshots(
        landed_hours(root / "validated" / "clicks"),
        epoch,
        test_hours=4,
        val_hours=4,
        label_hours=4,
        train_snapshots=1,
        min_history_hours=8,
    )
    reports = build_candidates(work, snaps, tmp_path / "cands", tmp_path / "idx", params, epoch)
    assert set(reports) == {s.name for s in snaps if s.role != "serve"}
    assert (tmp_path / "idx" / "serve" / "meta.json").exists()
    test = next(s for s in snaps if s.name == "test")
    cands = pd.read_parquet(tmp_path / "cands" / "test.parquet")
    history, target = snapshot_clicks(root / "validated" / "clicks", test)
    meta = pd.read_csv(root / "raw" / C.METADATA_FILE)
    targets = eval_targets(history, target, meta, test.cutoff_ms)
    assert set(cands[C.USER_ID]) == set(targets[C.USER_ID])
    # labels are exactly the target pairs that made it into the lists
    hits = cands.loc[cands[C.LABEL] == 1, [C.USER_ID, C.ARTICLE_ID]]
    assert len(hits.merge(targets, on=[C.USER_ID, C.ARTICLE_ID])) == len(hits) > 0
    # nothing read before the cutoff is proposed
    read = history[[C.USER_ID, C.CLICK_ARTICLE_ID]].rename(columns={C.CLICK_ARTICLE_ID: C.ARTICLE_ID})
    assert cands.merge(read.drop_duplicates(), on=[C.USER_ID, C.ARTICLE_ID]).empty
    rep = reports["test"]
    per_user = hits.groupby(C.USER_ID).size() / targets.groupby(C.USER_ID).size()
    assert rep["all"]["union"] == pytest.approx(
        per_user.reindex(targets[C.USER_ID].unique()).fillna(0).mean()
    )
    assert 0 < rep["warm"]["emb"] <= 1 and rep["cold"]["emb"] == 0.0
    # every article proposed was published before the cutoff
    created = meta.set_index(C.ARTICLE_ID)[C.CREATED_AT_TS]
    assert (created.reindex(cands[C.ARTICLE_ID]).to_numpy() < test.cutoff_ms).all()

    # made and written a few users at a time (the stage's memory bound): the same rows, in the same order
    import pipelines.candidates as stage

    monkeypatch.setattr(stage, "LIST_BLOCK_USERS", 3)
    assert len(targets[C.USER_ID].unique()) > 3
    blocked = build_candidates(work, snaps, tmp_path / "blocked", tmp_path / "idx2", params, epoch)
    assert blocked == reports
    for snap in reports:
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "blocked" / f"{snap}.parquet"),
                                      pd.read_parquet(tmp_path / "cands" / f"{snap}.parquet"))
    # and read back a few whole users at a time: each block exactly its users' rows, in the file's order
    whole = pd.read_parquet(tmp_path / "blocked" / "test.parquet")
    users = np.unique(whole[C.USER_ID].to_numpy())
    pd.testing.assert_frame_equal(pd.concat(stage.read_candidate_blocks(tmp_path / "blocked" / "test.parquet",
                                                                        users, 2), ignore_index=True), whole)
    some = users[1::2]
    for block, mine in zip(stage.read_candidate_blocks(tmp_path / "blocked" / "test.parquet", some, 2),
                           stage.user_blocks(some, 2), strict=True):
        pd.testing.assert_frame_equal(block, whole[whole[C.USER_ID].isin(mine)].reset_index(drop=True))


@pytest.mark.integration
def test_each_user_alone_gets_exactly_their_rows_of_a_large_batch(tiny_validated, tmp_path):
    """The API asks for one user at a time, the offline stage for thousands at once: same frame, bit for bit
    (scores included), also where embedding scores nearly tie."""
    from pipelines.config import load_params
    from pipelines.features import read_articles, read_embeddings
    from pipelines.split import plan_snapshots, snapshot_clicks

    epoch = load_params("data")["epoch_ms"]
    params = load_params("candidates")
    work = tmp_path / "agg_root"
    work.mkdir()
    for sub in ("raw", "validated"):
        (work / sub).symlink_to(tiny_validated / sub)
    aggregate_all(work, epoch, load_params("aggregates")["coclick_max_distance"])
    snaps = plan_snapshots(landed_hours(work / "validated" / "clicks"), epoch, test_hours=4, val_hours=4,
                           label_hours=4, train_snapshots=1, min_history_hours=8)
    test = next(s for s in snaps if s.name == "test")
    meta = read_articles(work / "raw" / C.METADATA_FILE)
    index = CandidateIndex.fit(work, meta, read_embeddings(work / "raw" / C.EMBEDDINGS_FILE), test.cutoff_ms,
                               params, epoch)
    history, _ = snapshot_clicks(work / "validated" / "clicks", test)
    users = np.unique(history[C.USER_ID].to_numpy())
    assert len(users) >= 200  # a batch large enough for faiss's batched (BLAS) scoring
    # The search itself: a query scored alone or among thousands (as offline) gets the same bits.
    queries = index.emb[np.arange(5000) % len(index.emb)]
    scores, ids = index._search(queries, 150, prior=1.0)
    for i in range(0, len(queries), 50):
        one_scores, one_ids = index._search(queries[i : i + 1], 150, prior=1.0)
        np.testing.assert_array_equal(one_scores[0], scores[i])
        np.testing.assert_array_equal(one_ids[0], ids[i])
    batch = index.candidates(history)
    for user in users[:: max(1, len(users) // 60)]:
        alone = index.candidates(history[history[C.USER_ID] == user], users=[user])
        pd.testing.assert_frame_equal(alone, batch[batch[C.USER_ID] == user].reset_index(drop=True),
                                      check_exact=True)


def test_top_unread_cuts_one_global_list_per_user_skipping_read_articles():
    from pipelines.candidates import top_unread

    clicks = pd.DataFrame({C.USER_ID: [1, 1, 2], C.CLICK_ARTICLE_ID: [10, 30, 99]})
    got = top_unread(np.array([10, 20, 30, 40]), np.array([4.0, 3.0, 2.0, 1.0]), np.array([2, 1, 3]), clicks, 2)
    lists = {u: g.sort_values(C.RANK)[C.ARTICLE_ID].tolist() for u, g in got.groupby(C.USER_ID)}
    assert lists == {1: [20, 40], 2: [10, 20], 3: [10, 20]}
    assert got.loc[got[C.USER_ID] == 1, C.SCORE].tolist() == [3.0, 1.0]
