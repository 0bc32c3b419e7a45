"""One user's recommendations from a serving bundle, with the same code the offline pipeline runs.

`prepare(bundle)` does once, at load time, what would otherwise cost every request: the ranker compiled
to machine code, catalogue lookups as arrays indexed by article id, the index's co-click neighbours grouped
by article, and a warm-up request. What a request knows of its user (clicks before the cutoff, feature
rows, profile) comes from the user store (serving.users: the index's memory-mapped files, or Redis), as
one user's rows, over the bundle's article-side tables. A request then calls the pipeline's own functions
for one user:
`CandidateIndex.candidate_columns` (sources, fusion, read-article exclusion),
`pipelines.features.feature_columns` (feature assembly) and the ranker, and, when the service has seen
clicks since the bundle's cutoff, `pipelines.features.fit_user_tables` / `user_profiles` to refit
that user's features with them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines import diversity
from pipelines.features import CONTEXT_FEATURES, feature_columns, fit_user_tables, user_profiles
from pipelines.sources.base import names as source_names
from serving.state import Click
from serving.users import FileUserStore, UserRows, UserStore

log = logging.getLogger("newsrec.serving")

# The session id given to clicks received online: one "live session" per user, distinct from any real one.
ONLINE_SESSION = -1
# Request context parameter -> (context feature, click column, the user's habit feature).
CONTEXT_PARAMS = {
    "device": ("c_device", C.CLICK_DEVICE_GROUP, "u_device"),
    "os": ("c_os", C.CLICK_OS, "u_os"),
    "referrer": ("c_referrer", C.CLICK_REFERRER_TYPE, "u_referrer"),
    "region": ("c_region", C.CLICK_REGION, "u_region"),
    "environment": ("c_environment", C.CLICK_ENVIRONMENT, None),
}


@dataclass(frozen=True)
class Context:
    """A request's context codes (Globo's integer codes); None = not sent."""

    device: int | None = None
    os: int | None = None
    referrer: int | None = None
    region: int | None = None
    environment: int | None = None


@dataclass
class Result:
    items: list[dict[str, Any]]
    article_ids: list[int]
    cold_start: bool
    warnings: list[str] = dataclasses.field(default_factory=list)
    read: np.ndarray | None = None  # the articles the user read (before the cutoff and since): never explored


@dataclass
class Prepared:
    """A serving bundle plus the lookup structures that keep per-request work small; `users` is where each
    request reads its user's state (the bundle's tables serve the article side only)."""

    bundle: Any  # pipelines.bundle.ServingBundle
    cutoff_ms: int
    half_life_h: float
    # Catalogue, indexed by article id (exists=False for ids with no metadata row).
    exists: np.ndarray
    category: np.ndarray
    created: np.ndarray
    words: np.ndarray
    users: UserStore
    context_default: dict[str, int]
    context_codes: dict[str, frozenset[int]]  # the codes each context parameter takes in the data


def prepare(bundle: Any, compile_ranker: bool = True, users: UserStore | None = None) -> Prepared:
    """Precompute what requests need from `bundle` (a pipelines.bundle.ServingBundle); `users` is where its
    users' state is read (default: the bundle's own history and tables, `FileUserStore`).

    `compile_ranker` compiles the ranker's trees (`Ranker.compile`, a few seconds); if that fails the
    bundle still serves, scored by LightGBM, and `bundle.ranker.predictor` says which one scores.
    """
    if compile_ranker and bundle.ranker.compiled is None:  # once per model: an index swap keeps its ranker
        why = bundle.ranker.try_compile()
        if why is not None:
            log.warning("ranker not compiled (%s); LightGBM scores requests", why)
    # Requests rank pool articles only: the article feature table of the rest of the catalogue (Globo: 364k
    # rows, the pool ~3k) would be copied and rewritten by every live popularity overlay (serving.live).
    pool_rows = bundle.tables.articles.index.isin(bundle.index.pool_ids)
    if not pool_rows.all():
        bundle = dataclasses.replace(bundle, tables=dataclasses.replace(
            bundle.tables, articles=bundle.tables.articles[pool_rows], _cache={}))
    bundle.tables.build_article_blocks()  # once per article table: each request's copy of the tables shares them
    meta = bundle.articles
    size = int(meta[C.ARTICLE_ID].max()) + 1 if len(meta) else 0
    ids = meta[C.ARTICLE_ID].to_numpy()
    exists = np.zeros(size, dtype=bool)
    exists[ids] = True
    category, created, words = (np.full(size, -1, dtype=np.int64) for _ in range(3))
    category[ids] = meta[C.CATEGORY_ID].to_numpy()
    created[ids] = meta[C.CREATED_AT_TS].to_numpy()
    words[ids] = meta[C.WORDS_COUNT].to_numpy()

    if users is None:
        users = FileUserStore(bundle.history, bundle.tables)
    # A context code the request leaves out is filled with the commonest value in the data, so the
    # model never sees a missing value it was not trained with.
    context_default = {param: users.context_default[column] for param, (_, column, _) in CONTEXT_PARAMS.items()}
    context_codes = {param: users.context_codes[column] for param, (_, column, _) in CONTEXT_PARAMS.items()}

    feature_params = bundle.meta.get("feature_params") or {}
    prepared = Prepared(
        bundle=bundle,
        cutoff_ms=int(bundle.cutoff_ms),
        half_life_h=float(feature_params.get("profile_half_life_h", 24.0)),
        exists=exists,
        category=category,
        created=created,
        words=words,
        users=users,
        context_default=context_default,
        context_codes=context_codes,
    )
    _warm_up(prepared)
    return prepared


def _warm_up(prepared: Prepared) -> None:
    """Serve a known user (with and without an online click), an unknown one and one article's similar
    list before any request does: lazy imports and caches built on first use (the co-click neighbour
    table, the article blocks) are paid at load time, and belong to what the holder freezes."""
    cutoff, users = prepared.cutoff_ms, prepared.users
    if users.n_users:
        user = users.listing([0])[0][0]
        recommend(prepared, user, [], Context(), cutoff, 10)
        recent = [Click(int(users.rows(user).clicks[C.CLICK_ARTICLE_ID][0]), cutoff)]
        recommend(prepared, user, recent, Context(), cutoff, 10)  # the online-refit path
    unknown = users.listing([users.n_users - 1])[0][0] + 1 if users.n_users else 0
    recommend(prepared, unknown, [], Context(), cutoff, 10)
    articles = np.flatnonzero(prepared.exists)
    if len(articles):
        similar(prepared, int(articles[0]), 10, cutoff)


def cutoff_ms(prepared: Prepared) -> int:
    """The end of the data the bundle was fitted on."""
    return prepared.cutoff_ms


def has_article(prepared: Prepared, article_id: int) -> bool:
    return 0 <= article_id < len(prepared.exists) and bool(prepared.exists[article_id])


def article_details(prepared: Prepared, article_ids: Sequence[int], as_of_ms: int) -> list[dict[str, Any]]:
    """Metadata of catalogue articles (ids must exist), with age at `as_of_ms`."""
    ids = np.asarray(article_ids, dtype=np.int64)
    created = prepared.created[ids]
    ages = (as_of_ms - created) / C.HOUR_MS
    category, words = prepared.category[ids], prepared.words[ids]
    return [
        {"article_id": int(a), "category_id": int(c), "created_at": pd.Timestamp(int(t), unit="ms", tz="UTC"),
         "age_hours": round(float(g), 3), "words_count": int(w)}
        for a, c, t, g, w in zip(ids, category, created, ages, words, strict=True)
    ]


def user_clicks(
    history: dict[str, np.ndarray], user_id: int, recent: Sequence[Click], context: dict[str, int]
) -> dict[str, np.ndarray]:
    """The user's clicks before the cutoff (`history`, as `UserRows.clicks`) plus those received since,
    HISTORY_COLUMNS as arrays, oldest first."""
    cols = dict(history)
    if recent:
        online = np.asarray(recent, dtype=np.int64)[::-1]  # the store keeps newest first
        n = len(online)
        extra = {
            C.USER_ID: np.full(n, user_id, dtype=np.int64),
            C.SESSION_ID: np.full(n, ONLINE_SESSION, dtype=np.int64),
            C.CLICK_ARTICLE_ID: online[:, 0],
            C.CLICK_TIMESTAMP: online[:, 1],
        }
        for param, (_, column, _) in CONTEXT_PARAMS.items():
            extra[column] = np.full(n, context[param], dtype=np.int64)
        extra[C.CLICK_COUNTRY] = np.full(n, -1, dtype=np.int64)
        cols = {c: np.concatenate([cols[c], extra[c]]) for c in cols}
    return cols


def resolve_context(prepared: Prepared, tables: Any, user_id: int, context: Context,
                    warnings: list[str] | None = None) -> dict[str, int]:
    """Request context with gaps filled: the user's habit (from `tables`, FeatureTables holding the user's
    rows) when known, else the data's commonest value. A code the data never holds (the model never saw it)
    is filled the same way, and said in `warnings`."""
    pos = tables.users.index.get_indexer([user_id])[0]
    habits = [h for _, _, h in CONTEXT_PARAMS.values() if h is not None]
    known = tables.matrix("users", habits, np.float64)[pos] if pos >= 0 else None
    out = {}
    for param, (_, _, habit) in CONTEXT_PARAMS.items():
        value = getattr(context, param)
        codes = prepared.context_codes.get(param)
        if value is not None and codes and value not in codes:
            if warnings is not None:
                warnings.append(f"{param}={value} is a code the model's data never holds ({_codes(codes)}): "
                                "treated as not sent")
            value = None
        if value is None and habit is not None and known is not None:
            h = known[habits.index(habit)]
            value = None if np.isnan(h) else int(h)
        out[param] = int(value) if value is not None else prepared.context_default[param]
    return out


def _codes(codes: frozenset[int]) -> str:
    shown = sorted(codes)
    return "known: " + ", ".join(map(str, shown[:12])) + (f" and {len(shown) - 12} more" if len(shown) > 12 else "")


def _context_frame(user_id: int, context: dict[str, int], as_of_ms: int) -> pd.DataFrame:
    row = {"c_hour_of_day": (as_of_ms // C.HOUR_MS) % 24}
    row.update({CONTEXT_PARAMS[p][0]: v for p, v in context.items()})
    values = np.array([[row[c] for c in CONTEXT_FEATURES]], dtype=np.int64)
    return pd.DataFrame(values, index=pd.Index([user_id], name=C.USER_ID), columns=CONTEXT_FEATURES)


def _user_tables(prepared: Prepared, rows: UserRows):
    """The bundle's article-side feature tables with the user side replaced by one user's rows (the copy
    shares the article side's cached blocks, `FeatureTables._article_cache`)."""
    tables = prepared.bundle.tables
    return dataclasses.replace(tables, users=rows.users, profiles=rows.profiles,
                               user_categories=rows.user_categories, _cache={})


def _tables_with_online(prepared: Prepared, columns: dict[str, np.ndarray], as_of_ms: int):
    """The bundle's feature tables with this user's rows refitted on history + online clicks."""
    tables = prepared.bundle.tables
    clicks = pd.DataFrame(columns)
    cut = max(int(as_of_ms), int(clicks[C.CLICK_TIMESTAMP].max()) + 1)
    ids = np.unique(clicks[C.CLICK_ARTICLE_ID].to_numpy())
    # Only the clicked articles' metadata: fit_user_tables indexes it by id, the whole catalogue would cost more.
    meta = pd.DataFrame({C.ARTICLE_ID: ids, C.CATEGORY_ID: prepared.category[ids],
                         C.CREATED_AT_TS: prepared.created[ids], C.WORDS_COUNT: prepared.words[ids]})
    users, user_categories = fit_user_tables(clicks, meta, cut)
    _, profiles = user_profiles(clicks, tables.embeddings, cut, prepared.half_life_h)
    return dataclasses.replace(tables, users=users, profiles=profiles, user_categories=user_categories,
                               _cache={})


def recommend(
    prepared: Prepared, user_id: int, recent: Sequence[Click], context: Context, as_of_ms: int, k: int,
    rank_params: dict | None = None,
) -> Result:
    """Top-k articles for one user: candidates -> features -> ranker -> the diversity re-rank (`rank_params`,
    params.yaml `rank`, as the offline evaluation applies it; None = off), read articles excluded."""
    warnings: list[str] = []
    rows = prepared.users.rows(user_id)
    tables = _user_tables(prepared, rows)
    ctx = resolve_context(prepared, tables, user_id, context, warnings)
    clicks = user_clicks(rows.clicks, user_id, recent, ctx)
    cold = len(clicks[C.USER_ID]) == 0
    read = clicks[C.CLICK_ARTICLE_ID]
    index = prepared.bundle.index
    # Columns rather than a frame, and scoring without `score_candidates`' slicing: one request is small.
    cands = index.candidate_columns(clicks, users=[user_id], at_ms=as_of_ms)  # reads the query columns it needs
    if len(cands[C.ARTICLE_ID]) == 0:
        return Result(items=[], article_ids=[], cold_start=cold, warnings=warnings, read=read)
    if recent:
        tables = _tables_with_online(prepared, clicks, as_of_ms)
    scores = prepared.bundle.ranker.predict(feature_columns(cands, tables, _context_frame(user_id, ctx, as_of_ms)))
    order = np.lexsort((cands[C.rank_col(C.FUSED)], -scores))
    if diversity.active(rank_params):
        top = order[: int(rank_params["mmr_depth"])]
        vectors = diversity.index_vectors(index)(cands[C.ARTICLE_ID][top])
        order = top[diversity.mmr(scores[top], vectors, k, float(rank_params["mmr_lambda"]))]
    else:
        order = order[:k]
    ranks = {s: cands[C.rank_col(s)][order] for s in source_names()}
    ids = cands[C.ARTICLE_ID][order]
    items = article_details(prepared, ids, as_of_ms)
    for i, item in enumerate(items):
        item["rank"] = i + 1
        item["score"] = float(scores[order[i]])
        item["sources"] = [s for s, r in ranks.items() if r[i] > 0]
    return Result(items=items, article_ids=[int(a) for a in ids], cold_start=cold, warnings=warnings, read=read)


def explore(prepared: Prepared, result: Result, explorer: Any, user_id: int, recent: Sequence[Click], k: int,
            as_of_ms: int) -> list[int]:
    """Give the last `explorer.slots(k)` places of `result` (changed in place) to fresh articles the user has
    not read and the list does not hold (serving.explore); returns the explored article ids. A list keeps
    its ranked tail where there are fewer fresh articles than slots."""
    n = min(explorer.slots(k), len(result.article_ids))
    if n == 0:
        return []
    read = result.read if result.read is not None else prepared.users.rows(user_id).clicks[C.CLICK_ARTICLE_ID]
    exclude = set(read.tolist()) | {c.article_id for c in recent} | set(result.article_ids)
    chosen = explorer.choose(prepared, exclude, n, as_of_ms)
    if not chosen:
        return []
    cut = len(result.article_ids) - len(chosen)
    items = article_details(prepared, [a for a, _ in chosen], as_of_ms)
    for i, (item, (_, draw)) in enumerate(zip(items, chosen, strict=True)):
        item.update(rank=cut + i + 1, score=float(draw), sources=["explore"])
    result.items[cut:] = items
    result.article_ids[cut:] = [a for a, _ in chosen]
    return [a for a, _ in chosen]


def similar(prepared: Prepared, article_id: int, k: int, as_of_ms: int) -> dict[str, list[dict[str, Any]]]:
    """Nearest recommendable articles by embedding, and the most co-read ones (decayed session pairs)."""
    emb = prepared.bundle.index.similar_articles([article_id], k)
    emb_items = article_details(prepared, emb[C.ARTICLE_B].to_numpy(), as_of_ms)
    for item, rank, score in zip(emb_items, emb[C.RANK].to_numpy(), emb[C.SCORE].to_numpy(), strict=True):
        item.update(rank=int(rank), score=float(score))
    keys, start, end, neighbours, weights = prepared.bundle.index.coclick_neighbours()
    i = np.searchsorted(keys, article_id)
    cocl_items: list[dict[str, Any]] = []
    if i < len(keys) and keys[i] == article_id:
        sl = slice(int(start[i]), min(int(end[i]), int(start[i]) + k))
        cocl_items = article_details(prepared, neighbours[sl], as_of_ms)
        for r, (item, w) in enumerate(zip(cocl_items, weights[sl], strict=True), 1):
            item.update(rank=r, score=float(w))
    return {"embedding": emb_items, "coclick": cocl_items}


def user_history(
    prepared: Prepared, user_id: int, recent: Sequence[Click], n: int, as_of_ms: int
) -> tuple[bool, list[dict[str, Any]]]:
    """(known: the model's data or the service's online clicks hold reads of the user; the n latest reads,
    newest first, with when and whether online)."""
    history = prepared.users.rows(user_id).clicks
    past_ids = history[C.CLICK_ARTICLE_ID][::-1][:n]
    past_ts = history[C.CLICK_TIMESTAMP][::-1][:n]
    reads = [(c.article_id, c.timestamp_ms, True) for c in recent] + [
        (int(a), int(t), False) for a, t in zip(past_ids, past_ts, strict=True)
    ]
    reads = [r for r in reads if has_article(prepared, r[0])][:n]
    items = article_details(prepared, [r[0] for r in reads], as_of_ms)
    for item, (_, ts, online) in zip(items, reads, strict=True):
        item["clicked_at"] = pd.Timestamp(ts, unit="ms", tz="UTC")
        item["online"] = online
    return len(history[C.USER_ID]) > 0 or bool(recent), items


def known_users(prepared: Prepared, n: int, order: str, seed: int = 0) -> list[dict[str, int]]:
    """Users the bundle has history for: the n most active, or a random sample of n (seeded)."""
    users = prepared.users
    if order == "active":
        pick = users.most_active(n)
    else:
        rng = np.random.default_rng(seed)
        pick = rng.choice(users.n_users, size=min(n, users.n_users), replace=False)
    return [{"user_id": u, "clicks": c} for u, c in users.listing(pick)]
