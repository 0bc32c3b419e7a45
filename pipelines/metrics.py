"""Ranking metrics over frames of recommendations, vectorised across users.

A recommendation frame has one row per (user, article) with a 1-based `rank`; a truth frame has one
row per (user, article) the user really clicked. Every metric is computed per user (users in the
truth frame; a user with no recommendations scores 0) and averaged, the way recommenders' and
RecBole's evaluators do it. Relevance is binary.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.columns import ARTICLE_ID, RANK, USER_ID
from pipelines.errors import InputError

METRICS = ["recall", "ndcg", "mrr", "hr"]


def _check(frame: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise InputError(f"{what} frame lacks column(s) {missing}; has {list(frame.columns)}")


def tie_order(scored: pd.DataFrame, tiebreak: str | None = None) -> pd.DataFrame:
    """`scored`'s rows by user, then `tiebreak` desc, then article id: the order `rank_by_score` leaves ties
    in. A caller that ranks one frame by many scores sorts it so once and passes `presorted=True`."""
    _check(scored, [USER_ID, ARTICLE_ID] + ([tiebreak] if tiebreak else []), "scored")
    return scored.iloc[np.lexsort([*_tie_keys(scored, tiebreak), scored[USER_ID].to_numpy()])].reset_index(drop=True)


def _tie_keys(scored: pd.DataFrame, tiebreak: str | None) -> list[np.ndarray]:
    """np.lexsort's keys for the ties' order inside a user, least significant first: article id, then
    `tiebreak` desc (negated; NaN stays NaN, which sorts last, as na_position="last" puts it)."""
    return [scored[ARTICLE_ID].to_numpy()] + ([-scored[tiebreak].to_numpy(np.float64)] if tiebreak else [])


def rank_by_score(
    scored: pd.DataFrame, score: str, k: int | None = None, tiebreak: str | None = None, presorted: bool = False
) -> pd.DataFrame:
    """Each user's articles ordered by `score` (desc; then `tiebreak` desc, then article id) with a 1-based
    `rank`; only the top `k` per user are kept when k is given. NaN scores rank last. `presorted`: the rows are
    already in `tie_order(scored, tiebreak)`, so the sort needs only the score and the user (it is stable)."""
    _check(scored, [USER_ID, ARTICLE_ID, score] + ([tiebreak] if tiebreak else []), "scored")
    from pipelines.sources.base import block_rank

    # One stable sort on the raw columns (a frame's multi-column sort factorises each key first: 3x the time).
    # Descending keys are negated; NaN stays NaN, which sorts last, as na_position="last" puts it.
    ties = [] if presorted else _tie_keys(scored, tiebreak)
    order = np.lexsort([*ties, -scored[score].to_numpy(np.float64), scored[USER_ID].to_numpy()])
    ranked = scored.iloc[order]
    rank = block_rank(ranked[USER_ID].to_numpy()) + 1
    ranked = ranked.assign(**{RANK: rank})
    if k is not None:
        ranked = ranked[rank <= k]
    return ranked.reset_index(drop=True)


def per_user_metrics(recs: pd.DataFrame, truth: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """Recall@k, NDCG@k, MRR@k and HR@k per user of `truth` (index user_id).

    recall = hits in top k / relevant; ndcg = DCG / ideal DCG with gains 1/log2(rank+1) and the ideal
    putting min(relevant, k) hits first; mrr = 1 / rank of the first hit (0 if none in top k);
    hr = 1 if any hit in top k.
    """
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    _check(recs, [USER_ID, ARTICLE_ID, RANK], "recommendation")
    _check(truth, [USER_ID, ARTICLE_ID], "truth")
    top = recs.loc[recs[RANK] <= k, [USER_ID, ARTICLE_ID, RANK]]
    top_keys, truth_keys = pair_keys(top, truth)
    truth_keys, first = np.unique(truth_keys, return_index=True)
    truth = truth.iloc[first]
    n_rel = truth.groupby(USER_ID).size().rename("n_rel")
    if pd.Series(top_keys).duplicated().any():
        raise InputError("recommendation frame lists an article twice for the same user")
    # The top rows whose pair was clicked, in the top's order (as an inner merge on the pair would give them).
    hits = top[_member(top_keys, truth_keys)]
    gain = 1.0 / np.log2(hits[RANK].to_numpy(dtype=float) + 1.0)
    g = pd.DataFrame({USER_ID: hits[USER_ID].to_numpy(), "gain": gain, RANK: hits[RANK].to_numpy()})
    agg = g.groupby(USER_ID).agg(n_hit=(RANK, "size"), dcg=("gain", "sum"), first=(RANK, "min"))
    out = pd.DataFrame(index=n_rel.index).join(n_rel).join(agg)
    out[["n_hit", "dcg"]] = out[["n_hit", "dcg"]].fillna(0.0)
    # Ideal DCG for n relevant items: the prefix sum of the discounts, looked up by min(n, k).
    discounts = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = discounts[np.minimum(out["n_rel"].to_numpy(), k)]
    res = pd.DataFrame(index=out.index)
    res["recall"] = out["n_hit"] / out["n_rel"]
    res["ndcg"] = out["dcg"].to_numpy() / idcg
    res["mrr"] = (1.0 / out["first"]).fillna(0.0)
    res["hr"] = (out["n_hit"] > 0).astype(float)
    return res


def candidate_recall(candidates: pd.DataFrame, truth: pd.DataFrame) -> pd.Series:
    """Per user of `truth`: the share of their relevant articles present anywhere in their candidate list
    (the ceiling any reranker of that list can reach)."""
    _check(candidates, [USER_ID, ARTICLE_ID], "candidate")
    _check(truth, [USER_ID, ARTICLE_ID], "truth")
    truth_keys, candidate_keys = pair_keys(truth, candidates)
    truth_keys, first = np.unique(truth_keys, return_index=True)
    found = pd.Series(_member(truth_keys, candidate_keys), index=truth[USER_ID].to_numpy()[first])
    return found.groupby(level=0).mean().rename_axis(USER_ID).rename("candidate_recall")


def _member(keys: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Whether each of `keys` is one of `among`: pandas' hash table, 30x numpy's sort-based isin on a
    Globo test window's millions of candidate pairs."""
    return pd.Series(keys).isin(among).to_numpy()


def pair_keys(*frames: pd.DataFrame) -> list[np.ndarray]:
    """One int64 per row of each frame for its (user_id, article_id) pair, equal across the frames exactly
    where the pairs are: set operations on pairs as one sort or hash of one column, not a two-column merge's
    factorising of both (a third of the evaluation's time at Globo scale went to those merges)."""
    users = [f[USER_ID].to_numpy(np.int64) for f in frames]
    articles = [f[ARTICLE_ID].to_numpy(np.int64) for f in frames]
    every_user, every_article = np.concatenate(users), np.concatenate(articles)
    if not len(every_user):
        return [np.zeros(0, dtype=np.int64) for _ in frames]
    u0, a0 = int(every_user.min()), int(every_article.min())
    span_u, span_a = int(every_user.max()) - u0 + 1, int(every_article.max()) - a0 + 1
    if span_u * span_a < 2**62:
        return [(u - u0) * span_a + (a - a0) for u, a in zip(users, articles)]
    # Ids too far apart to pack: their codes among the ids present are (at most one per row).
    u_codes = pd.factorize(every_user)[0].astype(np.int64)
    a_codes = pd.factorize(every_article)[0].astype(np.int64)
    keys = u_codes * (int(a_codes.max()) + 1) + a_codes
    return np.split(keys, np.cumsum([len(u) for u in users])[:-1])


def coverage(recs: pd.DataFrame, catalogue_size: int, k: int = 10) -> float:
    """Catalogue coverage: distinct articles shown in anyone's top k / articles in the catalogue."""
    if catalogue_size < 1:
        raise InputError(f"catalogue_size must be >= 1, got {catalogue_size}")
    _check(recs, [ARTICLE_ID, RANK], "recommendation")
    return float(recs.loc[recs[RANK] <= k, ARTICLE_ID].nunique()) / float(catalogue_size)


def summarise(per_user: pd.DataFrame, k: int) -> dict[str, float]:
    """Mean of each per-user metric, keyed `recall@10` etc., plus the number of users."""
    out = {f"{m}@{k}": float(per_user[m].mean()) if len(per_user) else float("nan") for m in METRICS}
    out["users"] = len(per_user)
    return out


IMPRESSION = "impression_id"
CLICKED = "clicked"
IMPRESSION_METRICS = ["auc", "mrr", "ndcg@5", "ndcg@10"]


def impression_metrics(ranked: pd.DataFrame) -> pd.DataFrame:
    """MIND's impression protocol: per impression, AUC, MRR, nDCG@5 and nDCG@10 of one method's order of
    the articles the impression showed (index impression_id).

    `ranked` has one row per shown article: impression_id, `rank` (1-based, a strict order inside the
    impression) and `clicked` (0/1). The definitions are the MIND leaderboard's (Wu et al. 2020, its
    evaluate.py): AUC = scikit-learn's roc_auc_score of the clicks against the order; MRR = the sum over
    clicked articles of 1/rank, divided by the clicks; nDCG@k = DCG@k / ideal DCG@k with gains 2^clicked - 1
    and discounts log2(rank + 1). An impression without both a clicked and an unclicked article has no AUC,
    so it is left out, as MIND's scorer leaves it out.
    """
    from sklearn.metrics import roc_auc_score

    _check(ranked, [IMPRESSION, RANK, CLICKED], "impression")
    if ranked.duplicated([IMPRESSION, RANK]).any():
        raise InputError("impression frame gives two articles of one impression the same rank")
    frame = ranked.sort_values([IMPRESSION, RANK], kind="mergesort")
    rows = {}
    for imp, group in frame.groupby(IMPRESSION, sort=True):
        y = group[CLICKED].to_numpy(dtype=np.float64)
        if y.min() == y.max():
            continue
        rank = group[RANK].to_numpy(dtype=np.float64)
        if rank[0] != 1 or rank[-1] != len(rank):
            raise InputError(f"impression {imp}: ranks must be 1..n, got {rank.astype(int).tolist()}")
        ideal = np.sort(y)[::-1]
        discount = 1.0 / np.log2(np.arange(len(y)) + 2.0)
        out = {"auc": float(roc_auc_score(y, -rank)), "mrr": float(np.sum(y / rank) / y.sum())}
        for k in (5, 10):
            out[f"ndcg@{k}"] = float(np.sum(y[:k] * discount[:k]) / np.sum(ideal[:k] * discount[:k]))
        rows[imp] = out
    return pd.DataFrame.from_dict(rows, orient="index", columns=IMPRESSION_METRICS).rename_axis(IMPRESSION)


def list_diversity(recs: pd.DataFrame, vectors, categories: pd.Series, k: int = 10) -> pd.DataFrame:
    """Per user (index user_id): ild = intra-list diversity, the mean cosine distance (1 - cosine) over the
    pairs of their top-k articles that both have an embedding (NaN with fewer than two); categories = the
    number of distinct categories in their top k. `vectors(article_ids)` gives L2-normalised embeddings (zero
    rows: none); `categories` is the category by article id (-1 where unknown counts as one more)."""
    _check(recs, [USER_ID, ARTICLE_ID, RANK], "recommendation")
    top = recs.loc[recs[RANK] <= k, [USER_ID, ARTICLE_ID, RANK]].sort_values([USER_ID, RANK], kind="mergesort")
    users, pos = np.unique(top[USER_ID].to_numpy(), return_inverse=True)
    slot = top.groupby(USER_ID, sort=True).cumcount().to_numpy()
    ids = top[ARTICLE_ID].to_numpy()
    ild = np.full(len(users), np.nan)
    step = 4096  # users at a time: a Globo replay's lists as one (users, k, dim) cube would be gigabytes
    for start in range(0, len(users), step):
        lo, hi = np.searchsorted(pos, [start, start + step])  # this block's rows (`top` is sorted by user)
        emb = np.asarray(vectors(ids[lo:hi]), dtype=np.float32)
        c = np.zeros((min(step, len(users) - start), k, emb.shape[1]), dtype=np.float32)
        c[pos[lo:hi] - start, slot[lo:hi]] = emb
        h = np.linalg.norm(c, axis=2) > 0
        sims = np.einsum("ukd,ujd->ukj", c, c)
        pairs = h[:, :, None] & h[:, None, :] & ~np.eye(k, dtype=bool)[None]
        n = pairs.sum(axis=(1, 2))
        dist = np.where(pairs, 1.0 - sims, 0.0).sum(axis=(1, 2))
        ild[start : start + step] = np.where(n > 0, dist / np.maximum(n, 1), np.nan)
    cats = categories.reindex(top[ARTICLE_ID].to_numpy()).fillna(-1).to_numpy()
    distinct = pd.Series(cats).groupby(top[USER_ID].to_numpy()).nunique().reindex(users).to_numpy()
    return pd.DataFrame({"ild": ild, "categories": distinct.astype(float)}, index=pd.Index(users, name=USER_ID))
