"""Reranker training on small inline snapshots: grouping, learning a planted signal, save/load, scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import columns as C
from pipelines import features as F
from pipelines import train as T

H = C.HOUR_MS
N_ARTICLES, N_USERS, DIM = 120, 150, 16
PARAMS = {
    "eval_at": 10,
    "num_boost_round": 80,
    "early_stopping_rounds": 20,
    "exclude_features": [],
    "lgb": {"learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 20, "seed": 1, "num_threads": 1,
            "deterministic": True},
}


def _world(seed: int = 0):
    rng = np.random.default_rng(seed)
    articles = pd.DataFrame({
        C.ARTICLE_ID: np.arange(N_ARTICLES),
        C.CATEGORY_ID: rng.integers(0, 6, N_ARTICLES),
        C.CREATED_AT_TS: rng.integers(0, 10 * H, N_ARTICLES),
        C.PUBLISHER_ID: 0,
        C.WORDS_COUNT: rng.integers(50, 500, N_ARTICLES),
    })
    embeddings = F.normalise_embeddings(rng.normal(size=(N_ARTICLES, DIM)).astype(np.float32))
    n = 2000
    history = pd.DataFrame({
        C.USER_ID: rng.integers(0, N_USERS, n),
        C.SESSION_ID: rng.integers(0, 800, n),
        C.SESSION_START: 0,
        C.SESSION_SIZE: 2,
        C.CLICK_ARTICLE_ID: rng.integers(0, N_ARTICLES, n),
        C.CLICK_TIMESTAMP: rng.integers(10 * H, 30 * H, n),
    })
    for col in C.CONTEXT_COLUMNS:
        history[col] = rng.integers(1, 4, n)
    return rng, articles, embeddings, history


def _snapshot(rng, articles, embeddings, history, cutoff):
    """Labelled candidates where the user clicks the candidates most similar to their profile."""
    tables = F.fit_tables(history, articles, embeddings, cutoff, {"profile_half_life_h": 24})
    cands = pd.DataFrame({
        C.USER_ID: np.repeat(tables.users.index.to_numpy(), 15),
        C.ARTICLE_ID: rng.integers(0, N_ARTICLES, 15 * len(tables.users)),
    }).drop_duplicates()
    cands[C.score_col("pop")] = rng.random(len(cands))  # a distractor
    sim = F.assemble(cands, tables)["ua_emb_sim"].to_numpy()
    cands[C.LABEL] = (sim > 0.45).astype(int)
    return cands, tables


@pytest.fixture(scope="module")
def trained():
    rng, articles, embeddings, history = _world()
    snaps = [_snapshot(rng, articles, embeddings, history, c) for c in (20 * H, 25 * H, 30 * H)]
    val_cands, val_tables = snaps[2]
    ranker = T.fit_ranker([T.ranking_set(c, t) for c, t in snaps[:2]], [T.ranking_set(val_cands, val_tables)], PARAMS)
    return ranker, val_cands, val_tables


@pytest.mark.unit
def test_ranking_set_groups_are_contiguous_and_keep_only_queries_with_a_click():
    _rng, articles, embeddings, history = _world()
    tables = F.fit_tables(history, articles, embeddings, 20 * H, {"profile_half_life_h": 24})
    users = tables.users.index[:3].to_numpy()
    cands = pd.DataFrame({
        C.USER_ID: [users[1], users[0], users[1], users[2], users[0]],
        C.ARTICLE_ID: [1, 2, 3, 4, 5],
        C.LABEL: [0, 1, 1, 0, 0],
    })
    rs = T.ranking_set(cands, tables)
    assert rs.groups.tolist() == [2, 2]  # users[2] never clicked: dropped
    assert rs.y.tolist() == [1, 0, 0, 1]
    assert len(rs.X) == 4


@pytest.mark.unit
def test_ranking_set_needs_labels():
    _rng, articles, embeddings, history = _world()
    tables = F.fit_tables(history, articles, embeddings, 20 * H, {"profile_half_life_h": 24})
    with pytest.raises(ValueError, match="label"):
        T.ranking_set(pd.DataFrame({C.USER_ID: [1], C.ARTICLE_ID: [1]}), tables)


@pytest.mark.model
def test_ranker_learns_the_planted_signal(trained):
    ranker, val_cands, val_tables = trained
    assert ranker.meta["val_ndcg_at_10"] > 0.9
    top = T.feature_importance(ranker).iloc[0]["feature"]
    assert top == "ua_emb_sim"
    scores = T.score_candidates(ranker, val_cands, val_tables)
    clicked = scores[val_cands[C.LABEL].to_numpy() == 1].mean()
    skipped = scores[val_cands[C.LABEL].to_numpy() == 0].mean()
    assert clicked > skipped


@pytest.mark.model
def test_refit_on_more_queries_keeps_the_chosen_rounds_and_the_signal(trained):
    ranker, val_cands, val_tables = trained
    more = T.ranking_set(val_cands, val_tables)
    refit = T.refit_ranker(ranker, [more], PARAMS)
    assert refit.booster.num_trees() == ranker.meta["best_iteration"]
    assert refit.meta["refit_queries"] == more.n_queries and refit.features == ranker.features
    assert T.feature_importance(refit).iloc[0]["feature"] == "ua_emb_sim"
    scores = T.score_candidates(refit, val_cands, val_tables)
    assert not np.allclose(scores, T.score_candidates(ranker, val_cands, val_tables))  # a new model
    labels = val_cands[C.LABEL].to_numpy()
    assert scores[labels == 1].mean() > scores[labels == 0].mean()
    # several sets are read as a list, without their concatenation: the same model as from one concatenated set
    parts = [T.ranking_set(val_cands.iloc[: len(val_cands) // 2], val_tables), more]
    assert (T.refit_ranker(ranker, parts, PARAMS).booster.model_to_string()
            == T.refit_ranker(ranker, [T.concat_sets(parts)], PARAMS).booster.model_to_string())
    # a consuming refit lets go of the sets once they are binned, and trains the same model
    owned = list(parts)
    consumed = T.refit_ranker(ranker, owned, PARAMS, consume=True)
    assert owned == [] and len(parts) == 2
    assert consumed.booster.model_to_string() == T.refit_ranker(ranker, parts, PARAMS).booster.model_to_string()
    assert consumed.meta["refit_rows"] == sum(len(s.y) for s in parts)
    with pytest.raises(ValueError, match="differ"):
        T.refit_ranker(ranker, [more], {**PARAMS, "exclude_features": ["ua_emb_sim"]})


@pytest.mark.model
def test_binned_rows_train_the_same_models_as_the_sets_and_their_head_is_the_first_rows():
    rng, articles, embeddings, history = _world()
    snaps = [_snapshot(rng, articles, embeddings, history, c) for c in (20 * H, 25 * H, 30 * H)]
    train_sets = [T.ranking_set(c, t) for c, t in snaps[:2]]
    val_sets = [T.ranking_set(*snaps[2])]
    # binned once, the sets train the model they train as sets: the early-stopped fit and the refit
    ranker = T.fit_ranker(train_sets, val_sets, PARAMS)
    binned = T.fit_ranker(T.bin_rows(list(train_sets), PARAMS), val_sets, PARAMS)
    assert binned.booster.model_to_string() == ranker.booster.model_to_string() and binned.meta == ranker.meta
    both = train_sets + val_sets
    assert (T.refit_ranker(ranker, T.bin_rows(list(both), PARAMS), PARAMS).booster.model_to_string()
            == T.refit_ranker(ranker, both, PARAMS).booster.model_to_string())
    # the head of the train+val bins is the train rows, whole queries, in order; it trains on the planted signal
    data = T.bin_rows(list(both), PARAMS)
    n_train = sum(len(s.y) for s in train_sets)
    head = T.head_rows(data, n_train)
    assert head.num_data() == n_train and data.num_data() == n_train + len(val_sets[0].y)
    np.testing.assert_array_equal(head.get_label(), np.concatenate([s.y for s in train_sets]))
    np.testing.assert_array_equal(head.get_group(), np.concatenate([s.groups for s in train_sets]))
    fitted = T.fit_ranker(head, val_sets, PARAMS)
    assert fitted.meta["train_rows"] == n_train and fitted.meta["train_queries"] == ranker.meta["train_queries"]
    assert fitted.meta["val_ndcg_at_10"] > 0.9
    for n in (0, data.num_data() + 1):
        with pytest.raises(ValueError, match="first"):
            T.head_rows(data, n)


@pytest.mark.unit
def test_saved_ranker_scores_identically(tmp_path, trained):
    ranker, val_cands, val_tables = trained
    path = ranker.save(tmp_path / "ranker")
    np.testing.assert_allclose(
        T.score_candidates(path, val_cands, val_tables), T.score_candidates(ranker, val_cands, val_tables)
    )
    assert T.Ranker.load(path).features == ranker.features


@pytest.mark.unit
def test_score_candidates_keeps_row_order(trained):
    ranker, val_cands, val_tables = trained
    frame = val_cands.head(50)
    forward = T.score_candidates(ranker, frame, val_tables)
    backward = T.score_candidates(ranker, frame.iloc[::-1], val_tables)
    np.testing.assert_allclose(forward, backward[::-1])


@pytest.mark.unit
def test_fit_refuses_a_training_set_without_clicks(trained):
    _, val_cands, val_tables = trained
    no_clicks = T.ranking_set(val_cands.assign(**{C.LABEL: 0}), val_tables, drop_no_positive=False)
    with pytest.raises(ValueError, match="nothing to learn"):
        T.fit_ranker([no_clicks], [no_clicks], PARAMS)


@pytest.mark.unit
def test_load_missing_ranker_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="newsrec train"):
        T.Ranker.load(tmp_path)


def _copy(ranker: T.Ranker) -> T.Ranker:
    """A ranker sharing the fixture's booster, so compiling it leaves the module's fixture as it was."""
    return T.Ranker(booster=ranker.booster, features=ranker.features, meta=ranker.meta)


@pytest.mark.unit
def test_compiled_ranker_scores_exactly_as_lightgbm(trained):
    ranker, val_cands, val_tables = trained
    compiled = _copy(ranker)
    compiled.compile()
    assert (compiled.predictor, ranker.predictor) == ("compiled", "lightgbm")
    X = F.assemble(val_cands, val_tables)
    X.iloc[::7, :10] = np.nan  # missing values take each split's default direction in both
    np.testing.assert_allclose(compiled.predict(X), ranker.predict(X), rtol=0, atol=1e-12)
    columns = {c: X[c].to_numpy() for c in X.columns[::-1]}  # the API's columns, in any order
    np.testing.assert_allclose(compiled.predict(columns), ranker.predict(X), rtol=0, atol=1e-12)
    assert compiled.predict(X.head(0)).shape == (0,)


@pytest.mark.unit
def test_a_compiled_ranker_that_disagrees_with_lightgbm_is_refused(trained, monkeypatch):
    ranker = _copy(trained[0])
    text = ranker.booster.model_to_string()
    # Compile a model whose first tree's leaves are all shifted: what a miscompile would look like.
    head, sep, rest = text.partition("leaf_value=")
    line, nl, tail = rest.partition("\n")
    shifted = " ".join(str(float(v) + 0.5) for v in line.split())
    monkeypatch.setattr(ranker.booster, "model_to_string", lambda: head + sep + shifted + nl + tail)
    with pytest.raises(ValueError, match="disagrees with LightGBM"):
        ranker.compile()
    assert ranker.predictor == "lightgbm"


def test_compile_probes_stay_out_of_lightgbms_zero_band_and_float32_range():
    """LightGBM reads |x| <= 1e-35 as zero and puts the split between negatives and zero at -1e-35: a probe on
    that threshold made correct models lose the compiled path. Thresholds beyond float32 overflowed the probe."""
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    x = rng.choice([-2.0, -1.0, 0.0, 0.0, 1.0], 4000)
    y = ((x >= 0) & (rng.random(4000) < 0.7)).astype(int)
    booster = lgb.train({"objective": "lambdarank", "learning_rate": 0.1, "num_leaves": 4, "min_data_in_leaf": 5,
                         "verbose": -1}, lgb.Dataset(x.reshape(-1, 1), y, group=[20] * 200, feature_name=["f"]),
                        num_boost_round=20)
    thresholds = booster.trees_to_dataframe()["threshold"].dropna().to_numpy(dtype=float)
    assert (np.abs(thresholds) <= 1e-30).any()  # the near-zero split is there to be probed
    ranker = T.Ranker(booster=booster, features=["f"], meta={})
    probe = ranker._probe_rows()
    values = probe[~np.isnan(probe)]
    assert not ((values != 0) & (np.abs(values) <= 1e-30)).any() and np.isfinite(values).all()
    ranker.compile()
    assert ranker.predictor == "compiled"


@pytest.mark.unit
def test_a_compiled_ranker_travels_by_pickle_and_is_compiled_where_it_lands():
    """A Dask task carries the evaluation's compiled ranker: its LLVM code cannot be pickled, so the copy
    compiles the same trees again (once per process) and scores as the original; an uncompiled one stays so."""
    import pickle

    import lightgbm as lgb

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 2))
    y = (x[:, 0] + rng.normal(size=2000) > 0.5).astype(int)
    booster = lgb.train({"objective": "lambdarank", "num_leaves": 4, "verbose": -1},
                        lgb.Dataset(x, y, group=[20] * 100, feature_name=["a", "b"]), num_boost_round=10)
    ranker = T.Ranker(booster=booster, features=["a", "b"], meta={})
    assert pickle.loads(pickle.dumps(ranker)).predictor == "lightgbm"
    assert ranker.try_compile() is None
    copy = pickle.loads(pickle.dumps(ranker))
    assert copy.predictor == "compiled" and copy.compiled is ranker.compiled  # compiled once in this process
    frame = pd.DataFrame(x[:50].astype(np.float32), columns=["a", "b"])
    np.testing.assert_array_equal(copy.predict(frame), ranker.predict(frame))


@pytest.mark.unit
def test_training_data_is_the_sets_own_matrices_unless_features_are_excluded():
    rng, articles, embeddings, history = _world(3)
    sets = [T.ranking_set(*_snapshot(rng, articles, embeddings, history, c)) for c in (20 * H, 25 * H)]
    features = list(sets[0].X.columns)
    # LightGBM reads each snapshot's float32 block in place: no gigabyte copy or concatenation at Globo scale
    assert all(set(s.X.dtypes) == {np.dtype(np.float32)} for s in sets)
    data = T._dataset(sets, features, [])
    assert all(np.shares_memory(m, s.X[features[0]].to_numpy()) for m, s in zip(data.data, sets, strict=True))
    data.construct()
    assert data.num_data() == sum(len(s.y) for s in sets) and data.feature_name == features
    np.testing.assert_array_equal(data.get_label(), np.concatenate([s.y for s in sets]))
    np.testing.assert_array_equal(np.diff(data.get_field("group")), np.concatenate([s.groups for s in sets]))
    fewer = T._dataset(sets, features[1:], [])
    np.testing.assert_array_equal(fewer.data[1], sets[1].X[features[1:]].to_numpy())
