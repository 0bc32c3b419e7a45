"""Offline evaluation: baselines and scorers on hand-made candidate lists, reports, and the stage on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines import columns as C
from pipelines.cli import main as cli
from pipelines.evaluate import BASELINES, RERANKER, evaluate_snapshot, markdown_table, write_reports


def _candidates() -> pd.DataFrame:
    """User 1 (warm) and user 2 (cold) over articles 10..14; trend order is 10, 11, 12, 13, 14."""
    rows = []
    for user, cocl in ((1, {13: 1.0}), (2, {})):
        for a in range(10, 15):
            row = {C.USER_ID: user, C.ARTICLE_ID: a}
            scores = {
                "emb": {14: 0.9, 12: 0.5} if user == 1 else {},
                "cocl": cocl,
                "pop": {10: 5.0, 11: 4.0, 12: 3.0, 13: 2.0, 14: 1.0},
                "trend": {10: 5.0, 11: 4.0, 12: 3.0, 13: 2.0, 14: 1.0},
                "learned": {12: 0.9, 14: 0.4} if user == 1 else {},
            }
            for s, sc in scores.items():
                row[C.score_col(s)] = sc.get(a, np.nan)
                order = sorted(sc, key=lambda x: -sc[x])
                row[C.rank_col(s)] = order.index(a) + 1 if a in sc else 0
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame[C.score_col(C.FUSED)] = frame[C.score_col("trend")]
    frame[C.rank_col(C.FUSED)] = (
        frame.groupby(C.USER_ID)[C.score_col(C.FUSED)].rank(ascending=False).astype(int)
    )
    frame[C.LABEL] = ((frame[C.USER_ID] == 1) & (frame[C.ARTICLE_ID] == 14)).astype(int)
    return frame


TARGETS = pd.DataFrame({C.USER_ID: [1, 2], C.ARTICLE_ID: [14, 12], C.WARM: [True, False]})
TREND = pd.Series([5.0, 4.0, 3.0, 2.0, 1.0], index=pd.Index(range(10, 15), name=C.ARTICLE_ID))


def _oracle(frame: pd.DataFrame) -> np.ndarray:
    """Knows the truth from TARGETS (not from the candidate frame, which it must not see labels in)."""
    assert C.LABEL not in frame.columns
    truth = set(zip(TARGETS[C.USER_ID], TARGETS[C.ARTICLE_ID]))
    return np.array([float((u, a) in truth) for u, a in zip(frame[C.USER_ID], frame[C.ARTICLE_ID])])


@pytest.mark.unit
def test_baselines_and_an_oracle_reranker_on_hand_checkable_lists():
    res = evaluate_snapshot(
        [_candidates()], TARGETS, TREND, catalogue_size=20, k=3, scorers={RERANKER: _oracle}
    )
    m = res["methods"]
    assert set(m) == set(BASELINES) | {RERANKER}
    assert res["users"] == {"all": 2, "warm": 1, "cold": 1}
    # trending shows 10, 11, 12: user 2's article at rank 3, user 1's (14) not in the top 3
    assert m["trending"]["cold"]["ndcg@3"] == pytest.approx(0.5)
    assert m["trending"]["cold"]["mrr@3"] == pytest.approx(1 / 3)
    assert m["trending"]["warm"]["hr@3"] == 0.0
    # emb ranks 14 first for the warm user; for the cold user it has nothing and falls back to trending
    assert m["emb_knn"]["warm"]["ndcg@3"] == 1.0
    assert m["emb_knn"]["cold"] == {**m["trending"]["cold"], "candidate_recall": 0.0}
    # the learned source ranks 14 second for the warm user
    assert m["learned"]["warm"]["ndcg@3"] == pytest.approx(1 / np.log2(3))
    # co-click proposes only 13 to the warm user, then trending fills: 13, 10, 11 -> no hit
    assert m["cocl"]["warm"]["recall@3"] == 0.0
    assert m["cocl"]["warm"]["candidate_recall"] == 0.0
    # the oracle is perfect and its ceiling is the whole candidate list
    assert m[RERANKER]["all"]["ndcg@3"] == 1.0 and m[RERANKER]["all"]["candidate_recall"] == 1.0
    # coverage: trending shows {10, 11, 12} to everyone = 3 of 20
    assert m["trending"]["all"]["coverage@3"] == pytest.approx(3 / 20)
    cmp = res["reranker_vs_best_baseline"]
    assert cmp["beats_every_baseline"] and cmp["best_baseline"] in BASELINES
    # an index without a learned model proposes nothing from it: no learned row, rather than a copy of trending
    unlearned = _candidates().assign(**{C.score_col("learned"): np.nan, C.rank_col("learned"): 0})
    res = evaluate_snapshot([unlearned], TARGETS, TREND, catalogue_size=20, k=3, scorers={RERANKER: _oracle})
    assert set(res["methods"]) == (set(BASELINES) - {"learned"}) | {RERANKER}
    assert cmp["ratio"] == pytest.approx(1.0 / max(m[b]["all"]["ndcg@3"] for b in BASELINES))


@pytest.mark.unit
def test_scorers_see_chunks_without_labels_and_scores_come_back_in_row_order():
    from pipelines.evaluate import method_scores

    seen = []

    def scorer(frame):
        seen.append(len(frame))
        assert C.LABEL not in frame.columns
        return frame[C.ARTICLE_ID].to_numpy() * 10.0 + frame[C.USER_ID].to_numpy()

    cands = _candidates()
    got = method_scores(cands, {RERANKER: scorer}, chunk_rows=4)[RERANKER]
    assert seen == [4, 4, 2]
    np.testing.assert_array_equal(got, cands[C.ARTICLE_ID] * 10.0 + cands[C.USER_ID])


@pytest.mark.unit
def test_a_scorer_with_the_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="returned"):
        evaluate_snapshot([_candidates()], TARGETS, TREND, 20, 3, scorers={RERANKER: lambda f: np.zeros(3)})


@pytest.mark.unit
def test_users_without_candidates_count_as_misses():
    targets = pd.concat([TARGETS, pd.DataFrame({C.USER_ID: [3], C.ARTICLE_ID: [10], C.WARM: [False]})])
    res = evaluate_snapshot([_candidates()], targets, TREND, 20, 3)
    assert res["users"]["cold"] == 2
    assert res["methods"]["trending"]["cold"]["ndcg@3"] == pytest.approx(0.25)  # (0.5 + 0) / 2


@pytest.mark.unit
def test_reports_hold_every_method_and_segment(tmp_path):
    res = evaluate_snapshot([_candidates()], TARGETS, TREND, 20, 3, scorers={RERANKER: _oracle}, curve_k=4)
    paths = write_reports(res, tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert saved["methods"][RERANKER]["cold"]["ndcg@3"] == 1.0 and "curves" not in saved
    table = paths["table"].read_text()
    assert table.count("\n| ") == 2 + 3 * (len(BASELINES) + 1) - 1  # header + separator + rows
    assert "beats every baseline" in table and table == markdown_table(res)
    assert sorted(f.stem for f in paths["at_k"].glob("*.csv")) == sorted([*BASELINES, RERANKER])
    curve = pd.read_csv(paths["at_k"] / "trending.csv")
    assert curve["k"].tolist() == [1, 2, 3, 4]
    # NDCG@3 in the curve is the all-users figure of the table
    assert curve.loc[curve["k"] == 3, "ndcg"].item() == pytest.approx(
        res["methods"]["trending"]["all"]["ndcg@3"]
    )
    cold = pd.read_csv(paths["by_method"] / "cold.csv").set_index("method")["ndcg@3"]
    assert cold[RERANKER] == 1.0 and len(cold) == len(BASELINES) + 1
    # a method that is gone from a later run leaves no stale series behind
    res.pop("curves")
    res["methods"].pop(RERANKER)
    write_reports(res, tmp_path)
    assert not any(paths["at_k"].glob("*.csv"))


@pytest.mark.data
def test_stage_evaluates_baselines_on_tiny_data(tiny_validated, tmp_path, capsys, monkeypatch):
    from pipelines.aggregates import aggregate_all
    from pipelines.candidates import build_candidates
    from pipelines.config import load_params
    from pipelines.evaluate import main
    from pipelines.split import get_snapshot, split

    epoch = load_params("data")["epoch_ms"]
    root = tmp_path / "root"
    root.mkdir()
    for sub in ("raw", "validated"):
        (root / sub).symlink_to(tiny_validated / sub)
    aggregate_all(root, epoch, 5)
    split_file = tmp_path / "split.json"
    split(
        root,
        split_file,
        {"test_hours": 4, "val_hours": 4, "label_hours": 4, "train_snapshots": 1, "min_history_hours": 8},
        epoch,
    )
    build_candidates(
        root,
        [get_snapshot(split_file, "test")],
        tmp_path / "cands",
        tmp_path / "idx",
        load_params("candidates"),
        epoch,
    )
    args = [
        "--data-root",
        str(root),
        "--split",
        str(split_file),
        "--candidates",
        str(tmp_path / "cands"),
        "--indexes",
        str(tmp_path / "idx"),
        "--out",
        str(tmp_path / "metrics"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| trending | cold |" in out
    res = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    page = (tmp_path / "metrics" / "eval_report.html").read_text()  # one self-contained page: no URL to fetch
    assert "Frozen: every list computed" in page and page.count("data:image/png;base64,") >= 3
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert res["snapshot"] == "test" and res["users"]["all"] > 0
    assert res["methods"]["emb_knn"]["warm"]["ndcg@10"] > 0
    # the CF peer is fitted at the cutoff and ranks everyone (cold users in the trending order)
    assert res["methods"]["als"]["cold"] == {**res["methods"]["trending"]["cold"], "candidate_recall": 0.0}
    assert 0 < res["methods"]["als"]["warm"]["candidate_recall"] <= 1
    assert "reranker_vs_best_baseline" not in res
    # ranked a few users' lists at a time (the stage's memory bound): the same figures
    import pipelines.candidates as candidates_stage

    monkeypatch.setattr(candidates_stage, "LIST_BLOCK_USERS", 2)
    assert res["users"]["all"] > 2
    assert main([*args[:-1], str(tmp_path / "blocked")]) == 0
    assert json.loads((tmp_path / "blocked" / "eval.json").read_text()) == res
    assert cli(["evaluate", *args, "--model", str(tmp_path / "none")]) == 1  # a model needs its feature tables
    assert "--features" in capsys.readouterr().err


@pytest.mark.model
def test_reranker_is_scored_through_the_trained_model(serving_bundle):
    """The serving fixture ran split -> features -> candidates -> train on a copy of tiny_validated; evaluate
    its test snapshot with that ranker, in both protocols."""
    from pipelines.config import load_params
    from pipelines.evaluate import CF_PEER, RECENT_POPULAR, evaluate
    from pipelines.split import get_snapshot, load_clicks

    work = serving_bundle.parent
    res = evaluate(
        work / "data",
        work / "split.json",
        work / "candidates",
        work / "index",
        {**load_params("evaluate"), "as_served": True},
        model_dir=work / "ranker",
        features_dir=work / "features",
        index_params=load_params("candidates"),
        feature_params=load_params("features"),
        epoch_ms=int(load_params("data")["epoch_ms"]),
    )
    rr = res["methods"][RERANKER]
    assert res["users"]["all"] > 0 and 0 <= rr["all"]["ndcg@10"] <= 1
    # the reranker reorders the same candidate list fusion ranks, so they share the ceiling
    assert rr["all"]["candidate_recall"] == res["methods"]["fusion"]["all"]["candidate_recall"]
    assert res["reranker_vs_best_baseline"]["ratio"] > 0
    assert RECENT_POPULAR in res["methods"] and CF_PEER in res["methods"]

    # as served: one query per user per hour of the window with a click on an article available then
    served = res["as_served"]
    snap = get_snapshot(work / "split.json", "test")
    clicks = load_clicks(work / "data" / "validated" / "clicks", snap.cutoff_ms, snap.end_ms)
    hours = (clicks["click_timestamp"] - snap.cutoff_ms) // C.HOUR_MS
    assert served["hours"] == snap.end_hour - snap.cutoff_hour
    assert 0 < served["users"]["all"] <= clicks.assign(h=hours).drop_duplicates([C.USER_ID, "h"]).shape[0]
    assert served["users"]["all"] > res["users"]["all"]  # users come back in several hours
    assert set(served["methods"]) == set(res["methods"])
    assert served["methods"]["fusion"]["all"]["candidate_recall"] == served["methods"][RERANKER]["all"]["candidate_recall"]

    # DVC's metrics file: the headline figures only, one readable row in `dvc metrics show`
    from pipelines.evaluate import summary

    head = summary(res)
    assert list(head) == ["as_served", "frozen"]
    assert head["as_served"]["ndcg@10"]["all"] == round(served["methods"][RERANKER]["all"]["ndcg@10"], 4)
    assert head["frozen"]["vs"] == res["reranker_vs_best_baseline"]["best_baseline"]
    assert sum(len(v) if isinstance(v, dict) else 1 for p in head.values() for v in p.values()) == 10


@pytest.mark.unit
def test_paired_bootstrap_interval_brackets_the_difference_and_sees_a_tie():
    from pipelines.evaluate import paired_bootstrap_ci

    rng = np.random.default_rng(3)
    base = rng.random(2000)
    low, high = paired_bootstrap_ci(base + 0.1, base)
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)  # a constant gain has no spread
    noisy = base + rng.normal(0, 0.3, 2000)
    low, high = paired_bootstrap_ci(noisy, base)
    assert low < 0 < high  # pure noise: not told apart
    low, high = paired_bootstrap_ci(noisy + 0.2, base)
    assert 0 < low < 0.2 < high


@pytest.mark.unit
def test_impressions_are_ordered_by_each_method_with_unproposed_articles_after():
    from pipelines.evaluate import (
        impression_ranks,
        judgeable_impressions,
        method_scores,
        summarise_impressions,
        with_shown,
    )

    # user 1's impression 7 shows 10, 14 (clicked) and 99, which no source proposed; impression 8 has no click
    imps = pd.DataFrame({"impression_id": [7, 7, 7, 8, 8], C.USER_ID: [1, 1, 1, 2, 2], C.HOUR: 5,
                         C.ARTICLE_ID: [10, 14, 99, 10, 11], "clicked": [0, 1, 0, 0, 0]})
    shown = judgeable_impressions(imps)
    assert shown["impression_id"].unique().tolist() == [7]
    cands = with_shown(_candidates().drop(columns=[C.LABEL]), shown)
    extra = cands[cands[C.ARTICLE_ID] == 99].iloc[0]
    assert extra[C.rank_col("emb")] == 0 and np.isnan(extra[C.score_col("emb")])
    assert extra[C.score_col(C.FUSED)] == 0.0 and len(cands) == len(_candidates()) + 1
    scores = method_scores(cands, {RERANKER: lambda f: (f[C.ARTICLE_ID] == 99).to_numpy(float)})
    ranks = impression_ranks(shown, cands[[C.USER_ID, C.ARTICLE_ID]].assign(**scores), list(scores), TREND)
    order = {m: r.sort_values(C.RANK)["clicked"].tolist() for m, r in ranks.items()}
    assert order["emb_knn"] == [1, 0, 0]  # 14 by its score, then 10 and 99 in trending order
    assert order["trending"] == [0, 1, 0]  # 10 (trend 5) before 14 (trend 1); 99 has no trend
    assert order[RERANKER] == [0, 0, 1]  # the scorer sees 99 too and puts it first; 10, 14 tie: trending order
    res = summarise_impressions({m: [r] for m, r in ranks.items()}, shown_total=2)
    assert res["impressions"] == 1 and res["impressions_shown"] == 2
    assert res["methods"]["emb_knn"] == {"auc": 1.0, "mrr": 1.0, "ndcg@5": 1.0, "ndcg@10": 1.0}
    assert res["methods"]["trending"]["auc"] == 0.5 and res["methods"]["trending"]["mrr"] == 0.5
    with pytest.raises(ValueError, match="lack"):
        judgeable_impressions(imps.drop(columns=["clicked"]))


@pytest.mark.model
def test_impression_protocol_runs_in_the_as_served_replay(serving_bundle):
    """Impressions built from the tiny test window (each user-hour's clicks among 9 articles they did not
    click): every method orders them by what it knew at the hour's start, and the ranker tells the read
    articles from the unread far better than chance."""
    from pipelines.catalogue import delivered_hours, read_catalogue
    from pipelines.config import load_params
    from pipelines.evaluate import CF_PEER, RECENT_POPULAR, evaluate_as_served, impression_table
    from pipelines.split import get_snapshot, load_clicks
    from pipelines.train import Ranker

    work = serving_bundle.parent
    root = work / "data"
    snap = get_snapshot(work / "split.json", "test")
    catalogue, embeddings = read_catalogue(root)
    clicks = load_clicks(root / "validated" / "clicks", None, snap.end_ms)
    window = clicks[clicks["click_timestamp"] >= snap.cutoff_ms]
    hours = (window["click_timestamp"] - load_params("data")["epoch_ms"]) // C.HOUR_MS
    rng = np.random.default_rng(0)
    rows = []
    ids = catalogue.loc[catalogue[C.CREATED_AT_TS] < snap.cutoff_ms, C.ARTICLE_ID].to_numpy()
    for n, ((user, hour), got) in enumerate(window.assign(h=hours).groupby([C.USER_ID, "h"])):
        read = set(got[C.CLICK_ARTICLE_ID])
        rows += [(n, user, hour, a, 1) for a in read]
        rows += [(n, user, hour, int(a), 0) for a in rng.choice(ids, 40) if a not in read][:9]
    imps = pd.DataFrame(rows, columns=["impression_id", C.USER_ID, C.HOUR, C.ARTICLE_ID, "clicked"])
    # one impression without a click, and one from before the window: neither is scored, the first is counted
    imps = pd.concat([imps, pd.DataFrame({"impression_id": [-1, -2], C.USER_ID: [0, 0],
                                          C.HOUR: [hours.min(), snap.cutoff_hour - 1], C.ARTICLE_ID: [ids[0]] * 2,
                                          "clicked": [0, 1]})], ignore_index=True)
    cf = load_params("evaluate")["cf"]
    res = evaluate_as_served(
        root, snap, clicks, (catalogue, delivered_hours(root, catalogue)), embeddings, load_params("candidates"),
        load_params("features"), int(load_params("data")["epoch_ms"]), 10, 6, ranker=Ranker.load(work / "ranker"),
        cf_params=cf, impressions=imps,
    )
    imp = res["impressions"]
    assert imp["impressions"] == imp["impressions_shown"] - 1 == imps["impression_id"].nunique() - 2 > 20
    assert set(imp["methods"]) == set(res["methods"]) >= {RERANKER, CF_PEER, RECENT_POPULAR}
    assert all(0 <= v <= 1 for row in imp["methods"].values() for v in row.values())
    assert imp["methods"][RERANKER]["auc"] > 0.7
    table = impression_table(imp)
    assert sum(line.startswith("| ") for line in table) == 1 + len(imp["methods"])
