"""Offline evaluation on the test snapshot: every baseline and the reranker, all / warm / cold users.

The task is the one the service faces: for each user with a target click on an article available
at the cutoff, rank the catalogue available at the cutoff minus what the user already read, and
score the top k against the clicks of the target window (`split.eval_targets`; the truth is
computed from the validated clicks here, not taken from the candidate files).

Every method ranks the recommendable pool; articles outside it come after it, so only their
absence from the top k matters. Methods:

    popular    all-history clicks            trending   decayed recent clicks
    cocl       co-click source               emb_knn    embedding kNN source
    learned    the two-tower model's source (pipelines.learned; only when the index carries a model)
    fusion     reciprocal-rank fusion of the four candidate sources
    reranker   the LightGBM ranker's scores over the candidate list (`pipelines.train.score_candidates`)

and two methods that rank the whole catalogue rather than the candidate list:

    recent_popular  clicks in the last hours              als  implicit's ALS (pipelines.peers), the CF peer

A source that runs out of articles for a user (a cold user has no co-clicks) continues with the
trending order, so every method shows k articles to everyone. candidate_recall is the share of the
user's relevant articles the method's list can reach at all: its own list for a single source, the
whole candidate list for fusion and the reranker (the reranker's ceiling).

Writes `summary.json` (DVC metrics: the headline figures), `eval.json` (every figure), `eval_table.md`,
`eval_report.html` (tables and plots in one self-contained page: pipelines.eval_report) and plot data under
`plots/` (DVC plots).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import eval_report, lake, memory
from pipelines.columns import (
    ARTICLE_ID,
    CATEGORY_ID,
    CREATED_AT_TS,
    FUSED,
    HOUR,
    HOUR_MS,
    LABEL,
    LEARNED,
    RANK,
    SCORE,
    USER_ID,
    WARM,
    rank_col,
    score_col,
)
from pipelines.config import parse_step, step_parser
from pipelines.errors import InputError, MissingInputError
from pipelines.metrics import (
    candidate_recall,
    coverage,
    list_diversity,
    per_user_metrics,
    rank_by_score,
    summarise,
    tie_order,
)
from pipelines.sources import base as sources

# method -> the candidate column it ranks by: each source's own list (pipelines.sources), then the fusion
BASELINES = {**sources.baselines(), "fusion": FUSED}
# Sources an index has only when its model does: no method row where they proposed nothing at all.
OPTIONAL_SOURCES = sources.optional()
RERANKER = "reranker"
RECENT_POPULAR = "recent_popular"
CF_PEER = "als"
OWN_DEPTH = 100  # an own-list method's list is at least this deep: what it can reach (its candidate_recall)
SEGMENTS = ("all", "warm", "cold")
SCORE_CHUNK_ROWS = 500_000
_TIE = "_trend_tiebreak"

Scorer = Callable[[pd.DataFrame], np.ndarray]


def _segments(targets: pd.DataFrame) -> dict[str, np.ndarray]:
    users = targets.drop_duplicates(USER_ID)
    return {
        "all": users[USER_ID].to_numpy(),
        "warm": users.loc[users[WARM], USER_ID].to_numpy(),
        "cold": users.loc[~users[WARM], USER_ID].to_numpy(),
    }


def baseline_methods(candidates: pd.DataFrame) -> list[str]:
    """The baselines the candidate rows hold: every source's, less an optional source that proposed nothing."""
    return [m for m, src in BASELINES.items()
            if src not in OPTIONAL_SOURCES or (candidates.get(rank_col(src), pd.Series(dtype=int)) > 0).any()]


def index_methods(index) -> list[str]:
    """The baselines an index (candidates.CandidateIndex) can propose: every source's, less an optional source it
    does not carry. The as-served replay ranks these in every hour, so an hour whose users got nothing from an
    optional source (all of them new readers, say) still has that method's lists, the trending order every
    method falls back to, instead of no list (which would score its queries 0)."""
    return [m for m, src in BASELINES.items() if src not in OPTIONAL_SOURCES or index.given(src) is not None]


def method_scores(
    candidates: pd.DataFrame, scorers: Mapping[str, Scorer], chunk_rows: int = SCORE_CHUNK_ROWS,
    methods: Collection[str] | None = None,
) -> dict[str, np.ndarray]:
    """The score column each method ranks the candidate rows by (NaN where a source did not propose).

    `methods`: the baselines to score (default `baseline_methods(candidates)`); a user partition passes the
    whole list's, so a source that proposed nothing to its users still gets a row as it does in one process.

    Scorers see the rows without `label`, `chunk_rows` at a time: a scorer builds a feature matrix as wide
    as the model, which for a whole Globo-scale test window would not fit in memory at once.
    """
    wanted = baseline_methods(candidates) if methods is None else methods
    scores = {m: candidates[score_col(src)].to_numpy(dtype=np.float64) for m, src in BASELINES.items() if m in wanted}
    blind = candidates.drop(columns=[LABEL], errors="ignore")
    for name, scorer in scorers.items():
        parts = []
        for start in range(0, len(blind), chunk_rows):
            chunk = blind.iloc[start : start + chunk_rows]
            s = np.asarray(scorer(chunk), dtype=np.float64)
            if s.shape != (len(chunk),):
                raise InputError(f"scorer {name!r} returned {s.shape} scores for {len(chunk)} candidates")
            parts.append(s)
        scores[name] = np.concatenate(parts) if parts else np.zeros(0)
    return scores


def recent_popular_order(
    data_root: str | Path, articles: pd.DataFrame, cutoff_hour: int, cutoff_ms: int, hours: int
) -> tuple[np.ndarray, np.ndarray]:
    """The `recent_popular` baseline's one list at a cutoff: every article available then and ever clicked,
    by clicks in the last `hours` hours (whole catalogue, not the candidate pool); ties by all-history
    clicks, then article id. Returns (article ids, scores) best first."""
    from pipelines.aggregates import read_popularity

    window = f"clicks_{int(hours)}h"
    pop = read_popularity(data_root, cutoff_hour, [int(hours)], half_life_hours=1.0)
    available = articles.loc[articles[CREATED_AT_TS] < cutoff_ms, ARTICLE_ID]
    pop = pop[pop[ARTICLE_ID].isin(available)]
    pop = pop.sort_values([window, "clicks", ARTICLE_ID], ascending=[False, False, True], kind="mergesort")
    return pop[ARTICLE_ID].to_numpy(np.int64), pop[window].to_numpy(np.float64)


def recent_popular_lists(
    data_root: str | Path,
    articles: pd.DataFrame,
    cutoff_hour: int,
    cutoff_ms: int,
    hours: int,
    users: np.ndarray,
    user_clicks: pd.DataFrame,
    depth: int,
) -> pd.DataFrame:
    """Each user's `recent_popular` list at a cutoff, skipping what they read (`user_clicks`: those users'
    history): user_id, article_id, rank, at least as deep as the trend source's list (100), which is what the
    method can reach (its candidate_recall)."""
    from pipelines.candidates import top_unread

    ids, scores = recent_popular_order(data_root, articles, cutoff_hour, cutoff_ms, hours)
    return top_unread(ids, scores, users, user_clicks, max(depth, OWN_DEPTH))[[USER_ID, ARTICLE_ID, RANK]]


def cf_peer_lists(
    peer,
    users: np.ndarray,
    user_clicks: pd.DataFrame,
    available: np.ndarray,
    trending: pd.DataFrame,
    depth: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The CF peer's lists at a cutoff: (each user's top `depth`, continued in the trending order where the
    peer runs out, as every source does; its own list at least OWN_DEPTH deep, what it can reach at all).

    `peer` is a fitted `pipelines.peers.CFPeer`, `available` the article ids available at the cutoff,
    `trending` the index's pool in trending order (article_id, trend), `user_clicks` those users' history."""
    from pipelines.candidates import TREND, top_unread

    own = peer.recommend(users, user_clicks, available, max(depth, OWN_DEPTH))
    fill = top_unread(trending[ARTICLE_ID].to_numpy(), trending[TREND].to_numpy(), users, user_clicks, depth)
    both = pd.concat([own[[USER_ID, ARTICLE_ID, SCORE]], fill[[USER_ID, ARTICLE_ID]].assign(**{SCORE: np.nan})],
                     ignore_index=True).drop_duplicates([USER_ID, ARTICLE_ID], keep="first")
    both[_TIE] = trending.set_index(ARTICLE_ID)[TREND].reindex(both[ARTICLE_ID]).fillna(0.0).to_numpy()
    ranked = rank_by_score(both, SCORE, k=depth, tiebreak=_TIE)[[USER_ID, ARTICLE_ID, RANK]]
    return ranked, own[[USER_ID, ARTICLE_ID, RANK]]


def with_shown(candidates: pd.DataFrame, shown: pd.DataFrame) -> pd.DataFrame:
    """`candidates` plus one row for each shown (user_id, article_id) pair the list lacks, as a candidate row
    looks where no source proposed it (scores NaN, ranks 0, fused score 0): so the reranker scores every
    article an impression showed, and a baseline places what it did not propose after what it did."""
    pairs = shown[[USER_ID, ARTICLE_ID]].drop_duplicates()
    known = candidates[[USER_ID, ARTICLE_ID]].assign(_in=True)
    missing = pairs.merge(known, on=[USER_ID, ARTICLE_ID], how="left")
    missing = missing.loc[missing["_in"].isna(), [USER_ID, ARTICLE_ID]].reset_index(drop=True)
    if missing.empty:
        return candidates
    extra = {USER_ID: missing[USER_ID].to_numpy(np.int64), ARTICLE_ID: missing[ARTICLE_ID].to_numpy(np.int64)}
    for col in candidates.columns:
        if col in extra:
            continue
        fill = 0.0 if col == score_col(FUSED) else (0 if col.endswith(RANK) else np.nan)
        extra[col] = np.full(len(missing), fill, dtype=candidates[col].dtype)
    return pd.concat([candidates, pd.DataFrame(extra)[candidates.columns]], ignore_index=True)


def impression_ranks(
    shown: pd.DataFrame, pair_scores: pd.DataFrame, methods: list[str], trend: pd.Series
) -> dict[str, pd.DataFrame]:
    """Each method's strict order of every impression's shown articles (impression_id, rank, clicked).

    `shown`: impression_id, user_id, article_id, clicked; `pair_scores`: user_id, article_id and one score
    column per method. The order is the one the full-catalogue protocol uses: score down, what the method did
    not score (NaN) after what it did, then the trending order (`trend` by article id), then article id."""
    from pipelines.metrics import CLICKED, IMPRESSION

    frame = shown.merge(pair_scores, on=[USER_ID, ARTICLE_ID], how="left")
    frame[_TIE] = trend.reindex(frame[ARTICLE_ID]).fillna(0.0).to_numpy()
    keyed = frame.rename(columns={USER_ID: "_user"}).rename(columns={IMPRESSION: USER_ID})
    out = {}
    for method in methods:
        ranked = rank_by_score(keyed, method, tiebreak=_TIE)
        out[method] = ranked[[USER_ID, RANK, CLICKED]].rename(columns={USER_ID: IMPRESSION})
    return out


def judgeable_impressions(impressions: pd.DataFrame) -> pd.DataFrame:
    """The impressions MIND's protocol scores: at least one clicked and one unclicked article (one row per
    shown article; an article listed twice in one impression counts once, clicked if either was)."""
    from pipelines.metrics import CLICKED, IMPRESSION

    missing = {IMPRESSION, USER_ID, ARTICLE_ID, CLICKED, HOUR} - set(impressions.columns)
    if missing:
        raise InputError(f"impressions lack column(s) {sorted(missing)}; has {list(impressions.columns)}")
    shown = impressions.groupby([IMPRESSION, USER_ID, HOUR, ARTICLE_ID], as_index=False)[CLICKED].max()
    clicks = shown.groupby(IMPRESSION)[CLICKED].agg(["min", "max"])
    ok = clicks.index[(clicks["min"] == 0) & (clicks["max"] == 1)]
    return shown[shown[IMPRESSION].isin(ok)].reset_index(drop=True)


def summarise_impressions(ranks: Mapping[str, list[pd.DataFrame]], shown_total: int) -> dict:
    """MIND's metrics per method, averaged over impressions (`pipelines.metrics.impression_metrics`)."""
    from pipelines.metrics import IMPRESSION_METRICS, impression_metrics

    methods = {}
    n = 0
    for method, parts in ranks.items():
        per = impression_metrics(pd.concat(parts, ignore_index=True))
        n = len(per)
        methods[method] = {m: float(per[m].mean()) if len(per) else float("nan") for m in IMPRESSION_METRICS}
    return {"impressions": n, "impressions_shown": int(shown_total), "methods": methods}


def rank_methods(
    candidates: pd.DataFrame,
    trend: pd.Series,
    depth: int,
    scorers: Mapping[str, Scorer] | None = None,
    rank_params: Mapping | None = None,
    vectors: Callable[[np.ndarray], np.ndarray] | None = None,
    methods: Collection[str] | None = None,
) -> dict[str, pd.DataFrame]:
    """Each method's top `depth` per user (user_id, article_id, rank) over the candidate rows: a source's own
    score first, then the trending order (`trend`: the pool's trend by article id) for the rest.

    The reranker's list then goes through the diversity re-rank the API applies (`rank_params`, params.yaml
    `rank`; `vectors(article_ids)`: the index's normalised embeddings), so the evaluation scores what is served.
    `methods`: the baselines to rank (`method_scores`)."""
    from pipelines import diversity

    frame = candidates[[USER_ID, ARTICLE_ID]].assign(**{
        _TIE: trend.reindex(candidates[ARTICLE_ID]).fillna(0.0).to_numpy(), "_row": np.arange(len(candidates))})
    # Sorted by the ties' order once; each method's sort then needs two keys, not four (the same lists).
    frame = tie_order(frame, _TIE)
    rows = frame.pop("_row").to_numpy()
    out = {}
    for method, score in method_scores(candidates, dict(scorers or {}), methods=methods).items():
        frame["_s"] = score[rows]
        if method == RERANKER and diversity.active(rank_params):
            if vectors is None:
                raise InputError("the diversity re-rank needs the articles' embeddings (vectors)")
            pool = rank_by_score(frame, "_s", k=max(depth, int(rank_params["mmr_depth"])), tiebreak=_TIE,
                                 presorted=True)
            keep = diversity.rerank(pool[USER_ID].to_numpy(), pool[ARTICLE_ID].to_numpy(),
                                    pool["_s"].fillna(pool["_s"].min()).to_numpy(), vectors, depth, rank_params)
            picked = pool.iloc[keep]
            out[method] = picked.assign(**{RANK: picked.groupby(USER_ID, sort=False).cumcount().to_numpy() + 1})[
                [USER_ID, ARTICLE_ID, RANK]].reset_index(drop=True)
            continue
        ranked = rank_by_score(frame, "_s", k=depth, tiebreak=_TIE, presorted=True)
        out[method] = ranked[[USER_ID, ARTICLE_ID, RANK]]
    return out


@dataclass(frozen=True)
class RerankerScorer:
    """The trained ranker's scores for candidate rows (`train.score_candidates`) with the feature tables fitted
    at their cutoff: a Scorer whose user-side tables a cluster can split by user."""

    ranker: Any
    tables: Any  # features.FeatureTables

    def __call__(self, candidates: pd.DataFrame) -> np.ndarray:
        from pipelines.train import score_candidates

        return score_candidates(self.ranker, candidates, self.tables)

    def for_users(self, users: np.ndarray) -> RerankerScorer:
        """The same scorer with the user-side tables cut to `users` and no embeddings (`with_embeddings` puts
        them back on a worker): what one user partition's task needs."""
        t = self.tables
        keep = t.users.index.isin(users)
        context = t.context[t.context.index.isin(users)] if t.context is not None else None
        uc = t.user_categories
        return RerankerScorer(self.ranker, replace(
            t, users=t.users[keep], profiles=t.profiles[keep], user_categories=uc[uc[USER_ID].isin(users)],
            embeddings=np.zeros((0, t.embeddings.shape[1]), dtype=t.embeddings.dtype), context=context, _cache={}))

    def with_embeddings(self, embeddings: np.ndarray) -> RerankerScorer:
        return RerankerScorer(self.ranker, replace(self.tables, embeddings=embeddings, _cache={}))


class ClusterRanking:
    """The per-user part of an evaluation on a Dask cluster, in `partitions` user-hash partitions
    (`cluster.user_partition`), one task each. What is not per user (the trend, the ranker, the article-side
    tables, the article vectors, an hour's index) goes to every worker; the catalogue's embedding matrix once
    per protocol, not every hour. Each result comes back in the single process's order: a user's lists never
    depend on other users', so they are the same lists."""

    def __init__(self, client, partitions: int) -> None:
        from pipelines.features import PartitionedUserSide

        self.client = client
        self.partitions = int(partitions)
        self._embeddings: tuple[int, Any] | None = None  # (id of the array, its future on the workers)
        # each replayed hour's user-side feature tables, in the same partitions (`features.fit_tables`)
        self.user_side = PartitionedUserSide(client, partitions)

    def _shared_embeddings(self, embeddings: np.ndarray):
        if self._embeddings is None or self._embeddings[0] != id(embeddings):
            self._embeddings = (id(embeddings), self.client.scatter(embeddings, broadcast=True, hash=False))
        return self._embeddings[1]

    def rank(
        self,
        candidates: pd.DataFrame,
        trend: pd.Series,
        depth: int,
        scorers: Mapping[str, Scorer] | None = None,
        rank_params: Mapping | None = None,
        vectors: Callable[[np.ndarray], np.ndarray] | None = None,
        methods: Collection[str] | None = None,
    ) -> dict[str, pd.DataFrame]:
        """`rank_methods` over the partitions: a RerankerScorer travels with its partition's users' tables only."""
        from pipelines.cluster import user_partition

        scorers = dict(scorers or {})
        if methods is None:
            methods = baseline_methods(candidates)  # the whole list's: a partition's users may lack a source
        part = user_partition(candidates[USER_ID].to_numpy(), self.partitions)
        embeddings = {n: self._shared_embeddings(s.tables.embeddings) for n, s in scorers.items()
                      if isinstance(s, RerankerScorer)}
        shared = self.client.scatter([trend, {n: s for n, s in scorers.items() if n not in embeddings}, vectors],
                                     broadcast=True, hash=False)
        futures = []
        for p in range(self.partitions):
            rows = candidates[part == p]
            if rows.empty:
                continue
            users = np.unique(rows[USER_ID].to_numpy())
            own = {n: scorers[n].for_users(users) for n in embeddings}
            futures.append(self.client.submit(_rank_partition, rows, shared[0], depth, shared[1], own, embeddings,
                                              rank_params, shared[2], methods, pure=False))
        if not futures:  # no candidate rows: the single process's empty lists
            return rank_methods(candidates, trend, depth, scorers, rank_params, vectors, methods)
        parts = self.client.gather(futures)
        return {m: pd.concat([p[m] for p in parts], ignore_index=True).sort_values(USER_ID, kind="stable")
                .reset_index(drop=True) for m in parts[0]}

    def candidates(self, index, history: pd.DataFrame, users: np.ndarray) -> pd.DataFrame:
        """`index.candidates(history, users=users)` for an index held in memory (an hour of the as-served replay)."""
        from pipelines.candidates import candidates_on_cluster

        return candidates_on_cluster(self.client, self.partitions, index, history, users)


def _rank_partition(candidates, trend, depth, scorers, rerankers, embeddings, rank_params, vectors, methods):
    scorers = {**scorers, **{n: s.with_embeddings(embeddings[n]) for n, s in rerankers.items()}}
    return rank_methods(candidates, trend, depth, scorers, rank_params, vectors, methods)


def reach_of(candidates: pd.DataFrame, method: str, own_lists: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """What a method can recommend at all: its source's rows, the whole list for fusion and the reranker,
    or its own list for a method outside the candidates (`own_lists`: what it reaches)."""
    if method in own_lists:
        return own_lists[method]
    src = BASELINES.get(method)
    rows = slice(None) if src in (None, FUSED) else candidates[rank_col(src)].to_numpy() > 0
    return candidates.loc[rows, [USER_ID, ARTICLE_ID]]


def summarise_methods(
    recs: Mapping[str, pd.DataFrame],
    reach: Mapping[str, pd.Series],
    targets: pd.DataFrame,
    catalogue: pd.Series,
    k: int,
    curve_k: int | None = None,
    group: pd.Series | None = None,
    diversity_of: tuple[Callable[[np.ndarray], np.ndarray], pd.Series] | None = None,
) -> dict:
    """Metrics of every method for all / warm / cold queries of `targets` (user_id, article_id, warm).

    `reach`: per method, the candidate recall of each query (`candidate_recall` of what the method reaches at
    all, `reach_of`); a query it has no figure for reached none of its articles.
    A query is a user_id of the frames (one user at one cutoff). Coverage@k is computed per cutoff group
    (`group`: query -> group key, default one group) against `catalogue` (group key -> articles available)
    and averaged over groups. With `curve_k`, also NDCG@j and Recall@j for j = 1..curve_k (all queries).
    With `diversity_of` = (vectors, categories), also ild@k (mean pairwise cosine distance of the top k) and
    categories@k (distinct categories in the top k), averaged over queries (`metrics.list_diversity`).
    """
    segs = _segments(targets)
    if group is None:
        group = pd.Series(0, index=pd.Index(segs["all"], name=USER_ID))
    results: dict = {"k": int(k), "users": {s: len(u) for s, u in segs.items()}, "methods": {}, "curves": {}}
    ndcg_by_method = {}
    for method, ranked in recs.items():
        per_user = per_user_metrics(ranked, targets, k=k)
        div = list_diversity(ranked, *diversity_of, k=k) if diversity_of is not None else None
        ndcg_by_method[method] = per_user["ndcg"].reindex(segs["all"]).fillna(0.0).to_numpy()
        reach_recall = reach[method]
        results["methods"][method] = {}
        for seg, users in segs.items():
            top = ranked[ranked[USER_ID].isin(users) & (ranked[RANK] <= k)]
            row = summarise(per_user.reindex(users), k)
            row.pop("users")
            by_group = top.groupby(group.reindex(top[USER_ID]).to_numpy())
            cov = [coverage(g, int(catalogue[key]), k) for key, g in by_group]
            row[f"coverage@{k}"] = float(np.mean(cov)) if cov else 0.0
            if div is not None:
                mine = div.reindex(users)
                row[f"ild@{k}"] = float(mine["ild"].mean()) if mine["ild"].notna().any() else float("nan")
                row[f"categories@{k}"] = float(mine["categories"].mean()) if len(users) else float("nan")
            row["candidate_recall"] = (
                float(reach_recall.reindex(users).fillna(0.0).mean()) if len(users) else float("nan")
            )
            results["methods"][method][seg] = row
        if curve_k:
            curve = []
            for j in range(1, curve_k + 1):
                pj = per_user_metrics(ranked, targets, k=j)
                curve.append({"k": j, "ndcg": float(pj["ndcg"].mean()), "recall": float(pj["recall"].mean())})
            results["curves"][method] = curve
    baselines = [m for m in results["methods"] if m != RERANKER]
    metric = f"ndcg@{k}"
    if RERANKER in results["methods"] and baselines:
        best = max(baselines, key=lambda m: results["methods"][m]["all"][metric])
        best_value = results["methods"][best]["all"][metric]
        mine = results["methods"][RERANKER]["all"][metric]
        low, high = paired_bootstrap_ci(ndcg_by_method[RERANKER], ndcg_by_method[best])
        results["reranker_vs_best_baseline"] = {
            "metric": metric,
            "best_baseline": best,
            "ratio": float(mine / best_value) if best_value > 0 else float("inf"),
            "beats_every_baseline": bool(all(mine > results["methods"][m]["all"][metric] for m in baselines)),
            "diff": float(mine - best_value),
            "diff_ci95": [low, high],
        }
    return results


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of mean(a - b) over queries resampled with replacement (paired: the same
    queries for both methods). An interval that contains 0 means the two are not told apart."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(diff) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(n)])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def evaluate_snapshot(
    blocks: Iterable[pd.DataFrame],
    targets: pd.DataFrame,
    trend: pd.Series,
    catalogue_size: int,
    k: int,
    scorers: Mapping[str, Scorer] | None = None,
    curve_k: int | None = None,
    own_lists: Mapping[str, pd.DataFrame] | None = None,
    own_reach: Mapping[str, pd.DataFrame] | None = None,
    rank_params: Mapping | None = None,
    vectors: Callable[[np.ndarray], np.ndarray] | None = None,
    diversity_of: tuple[Callable[[np.ndarray], np.ndarray], pd.Series] | None = None,
    cluster: ClusterRanking | None = None,
    methods: Collection[str] | None = None,
) -> dict:
    """The frozen protocol: every method ranks one snapshot's candidates, all computed at its cutoff.

    `blocks`: the candidate rows in blocks of whole users (`candidates.read_candidate_blocks`; one frame is one
    block), ranked one block at a time, so only the top `depth` of each list outlives its block. `methods`: the
    baselines ranked in every block (`index_methods`); default the first block's (`baseline_methods`).

    `own_lists` are methods ranked outside the candidates (recent_popular, the CF peer), as user_id,
    article_id, rank; `own_reach` what such a method reaches at all when that is not its list (default).
    `rank_params` and `vectors`: the reranker's diversity re-rank (`rank_methods`); `diversity_of`: measure
    every list's diversity (`summarise_methods`). With a `cluster`, the ranking runs in its user partitions;
    the metrics are computed here.
    """
    own_lists = dict(own_lists or {})
    depth = max(k, curve_k or 0)
    rank = rank_methods if cluster is None else cluster.rank
    parts: dict[str, list[pd.DataFrame]] = {}
    reach_parts: dict[str, list[pd.Series]] = {}
    for candidates in blocks:
        methods = baseline_methods(candidates) if methods is None else methods
        truth = targets[targets[USER_ID].isin(candidates[USER_ID].unique())]
        for method, ranked in rank(candidates, trend, depth, scorers, rank_params, vectors, methods).items():
            parts.setdefault(method, []).append(ranked)
            reach_parts.setdefault(method, []).append(candidate_recall(reach_of(candidates, method, {}), truth))
        memory.release()  # only the block's top lists live on: its candidates and scores go back to the system
    recs = {m: pd.concat(v, ignore_index=True) for m, v in parts.items()}
    reach = {m: pd.concat(v) for m, v in reach_parts.items()}
    own_reach = {**own_lists, **dict(own_reach or {})}
    for method, ranked in own_lists.items():
        recs[method] = ranked[ranked[RANK] <= depth]
        reach[method] = candidate_recall(own_reach[method], targets)
    return summarise_methods(recs, reach, targets, pd.Series({0: catalogue_size}), k, curve_k,
                             diversity_of=diversity_of)


def evaluate_as_served(
    data_root: str | Path,
    snap,
    clicks: pd.DataFrame,
    catalogue: tuple[pd.DataFrame, np.ndarray],
    embeddings: np.ndarray | None,
    index_params: dict,
    feature_params: dict,
    epoch_ms: int,
    k: int,
    recent_hours: int,
    ranker=None,
    curve_k: int | None = None,
    cf_params: dict | None = None,
    impressions: pd.DataFrame | None = None,
    rank_params: Mapping | None = None,
    diversity_of: tuple[Callable[[np.ndarray], np.ndarray], pd.Series] | None = None,
    learned=None,
    cluster: ClusterRanking | None = None,
    normalised: np.ndarray | None = None,
) -> dict:
    """The as-served protocol: the snapshot's target window replayed hour by hour.

    At each hour h the candidate index and feature tables are refitted on the clicks before h, exactly as
    the hourly refresh does for the API (`CandidateIndex.fit`, `features.fit_tables`); the ranker stays
    the one trained before the window. Each user with a click in hour h is one query, judged on their
    clicks in that hour on articles published before it and not read before it. Every baseline gets the
    same refresh (the CF peer, with `cf_params`, is refitted every hour). `clicks` holds the validated clicks up
    to the window's end (ordered by time); `catalogue` is (articles, the hour each was delivered:
    `catalogue.delivered_hours`), so each hour sees the articles delivered before it; `embeddings` are the raw
    article embeddings (or None, see `normalised`). `learned` (the test index's learned model) stays fixed like
    the ranker; each hour's pool gets its article vectors from it.

    With `impressions` (the MIND importer's impressions.parquet: impression_id, user_id, hour, article_id,
    clicked), MIND's own protocol runs in the same replay: every method orders each impression of hour h by
    what it knew at the start of h, and AUC / MRR / nDCG@5 / nDCG@10 are averaged over impressions
    (results["impressions"]).

    With a `cluster`, each hour's candidate lists, user-side feature tables and rankings run in its user
    partitions; the index, the article-side tables, the CF peer and the metrics are fitted and computed here.
    `normalised`: `embeddings` already L2-normalised (`normalise_embeddings`), when the caller holds them; then
    `embeddings` may be None: the replay's rankers, tables and hourly indexes all read the normalised copy, so
    a Globo-sized process holds one matrix, not two. None normalises `embeddings` here.
    """
    from pipelines.candidates import TREND, CandidateIndex
    from pipelines.catalogue import known_at
    from pipelines.diversity import index_vectors
    from pipelines.features import fit_tables, fit_user_side, normalise_embeddings
    from pipelines.peers import CFPeer
    from pipelines.split import eval_targets, hour_start_ms

    if normalised is None:
        normalised = normalise_embeddings(embeddings)
    del embeddings
    ts = clicks["click_timestamp"].to_numpy()
    depth = max(k, curve_k or 0)
    parts: dict[str, list[pd.DataFrame]] = {}
    reach_parts: dict[str, list[pd.Series]] = {}
    target_parts, group_parts, sizes, offset = [], [], {}, 0
    shown_all, shown_total = None, 0
    if impressions is not None:
        in_window = impressions[(impressions[HOUR] >= snap.cutoff_hour) & (impressions[HOUR] < snap.end_hour)]
        shown_all, shown_total = judgeable_impressions(in_window), in_window["impression_id"].nunique()
    imp_parts: dict[str, list[pd.DataFrame]] = {}
    for hour in range(snap.cutoff_hour, snap.end_hour):
        cutoff = hour_start_ms(hour, epoch_ms)
        articles = known_at(*catalogue, hour)
        start, end = np.searchsorted(ts, [cutoff, cutoff + HOUR_MS])
        history, target = clicks.iloc[:start], clicks.iloc[start:end]
        targets = eval_targets(history, target, articles, cutoff)
        shown = shown_all[shown_all[HOUR] == hour] if shown_all is not None else None
        if targets.empty and (shown is None or shown.empty):
            continue
        users = np.unique(targets[USER_ID].to_numpy())
        index = CandidateIndex.fit(data_root, articles, normalised, cutoff, index_params, epoch_ms, similar=False,
                                   given={LEARNED: learned}, normalised=True)
        peer = CFPeer.fit(history, cutoff, cf_params) if cf_params else None
        if shown is not None and len(shown):
            for method, ranked in _impression_hour(
                data_root, shown, history, target, articles, normalised, index, cutoff, hour, feature_params,
                recent_hours, ranker, peer,
            ).items():
                imp_parts.setdefault(method, []).append(ranked)
        if targets.empty:
            continue
        mine = history[history[USER_ID].isin(users)]
        cands = index.candidates(mine, users=users) if cluster is None else cluster.candidates(index, mine, users)
        scorers: dict[str, Scorer] = {}
        if ranker is not None:
            tables = fit_tables(history, articles, normalised, cutoff, feature_params, requests=target,
                                only_users=users, user_side=fit_user_side if cluster is None else cluster.user_side)
            scorers[RERANKER] = RerankerScorer(ranker, tables)
        trend = index.pool.set_index(ARTICLE_ID)[TREND]
        rank = rank_methods if cluster is None else cluster.rank
        recs = rank(cands, trend, depth, scorers, rank_params, index_vectors(index), index_methods(index))
        own = recent_popular_lists(data_root, articles, hour, cutoff, recent_hours, users, mine, depth)
        recs[RECENT_POPULAR] = own[own[RANK] <= depth]
        own_reach = {RECENT_POPULAR: own}
        if peer is not None:
            available = articles.loc[articles[CREATED_AT_TS] < cutoff, ARTICLE_ID].to_numpy()
            recs[CF_PEER], own_reach[CF_PEER] = cf_peer_lists(
                peer, users, mine, available, index.trending()[[ARTICLE_ID, TREND]], depth)

        def to_query(frame: pd.DataFrame, offset: int = offset, users: np.ndarray = users) -> pd.DataFrame:
            return frame.assign(**{USER_ID: offset + np.searchsorted(users, frame[USER_ID].to_numpy())})

        queries = to_query(targets)
        for method, ranked in recs.items():
            parts.setdefault(method, []).append(to_query(ranked))
            reach = reach_of(cands, method, own_reach)
            reach_parts.setdefault(method, []).append(candidate_recall(to_query(reach), queries))
        target_parts.append(queries)
        group_parts.append(pd.Series(hour, index=offset + np.arange(len(users))))
        sizes[hour] = int((articles[CREATED_AT_TS] < cutoff).sum())
        offset += len(users)
        memory.release()  # the hour's index, tables and candidates are gone: hand their space back
    if not target_parts:
        raise InputError(f"snapshot {snap.name!r}: no hour of its window has a user with a click to judge")
    results = summarise_methods(
        {m: pd.concat(v, ignore_index=True) for m, v in parts.items()},
        {m: pd.concat(v) for m, v in reach_parts.items()},
        pd.concat(target_parts, ignore_index=True),
        pd.Series(sizes),
        k,
        curve_k,
        group=pd.concat(group_parts),
        diversity_of=diversity_of,
    )
    results["hours"] = len(sizes)
    if shown_all is not None:
        results["impressions"] = summarise_impressions(imp_parts, shown_total)
    return results


def _impression_hour(
    data_root, shown, history, target, articles, normalised, index, cutoff, hour, feature_params, recent_hours,
    ranker, peer,
) -> dict[str, pd.DataFrame]:
    """One replayed hour of MIND's protocol: every method's order of the hour's impressions, with the index,
    feature tables and CF peer fitted at the hour's start (the as-served loop's own)."""
    from pipelines.candidates import TREND
    from pipelines.features import fit_tables

    users = np.unique(shown[USER_ID].to_numpy())
    mine = history[history[USER_ID].isin(users)]
    cands = with_shown(index.candidates(mine, users=users), shown)
    scorers: dict[str, Scorer] = {}
    if ranker is not None:
        tables = fit_tables(history, articles, normalised, cutoff, feature_params, requests=target,
                            only_users=users)
        scorers[RERANKER] = RerankerScorer(ranker, tables)
    scores = method_scores(cands, scorers, methods=index_methods(index))
    ids, recent = recent_popular_order(data_root, articles, hour, cutoff, recent_hours)
    scores[RECENT_POPULAR] = pd.Series(recent, index=ids).reindex(cands[ARTICLE_ID]).to_numpy()
    if peer is not None:
        scores[CF_PEER] = peer.score(cands[USER_ID].to_numpy(), cands[ARTICLE_ID].to_numpy())
    pair_scores = cands[[USER_ID, ARTICLE_ID]].assign(**scores)
    trend = index.pool.set_index(ARTICLE_ID)[TREND]
    return impression_ranks(shown, pair_scores, list(scores), trend)


PROTOCOLS = {
    "frozen": "every list computed at the test cutoff, judged on the whole test window",
    "as_served": ("index and features refreshed every hour of the test window, ranker fixed at the cutoff; "
                  "a query is one user in one hour"),
}


def markdown_table(results: dict) -> str:
    """One table per protocol: a row per method and segment, a column per metric."""
    k = results["k"]
    cols = [f"recall@{k}", f"ndcg@{k}", f"mrr@{k}", f"hr@{k}", f"coverage@{k}", f"ild@{k}", f"categories@{k}",
            "candidate_recall"]
    rows = next(iter(results["methods"].values()), {}).get("all", {})
    cols = [c for c in cols if c in rows or not rows]  # diversity only where it was measured
    lines = []
    for protocol, what in PROTOCOLS.items():
        res = results if protocol == "frozen" else results.get(protocol)
        if not res:
            continue
        users = res["users"]
        unit = "queries (user x hour)" if protocol == "as_served" else "users"
        lines += [
            f"### {protocol.replace('_', ' ')}: {what}",
            "",
            (f"{users['all']} {unit} ({users['warm']} warm, {users['cold']} cold); full catalogue available at "
             "each cutoff, read articles excluded."),
            "",
            "| method | users | " + " | ".join(cols) + " |",
            "|---|---|" + "---:|" * len(cols),
        ]
        for method, segs in res["methods"].items():
            for seg in SEGMENTS:
                cells = " | ".join(f"{segs[seg][c]:.4f}" for c in cols)
                lines.append(f"| {method} | {seg} | {cells} |")
        cmp = res.get("reranker_vs_best_baseline")
        if cmp:
            verdict = "beats every baseline" if cmp["beats_every_baseline"] else "does NOT beat every baseline"
            lines += [
                "",
                (
                    f"reranker / best baseline ({cmp['best_baseline']}) on {cmp['metric']}, all users: "
                    f"{cmp['ratio']:.3f} ({verdict}); difference {cmp['diff']:+.4f}, 95% paired bootstrap "
                    f"interval [{cmp['diff_ci95'][0]:+.4f}, {cmp['diff_ci95'][1]:+.4f}]"
                ),
            ]
        lines.append("")
    imp = (results.get("as_served") or {}).get("impressions")
    if imp:
        lines += impression_table(imp)
    return "\n".join(lines)


def impression_table(imp: dict) -> list[str]:
    """MIND's impression protocol as markdown lines: a row per method."""
    from pipelines.metrics import IMPRESSION_METRICS

    lines = [
        "### impressions (MIND's protocol): every method orders each test impression's shown articles, as served",
        "",
        (f"{imp['impressions']} impressions with a clicked and an unclicked article (of {imp['impressions_shown']} "
         "in the test window); metrics per impression, averaged."),
        "",
        "| method | " + " | ".join(IMPRESSION_METRICS) + " |",
        "|---|" + "---:|" * len(IMPRESSION_METRICS),
    ]
    for method, row in imp["methods"].items():
        lines.append(f"| {method} | " + " | ".join(f"{row[m]:.4f}" for m in IMPRESSION_METRICS) + " |")
    return [*lines, ""]


def summary(results: dict) -> dict:
    """The headline figures (DVC's metrics file, so `dvc metrics show` / `dvc exp show` stay one readable row):
    per protocol, the reranker's NDCG@k for all/warm/cold users, the best baseline (`vs`) and the ratio to it.
    Everything else (every method, metric and segment, the intervals, candidate recall) is in eval.json."""
    k = results["k"]
    out = {}
    for name, protocol in (("as_served", results.get("as_served")), ("frozen", results)):
        if not protocol or "methods" not in protocol:
            continue
        verdict = protocol.get("reranker_vs_best_baseline") or {}
        reranker = protocol["methods"].get("reranker", {})
        out[name] = {
            f"ndcg@{k}": {seg: round(reranker[seg][f"ndcg@{k}"], 4) for seg in SEGMENTS if seg in reranker},
            "vs": verdict.get("best_baseline"),
            "ratio": round(verdict["ratio"], 3) if "ratio" in verdict else None,
        }
    return out


def write_reports(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """eval.json and eval_table.md under `out_dir`, and plot data, one CSV per series so DVC overlays them:
    plots/ndcg_at_k/<method>.csv (k, ndcg, recall; all users) and plots/ndcg_by_method/<segment>.csv
    (the as-served protocol when it ran, else the frozen one)."""
    out = Path(out_dir)
    at_k, by_method = out / "plots" / "ndcg_at_k", out / "plots" / "ndcg_by_method"
    for folder in (at_k, by_method):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.csv"):  # a method dropped since the last run must not linger in the plot
            stale.unlink()
    paths = {"json": out / "eval.json", "summary": out / "summary.json", "table": out / "eval_table.md",
             "report": out / "eval_report.html", "at_k": at_k, "by_method": by_method}
    metrics = {key: value for key, value in results.items() if key != "curves"}
    if "as_served" in metrics:
        metrics["as_served"] = {key: value for key, value in metrics["as_served"].items() if key != "curves"}
    paths["json"].write_text(json.dumps(metrics, indent=2) + "\n")
    paths["summary"].write_text(json.dumps(summary(results), indent=2) + "\n")
    paths["table"].write_text(markdown_table(results))
    eval_report.write(results, paths["report"])
    shown = results.get("as_served") or results
    k = results["k"]
    for method, curve in shown.get("curves", {}).items():
        pd.DataFrame(curve, columns=["k", "ndcg", "recall"]).to_csv(at_k / f"{method}.csv", index=False)
    for seg in SEGMENTS:
        rows = [{"method": m, f"ndcg@{k}": v[seg][f"ndcg@{k}"]} for m, v in shown["methods"].items()]
        pd.DataFrame(rows).to_csv(by_method / f"{seg}.csv", index=False)
    return paths


def reranker_scorer(ranker, features_dir: str | Path, normalised: np.ndarray) -> Scorer:
    """Scores from the trained ranker with the snapshot's feature tables (R's `score_candidates`);
    `normalised`: the article embeddings, L2-normalised (`features.normalise_embeddings`)."""
    from pipelines.features import FeatureTables

    return RerankerScorer(ranker, FeatureTables.load(features_dir, normalised))


def evaluate(
    data_root: str | Path,
    split_file: str | Path,
    candidates_dir: str | Path,
    index_dir: str | Path,
    params: dict,
    model_dir: str | Path | None = None,
    features_dir: str | Path | None = None,
    index_params: dict | None = None,
    feature_params: dict | None = None,
    epoch_ms: int | None = None,
    rank_params: dict | None = None,
    client=None,
    partitions: int = 1,
) -> dict:
    """Evaluate the `params["snapshot"]` snapshot (normally "test") from the stage outputs on disk: the
    frozen protocol, and the as-served one when `params["as_served"]` (it needs the index and feature
    params and the epoch, which fix how the hourly refresh fits). `rank_params` (params.yaml `rank`): the
    diversity re-rank of the reranker's lists, as the API applies it; None = off. With a Dask `client`, the
    per-user ranking of both protocols (and the as-served candidate lists) runs in `partitions` user partitions
    on the cluster; the result is the single process's."""
    from pipelines import diversity
    from pipelines.candidates import CandidateIndex
    from pipelines.catalogue import delivered_hours, known_at, read_catalogue
    from pipelines.features import normalise_embeddings
    from pipelines.split import get_snapshot, load_clicks
    from pipelines.train import Ranker

    root = Path(data_root)
    snap = get_snapshot(split_file, params["snapshot"])
    if snap.role == "serve":
        raise InputError(f"snapshot {snap.name!r} has no target window to evaluate on")
    catalogue, embeddings = read_catalogue(root)
    # One normalised copy for the reranker's tables, the diversity measure and the replay's hourly indexes.
    normalised = normalise_embeddings(embeddings, in_place=True)
    del embeddings
    delivered = delivered_hours(root, catalogue)
    clicks = load_clicks(lake.validated_dir(root), None, snap.end_ms)
    index = CandidateIndex.load(Path(index_dir) / snap.name)
    ranker = None
    if model_dir is not None:
        if features_dir is None:
            raise InputError("the reranker needs the feature tables folder (--features)")
        ranker = Ranker.load(model_dir)
        # Scored as the API scores requests: the compiled trees (LightGBM's scores to ~1e-14, ~7x faster over
        # Globo's millions of candidate rows), or LightGBM where they cannot be compiled.
        why = ranker.try_compile()
        if why is not None:
            print(f"ranker not compiled ({why}); LightGBM scores the candidates", file=sys.stderr)
    rank_params = diversity.check_params(rank_params)
    cluster = ClusterRanking(client, partitions) if client is not None else None
    measure = (diversity.lookup(normalised), catalogue.set_index(ARTICLE_ID)[CATEGORY_ID])
    # The frozen protocol's state (the history's copy, every test user's feature tables, the CF peer) lives
    # in its own call and is gone before the replay starts: at Globo scale that is over half a gigabyte.
    results = _evaluate_frozen(
        root, snap, clicks, known_at(catalogue, delivered, snap.cutoff_hour), normalised, Path(candidates_dir),
        index, params, ranker, features_dir, rank_params, measure, cluster,
    )
    memory.release()  # the frozen protocol's state is gone: its space goes back before the replay builds its own
    if params.get("as_served"):
        if index_params is None or feature_params is None or epoch_ms is None:
            raise InputError("the as-served protocol needs the candidates and features params and the epoch")
        shown = lake.impressions_path(root)  # what an importer kept of the source's impressions (MIND)
        results["as_served"] = evaluate_as_served(
            root, snap, clicks, (catalogue, delivered), None, index_params, feature_params, int(epoch_ms),
            int(params["k"]), int(params["recent_popular_hours"]), ranker=ranker, curve_k=int(params["curve_k"]),
            cf_params=params.get("cf"), impressions=pd.read_parquet(shown) if shown.exists() else None,
            rank_params=rank_params, diversity_of=measure, learned=index.learned, cluster=cluster,
            normalised=normalised,
        )
    return results


def _evaluate_frozen(
    root: Path, snap, clicks: pd.DataFrame, articles: pd.DataFrame, normalised: np.ndarray, candidates_dir: Path,
    index, params: dict, ranker, features_dir, rank_params: dict, measure: tuple, cluster: ClusterRanking | None,
) -> dict:
    """`evaluate`'s frozen protocol at the snapshot's cutoff (`evaluate_snapshot` over the candidates on disk)."""
    from pipelines import candidates, diversity
    from pipelines.candidates import TREND
    from pipelines.split import eval_targets

    # Slices of the time-ordered clicks (`load_clicks`), not copies: the history is most of 3M rows at Globo.
    cut = int(np.searchsorted(clicks["click_timestamp"].to_numpy(), snap.cutoff_ms, side="left"))
    history, target = clicks.iloc[:cut], clicks.iloc[cut:]
    targets = eval_targets(history, target, articles, snap.cutoff_ms)
    if targets.empty:
        raise InputError(f"snapshot {snap.name!r} has no user with a target click on an available article")
    cand_path = candidates_dir / f"{snap.name}.parquet"
    if not cand_path.exists():
        raise MissingInputError(
            f"no candidates for snapshot {snap.name!r}: {cand_path} (run `newsrec candidates`)"
        )
    trend = index.pool.set_index(ARTICLE_ID)[TREND]
    k, curve_k, recent_hours = int(params["k"]), int(params["curve_k"]), int(params["recent_popular_hours"])
    scorers: dict[str, Scorer] = {}
    if ranker is not None:
        scorers[RERANKER] = reranker_scorer(ranker, Path(features_dir) / snap.name, normalised)
    users = np.unique(targets[USER_ID].to_numpy())
    mine = history[history[USER_ID].isin(users)]
    own = recent_popular_lists(root, articles, snap.cutoff_hour, snap.cutoff_ms, recent_hours, users, mine,
                               max(k, curve_k))
    available_ids = articles.loc[articles[CREATED_AT_TS] < snap.cutoff_ms, ARTICLE_ID].to_numpy()
    own_lists, own_reach = {RECENT_POPULAR: own}, {}
    cf_params = params.get("cf")
    if cf_params:
        from pipelines.peers import CFPeer

        peer = CFPeer.fit(history, snap.cutoff_ms, cf_params)
        own_lists[CF_PEER], own_reach[CF_PEER] = cf_peer_lists(
            peer, users, mine, available_ids, index.trending()[[ARTICLE_ID, TREND]], max(k, curve_k))
    results = evaluate_snapshot(
        candidates.read_candidate_blocks(cand_path, users, candidates.LIST_BLOCK_USERS), targets, trend,
        len(available_ids), k, scorers, curve_k=curve_k, own_lists=own_lists, own_reach=own_reach,
        rank_params=rank_params, vectors=diversity.index_vectors(index), diversity_of=measure, cluster=cluster,
        methods=index_methods(index),
    )
    results["rank"] = rank_params
    results["snapshot"] = snap.name
    results["catalogue"] = len(available_ids)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = step_parser("evaluate", __doc__, data_root="data root with raw/ and validated/")
    parser.add_argument("--split", type=Path, required=True, help="snapshot file written by `newsrec split`")
    parser.add_argument(
        "--candidates", type=Path, required=True, help="folder of <snapshot>.parquet candidates"
    )
    parser.add_argument("--indexes", type=Path, required=True, help="folder of <snapshot>/ candidate indexes")
    parser.add_argument(
        "--model", type=Path, help="trained ranker folder (`newsrec train`); omit: baselines only"
    )
    parser.add_argument("--features", type=Path, help="folder of <snapshot>/ feature tables (with --model)")
    parser.add_argument("--out", type=Path, required=True, help="folder for eval.json, eval_table.md, plots/")
    args, config = parse_step(parser, argv)
    from pipelines.cluster import connect, partition_count

    dask_params = config["dask"]
    with connect(dask_params) as client:
        results = evaluate(
            args.data_root, args.split, args.candidates, args.indexes, config["evaluate"], args.model,
            args.features, index_params=config["candidates"], feature_params=config["features"],
            epoch_ms=int(config["data"]["epoch_ms"]), rank_params=config["rank"], client=client,
            partitions=partition_count(client, dask_params) if client is not None else 1,
        )
    paths = write_reports(results, args.out)
    print(markdown_table(results), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
