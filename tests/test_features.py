"""Feature tables: hand-checkable values on inline frames, point-in-time correctness, save/load."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from pipelines import columns as C
from pipelines import features as F
from pipelines.lake import landed_hours

H = C.HOUR_MS
PARAMS = {"profile_half_life_h": 24}


def _click(user, session, article, ts, device=1, os_=2, referrer=1, region=5, env=4):
    return {
        C.USER_ID: user, C.SESSION_ID: session, C.SESSION_START: ts, C.SESSION_SIZE: 2,
        C.CLICK_ARTICLE_ID: article, C.CLICK_TIMESTAMP: ts, C.CLICK_ENVIRONMENT: env,
        C.CLICK_DEVICE_GROUP: device, C.CLICK_OS: os_, C.CLICK_COUNTRY: 1, C.CLICK_REGION: region,
        C.CLICK_REFERRER_TYPE: referrer,
    }


@pytest.fixture
def articles() -> pd.DataFrame:
    return pd.DataFrame({
        C.ARTICLE_ID: [0, 1, 2, 3, 4],
        C.CATEGORY_ID: [0, 0, 1, 1, 2],
        C.CREATED_AT_TS: [0, 0, H, 2 * H, 10 * H],
        C.PUBLISHER_ID: 0,
        C.WORDS_COUNT: [100, 200, 300, 400, 500],
    })


@pytest.fixture
def embeddings() -> np.ndarray:
    return F.normalise_embeddings(np.eye(5, 8, dtype=np.float32) + 0.1)


@pytest.fixture
def history() -> pd.DataFrame:
    return pd.DataFrame([
        _click(1, 10, 0, 2 * H),
        _click(1, 10, 2, 2 * H + 60_000, device=3),
        _click(2, 20, 1, 3 * H),
        _click(1, 11, 3, 5 * H + 30 * 60_000),
    ])


@pytest.mark.unit
def test_user_table_values(history, articles):
    users, cats = F.fit_user_tables(history, articles, 6 * H)
    u1 = users.loc[1]
    assert u1["u_clicks"] == 3 and u1["u_sessions"] == 2
    assert u1["u_hours_since_last"] == pytest.approx(0.5)
    assert u1["u_hours_since_first"] == pytest.approx(4.0)
    assert u1["u_mean_session_size"] == pytest.approx(1.5)
    assert u1["u_top_cat_share"] == pytest.approx(2 / 3)
    assert u1["u_device"] == 1  # the habit is the most frequent device, not the last one
    assert u1["u_last_article"] == 3 and u1["u_last_category"] == 1
    # the clicks before the last one, newest first; -1 where the user has no more
    assert [u1[f"u_prev_article_{i}"] for i in range(1, F.RECENT_CLICKS)] == [2, 0, -1, -1]
    assert users.loc[2, "u_prev_article_1"] == -1
    shares = cats.set_index([C.USER_ID, C.CATEGORY_ID])["share"]
    assert shares[(1, 1)] == pytest.approx(2 / 3) and shares[(2, 0)] == pytest.approx(1.0)


@pytest.mark.unit
def test_user_table_means_counts_and_ties(history, articles):
    ties = pd.concat([history, pd.DataFrame([_click(2, 21, 4, 4 * H, device=2), _click(2, 21, 4, 4 * H, device=7)])])
    users, _ = F.fit_user_tables(ties, articles, 26 * H + 30 * 60_000)
    u1, u2 = users.loc[1], users.loc[2]
    assert u1["u_n_categories"] == 2 and u2["u_n_categories"] == 2
    assert u1["u_clicks_24h"] == 1  # only the click at 5.5 h lies within 24 h of the cutoff at 26.5 h
    assert u1["u_mean_words"] == pytest.approx((100 + 300 + 400) / 3)
    assert u1["u_mean_click_age_h"] == pytest.approx((2 + (1 + 1 / 60) + 3.5) / 3)
    assert u2["u_mean_click_age_h"] == pytest.approx((3 + 0 + 0) / 3)  # read before publication counts as 0
    assert u2["u_device"] == 1  # 1, 2 and 7 once each: the smallest wins
    assert u2["u_last_article"] == 4 and u2["u_last_category"] == 2  # same time: the later row is last


@pytest.mark.unit
def test_user_tables_ignore_row_order_and_one_user_refits_to_their_batch_row(history, articles):
    rng = np.random.default_rng(3)
    clicks = pd.DataFrame([_click(int(u), int(u) * 10 + int(s), int(a), int(t), device=int(d))
                           for u, s, a, t, d in zip(rng.integers(0, 30, 400), rng.integers(0, 3, 400),
                                                    rng.integers(0, 5, 400), rng.integers(0, 20 * H, 400),
                                                    rng.integers(1, 4, 400), strict=True)])
    users, cats = F.fit_user_tables(clicks, articles, 20 * H)
    shuffled_users, shuffled_cats = F.fit_user_tables(clicks.sample(frac=1, random_state=1), articles, 20 * H)
    pd.testing.assert_frame_equal(users, shuffled_users)
    pd.testing.assert_frame_equal(cats, shuffled_cats)
    one, one_cats = F.fit_user_tables(clicks[clicks[C.USER_ID] == 7], articles, 20 * H)
    pd.testing.assert_frame_equal(one, users.loc[[7]])  # what the API refits online is the batch's row, exactly
    pd.testing.assert_frame_equal(one_cats, cats[cats[C.USER_ID] == 7].reset_index(drop=True))


@pytest.mark.unit
def test_user_tables_of_no_clicks_and_of_unknown_articles(history, articles):
    users, cats = F.fit_user_tables(history, articles, 0)
    assert users.empty and list(users.columns) == F.USER_FEATURES + F.USER_KEYS and cats.empty
    with pytest.raises(ValueError, match="1 article.* missing from the metadata, e.g. \\[9\\]"):
        F.fit_user_tables(pd.DataFrame([_click(1, 10, 9, H)]), articles, 6 * H)


@pytest.mark.unit
def test_article_table_windows_and_availability(history, articles):
    table = F.fit_article_table(history, articles, 6 * H)
    assert 4 not in table.index  # published after the cutoff: not rankable yet
    assert table.loc[3, "a_clicks_1h"] == 1 and table.loc[3, "a_age_h"] == pytest.approx(4.0)
    assert table.loc[0, "a_clicks_1h"] == 0 and table.loc[0, "a_clicks_6h"] == 1
    assert table.loc[1, "a_hours_since_last_click"] == pytest.approx(3.0)
    assert table.loc[0, "a_cat_clicks_24h"] == 2  # articles 0 and 1 share category 0
    # Shares of the window's clicks and the place in the 6-hour order (ties share it).
    assert table.loc[3, "a_share_1h"] == 1.0 and table.loc[0, "a_share_1h"] == 0.0
    assert table["a_share_6h"].tolist() == [0.25] * 4
    assert table["a_rank_6h"].tolist() == [1.0] * 4
    # Velocity: last hour's clicks against the lifetime hourly rate, 1 click * 4 h / (1 click + 1).
    assert table.loc[3, "a_velocity"] == pytest.approx(2.0) and table.loc[1, "a_velocity"] == 0.0


@pytest.mark.unit
def test_article_rank_and_shares_follow_the_counts(articles):
    clicks = pd.DataFrame([_click(u, u, a, 5 * H + u * 60_000) for u, a in enumerate([2, 2, 2, 1, 1, 0])])
    table = F.fit_article_table(clicks, articles, 6 * H)
    assert table.loc[[2, 1, 0, 3], "a_rank_6h"].tolist() == [1.0, 2.0, 3.0, 4.0]  # article 3 unread: last
    assert table.loc[2, "a_share_1h"] == pytest.approx(0.5)
    assert table.loc[2, "a_cat_share_1h"] == 1.0  # the only read article of category 1
    assert table.loc[1, "a_cat_share_1h"] == pytest.approx(2 / 3)  # category 0: articles 1 (x2) and 0 (x1)
    # The live refresh derives the same columns from moved counts (serving/live.py).
    moved = table.copy()
    moved["a_clicks_6h"] = [0, 0, 0, 9]
    F.derive_article_features(moved)
    assert moved.loc[3, "a_rank_6h"] == 1.0 and moved.loc[2, "a_rank_6h"] == 2.0


@pytest.mark.unit
def test_fit_ignores_clicks_at_or_after_cutoff(history, articles, embeddings):
    cutoff = 6 * H
    future = pd.DataFrame([_click(1, 12, 1, cutoff), _click(3, 30, 4, cutoff + 5 * H), _click(2, 21, 0, 7 * H)])
    before = F.fit_tables(history, articles, embeddings, cutoff, PARAMS)
    after = F.fit_tables(pd.concat([history, future]), articles, embeddings, cutoff, PARAMS)
    pd.testing.assert_frame_equal(before.users, after.users)
    pd.testing.assert_frame_equal(before.articles, after.articles)
    pd.testing.assert_frame_equal(before.user_categories, after.user_categories)
    np.testing.assert_array_equal(before.profiles, after.profiles)


@pytest.mark.unit
def test_profile_weights_recent_clicks_more(articles, embeddings):
    hist = pd.DataFrame([_click(1, 1, 0, 0), _click(1, 2, 3, 47 * H)])
    _, profiles = F.user_profiles(hist, embeddings, 48 * H, half_life_h=6)
    assert profiles[0] @ embeddings[3] > profiles[0] @ embeddings[0]
    assert np.linalg.norm(profiles[0]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.unit
def test_request_context_is_first_click_and_carries_no_article(history):
    target = pd.DataFrame([_click(1, 12, 0, 7 * H + 5, device=2), _click(1, 12, 1, 6 * H + 5, device=3)])
    ctx = F.request_context(target)
    assert list(ctx.columns) == F.CONTEXT_FEATURES
    assert ctx.loc[1, "c_device"] == 3 and ctx.loc[1, "c_hour_of_day"] == 6


@pytest.mark.unit
def test_assemble_pair_features_and_cold_users(history, articles, embeddings):
    tables = F.fit_tables(history, articles, embeddings, 6 * H, PARAMS)
    cands = pd.DataFrame({
        C.USER_ID: [1, 1, 99],
        C.ARTICLE_ID: [2, 1, 1],
        C.score_col("emb"): [0.5, np.nan, np.nan],
        C.rank_col("emb"): [1, 0, 0],
    })
    ctx = pd.DataFrame({c: [3] for c in F.CONTEXT_FEATURES}, index=pd.Index([1], name=C.USER_ID))
    X = F.assemble(cands, tables, ctx)
    assert list(X.columns) == F.FEATURES and len(X) == 3
    assert X.loc[0, "ua_cat_share"] == pytest.approx(2 / 3) and X.loc[1, "ua_cat_share"] == pytest.approx(1 / 3)
    assert X.loc[0, "ua_last_cat_match"] == 1.0 and X.loc[1, "ua_last_cat_match"] == 0.0
    assert X.loc[0, "ua_last_sim"] == pytest.approx(float(embeddings[3] @ embeddings[2]), rel=1e-5)
    user_row = tables.users.index.get_loc(1)
    assert X.loc[1, "ua_emb_sim"] == pytest.approx(float(tables.profiles[user_row] @ embeddings[1]), rel=1e-5)
    assert X.loc[0, "c_device_habit"] == 0.0  # request on device 3, habit device 1
    assert X.loc[0, "emb_score"] == 0.5 and np.isnan(X.loc[0, "cocl_score"])
    # User 1 read 0, 2, 3 (newest last): the candidate against each of them.
    sims = [float(embeddings[a] @ embeddings[2]) for a in (3, 2, 0)]
    assert X.loc[0, "ua_recent_sim_max"] == pytest.approx(max(sims), rel=1e-5)
    assert X.loc[0, "ua_recent_sim_mean"] == pytest.approx(np.mean(sims), rel=1e-5)
    assert X.loc[0, "ua_recent_cat_share"] == pytest.approx(2 / 3)  # 2 and 3 are in category 1
    assert X.loc[1, "ua_recent_cat_share"] == pytest.approx(1 / 3)  # article 1: category 0, like article 0
    # Category mix: user 1's share of category 1 (2/3) x article 2's share of category 1's clicks in 6 h (1/2).
    assert X.loc[0, "ua_cat_mix_6h"] == pytest.approx(2 / 3 * 1 / 2)
    # Article 2 is 5 h old, the user's last click 0.5 h ago: published before that visit.
    assert X.loc[0, "ua_new_since_visit"] == pytest.approx(4.5)
    # An unknown user is the cold path: no user or pair features, article features still there.
    assert X.loc[2, ["u_clicks", "ua_emb_sim", "ua_cat_share", "ua_recent_sim_max", "ua_recent_sim_mean",
                     "ua_recent_cat_share", "ua_new_since_visit"]].isna().all()
    assert X.loc[2, "a_clicks_6h"] == 1


@pytest.mark.unit
def test_rows_do_not_depend_on_their_neighbours_or_on_frame_vs_columns(history, articles, embeddings):
    """Lookups are shared across runs of equal ids; a row's features must still be its own, in any order,
    unknown users and articles (outside the catalogue's id range too) included."""
    tables = F.fit_tables(history, articles, embeddings, 6 * H, PARAMS)
    cands = pd.DataFrame({C.USER_ID: [1, 1, 1, 99, 99, 1, 2, 2], C.ARTICLE_ID: [2, 1, 10**6, 1, 2, 3, 2, 2]})
    together = F.assemble(cands, tables)
    as_columns = F.feature_columns({c: cands[c].to_numpy() for c in cands}, tables)
    for i in range(len(cands)):
        alone = F.assemble(cands.iloc[[i]], tables)
        pd.testing.assert_frame_equal(alone, together.iloc[[i]])
        np.testing.assert_array_equal([as_columns[f][i] for f in F.FEATURES], together.iloc[i].to_numpy())
    assert together.iloc[2][["a_clicks_6h", "a_category", "ua_emb_sim"]].isna().all()  # not in the catalogue


@pytest.mark.unit
def test_a_copy_with_one_users_rows_shares_the_article_blocks_and_one_with_other_articles_does_not(
        history, articles, embeddings):
    """The API replaces the user side per request (`dataclasses.replace`): the article blocks are built once
    and shared by those copies, and a copy with another article table never reads the old blocks."""
    tables = F.fit_tables(history, articles, embeddings, 6 * H, PARAMS)
    tables.build_article_blocks()
    block = tables.matrix("articles", F.ARTICLE_FEATURES)
    pos = tables.users.index.get_loc(1)
    one_user = dataclasses.replace(
        tables, users=tables.users.iloc[[pos]], profiles=tables.profiles[[pos]],
        user_categories=tables.user_categories[tables.user_categories[C.USER_ID] == 1], _cache={})
    cands = {C.USER_ID: np.array([1, 1, 1, 1]), C.ARTICLE_ID: np.array([4, 2, 0, 10**6])}
    alone, full = F.feature_columns(cands, one_user), F.feature_columns(cands, tables)
    for name in F.FEATURES:
        np.testing.assert_array_equal(alone[name], full[name], err_msg=name)
    assert one_user.matrix("articles", F.ARTICLE_FEATURES) is block

    changed = tables.articles.copy()
    changed["a_clicks_1h"] += 7
    other = dataclasses.replace(tables, articles=changed)  # the cache is not reset by hand
    column = F.ARTICLE_FEATURES.index("a_clicks_1h")
    np.testing.assert_array_equal(other.matrix("articles", F.ARTICLE_FEATURES)[:, column], block[:, column] + 7)
    assert tables.matrix("articles", F.ARTICLE_FEATURES) is block


@pytest.mark.unit
def test_row_positions_are_the_indexers_for_small_and_large_tables():
    """A request's one-user table is matched by comparison, a snapshot's by pandas' hash index: the same."""
    rng = np.random.default_rng(3)
    for size in (0, 1, 5, F._SMALL_INDEX, 200):
        index = pd.Index(rng.permutation(1000)[:size].astype(np.int64), name=C.USER_ID)
        ids = np.repeat(rng.integers(0, 1000, 40), rng.integers(1, 4, 40)).astype(np.int64)
        if size:
            ids[:5] = index[0]
        np.testing.assert_array_equal(F._positions(index, ids), index.get_indexer(ids))


@pytest.mark.unit
def test_assemble_rejects_frame_without_ids(history, articles, embeddings):
    tables = F.fit_tables(history, articles, embeddings, 6 * H, PARAMS)
    with pytest.raises(ValueError, match="article_id"):
        F.assemble(pd.DataFrame({C.USER_ID: [1]}), tables)


@pytest.mark.unit
def test_tables_round_trip(tmp_path, history, articles, embeddings):
    target = pd.DataFrame([_click(1, 12, 0, 7 * H)])
    tables = F.fit_tables(history, articles, embeddings, 6 * H, PARAMS, requests=target)
    loaded = F.FeatureTables.load(tables.save(tmp_path / "snap"), embeddings)
    pd.testing.assert_frame_equal(tables.users, loaded.users)
    pd.testing.assert_frame_equal(tables.articles, loaded.articles)
    pd.testing.assert_frame_equal(tables.context, loaded.context)
    np.testing.assert_array_equal(tables.profiles, loaded.profiles)
    assert loaded.cutoff_ms == 6 * H


@pytest.mark.unit
def test_tables_written_with_the_profile_column_still_load(tmp_path, history, articles, embeddings):
    """Bundles registered before profiles had their own .npy held them as a list column of users.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = F.fit_tables(history, articles, embeddings, 6 * H, PARAMS)
    out = tables.save(tmp_path / "snap")
    users = pa.Table.from_pandas(tables.users.reset_index(), preserve_index=False)
    flat = pa.array(tables.profiles.astype(np.float32).ravel())
    pq.write_table(users.append_column("profile", pa.FixedSizeListArray.from_arrays(flat, tables.profiles.shape[1])),
                   out / "users.parquet")
    (out / "profiles.npy").unlink()
    loaded = F.FeatureTables.load(out, embeddings)
    pd.testing.assert_frame_equal(tables.users, loaded.users)
    np.testing.assert_array_equal(tables.profiles, loaded.profiles)


@pytest.mark.unit
def test_load_without_tables_says_what_to_run(tmp_path, embeddings):
    with pytest.raises(FileNotFoundError, match="newsrec features"):
        F.FeatureTables.load(tmp_path, embeddings)


@pytest.mark.data
def test_features_stage_on_validated_data_is_point_in_time(tiny_validated, tmp_path):
    """`newsrec features` on real validated hours; the test snapshot's tables equal a refit from all the
    clicks (later hours included), so nothing after a cutoff reaches what is fitted at it."""
    from pipelines.config import load_params
    from pipelines.split import load_clicks, plan_snapshots, write_snapshots

    validated = tiny_validated / "validated" / "clicks"
    epoch_ms = int(load_params("data")["epoch_ms"])
    snaps = plan_snapshots(landed_hours(validated), epoch_ms, test_hours=3, val_hours=3, label_hours=3,
                           train_snapshots=2, min_history_hours=6)
    split_file = write_snapshots(snaps, tmp_path / "split.json")
    assert F.main(["--data-root", str(tiny_validated), "--split", str(split_file), "--out", str(tmp_path / "f")]) == 0

    raw = tiny_validated / "raw"
    articles = F.read_articles(raw / C.METADATA_FILE)
    embeddings = F.normalise_embeddings(F.read_embeddings(raw / C.EMBEDDINGS_FILE))
    test = next(s for s in snaps if s.role == "test")
    saved = F.FeatureTables.load(tmp_path / "f" / "test", embeddings)
    everything = load_clicks(validated, None, None)
    assert (everything[C.CLICK_TIMESTAMP] >= test.cutoff_ms).any()
    # a labelled snapshot keeps the user tables of its target window's users only (all it ever scores)
    in_window = everything[C.CLICK_TIMESTAMP].between(test.cutoff_ms, test.end_ms - 1)
    refit = F.fit_tables(everything, articles, embeddings, test.cutoff_ms, load_params("features"),
                         only_users=everything.loc[in_window, C.USER_ID].unique())
    pd.testing.assert_frame_equal(saved.users, refit.users, check_dtype=False)
    pd.testing.assert_frame_equal(saved.articles, refit.articles, check_dtype=False)
    np.testing.assert_allclose(saved.profiles, refit.profiles, rtol=1e-6)
    assert (saved.articles["a_age_h"] > 0).all()
    # The context is the first target click of each user, and only target-window users have one.
    target_users = set(everything.loc[everything[C.CLICK_TIMESTAMP] >= test.cutoff_ms, C.USER_ID])
    assert set(saved.context.index) <= target_users
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == sorted(s.name for s in snaps)


@pytest.mark.unit
def test_rowwise_dots_are_the_gathered_einsum_across_chunks():
    """Runs of one user longer than a chunk, shorter, and straddling chunk edges (broadcast or gathered), rows of -1
    on either side: each dot is the plain einsum of the two gathered rows, NaN where a row is missing."""
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((5_000, 250)).astype(np.float32)
    runs = [5_000, 3, 2_048, 4_100, 1, 7_000]
    art = rng.integers(-1, len(emb), sum(runs))
    recent = np.repeat(rng.integers(-1, len(emb), len(runs)), runs)
    profiles = rng.standard_normal((len(runs), 250)).astype(np.float32)
    user = np.repeat(np.arange(len(runs)), runs)
    got = F._rowwise_dots(emb, art, [(profiles, user), (emb, recent)])
    for out, (a, rows) in zip(got, [(profiles, user), (emb, recent)], strict=True):
        ok = (art >= 0) & (rows >= 0)
        want = np.full(len(art), np.nan, dtype=np.float32)
        want[ok] = np.einsum("ij,ij->i", a[rows[ok]], emb[art[ok]])
        np.testing.assert_array_equal(out, want)
        assert np.isnan(out).any() and np.isfinite(out).any()
