"""Ranking features, point-in-time correct: fit at a cutoff from history only, then assemble per candidate.

`fit_tables` builds the user, user x category and article tables from clicks strictly before the
cutoff; `request_context` describes the request a user arrives with (offline: the first click of
the target window); `assemble` joins a candidate frame with all of it into the model's matrix.
Serving calls the same `assemble` for one user, so nothing here loops over users or clicks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines import lake
from pipelines.errors import InputError, MissingInputError
from pipelines.sources import base as sources

USER_FEATURES = [
    "u_clicks",
    "u_sessions",
    "u_clicks_24h",
    "u_hours_since_last",
    "u_hours_since_first",
    "u_mean_session_size",
    "u_n_categories",
    "u_top_cat_share",
    "u_mean_click_age_h",
    "u_mean_words",
    "u_device",
    "u_os",
    "u_referrer",
    "u_region",
]
# A news reader follows a few threads at once: the pair features compare a candidate with each of the user's
# last RECENT_CLICKS clicks (a profile mean blurs them, the last click alone forgets the others).
RECENT_CLICKS = 5
# Kept in the user table for pair features, not fed to the model as such: the last click, then the ones
# before it (u_prev_article_1 = the second newest; -1 where the user has fewer clicks).
USER_KEYS = ["u_last_article", "u_last_category"] + [f"u_prev_article_{i}" for i in range(1, RECENT_CLICKS)]

ARTICLE_FEATURES = [
    "a_age_h",
    "a_clicks_1h",
    "a_clicks_6h",
    "a_clicks_24h",
    "a_clicks_all",
    "a_users_24h",
    "a_trend",
    "a_hours_since_last_click",
    "a_category",
    "a_words",
    "a_cat_clicks_24h",
    "a_share_1h",
    "a_share_6h",
    "a_rank_6h",
    "a_velocity",
    "a_cat_share_1h",
    "a_cat_share_6h",
]
CONTEXT_FEATURES = ["c_hour_of_day", "c_device", "c_os", "c_referrer", "c_region", "c_environment"]
PAIR_FEATURES = [
    "ua_emb_sim",
    "ua_last_sim",
    "ua_cat_share",
    "ua_last_cat_match",
    "ua_age_vs_habit",
    "c_device_habit",
    "ua_recent_sim_max",
    "ua_recent_sim_mean",
    "ua_recent_cat_share",
    "ua_new_since_visit",
    "ua_cat_mix_1h",
    "ua_cat_mix_6h",
]
# Each candidate source's score and rank, the fused score and what sources score for every candidate (the
# learned model's learned_sim): pipelines.candidates writes them, pipelines.sources names them.
SOURCE_FEATURES = sources.source_columns() + [C.score_col(C.FUSED)] + sources.row_columns()
FEATURES = USER_FEATURES + ARTICLE_FEATURES + CONTEXT_FEATURES + PAIR_FEATURES + SOURCE_FEATURES
# Ids whose numeric order means nothing: LightGBM splits them as categories.
CATEGORICAL = ["u_device", "u_os", "u_referrer", "u_region", "c_device", "c_os", "c_referrer", "c_region",
               "c_environment", "a_category"]

# Context habits: the user's most frequent value of each click context column.
_HABITS = {
    "u_device": C.CLICK_DEVICE_GROUP,
    "u_os": C.CLICK_OS,
    "u_referrer": C.CLICK_REFERRER_TYPE,
    "u_region": C.CLICK_REGION,
}
_CONTEXT = {
    "c_device": C.CLICK_DEVICE_GROUP,
    "c_os": C.CLICK_OS,
    "c_referrer": C.CLICK_REFERRER_TYPE,
    "c_region": C.CLICK_REGION,
    "c_environment": C.CLICK_ENVIRONMENT,
}
_FILES = {
    "users": "users.parquet",
    "user_categories": "user_categories.parquet",
    "articles": "articles.parquet",
    "context": "context.parquet",
    "profiles": "profiles.npy",
}
# What `FeatureTables.load(user_side=False)` never reads (an API replica whose users are in Redis).
USER_ONLY_FILES = (_FILES["profiles"], _FILES["context"])
# Tables written before profiles had their own file held them as this fixed-size list column of users.
_LEGACY_PROFILE = "profile"


@dataclass
class FeatureTables:
    """Everything known at `cutoff_ms` that the ranker's features are computed from.

    `profiles[i]` is the L2-normalised recency-weighted profile of `users.index[i]`; `embeddings` is
    the whole catalogue's L2-normalised matrix (row = article_id), shared, never saved with the tables.
    `context` (one row per user) is present for offline snapshots; online the request supplies it.
    """

    cutoff_ms: int
    users: pd.DataFrame
    profiles: np.ndarray
    user_categories: pd.DataFrame
    articles: pd.DataFrame
    embeddings: np.ndarray = field(repr=False)
    context: pd.DataFrame | None = None
    # Column blocks as arrays and the category-share hash index, built on first use: the API assembles one
    # user's rows per request, which must not copy or re-hash whole tables each time. `_cache` holds the user
    # side's; `_article_cache` the article side's, built for the frame it names under "frame": a copy with
    # only its user side replaced (`dataclasses.replace`, one per request) shares it, so the article blocks
    # are built once per article table, not once per request, and a copy with another article table does
    # not use them.
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    _article_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def _blocks(self, table: str) -> dict:
        if table != "articles":
            return self._cache
        if self._article_cache.get("frame") is not self.articles:
            self._article_cache = {"frame": self.articles}  # this copy's own: never clears a shared one
        return self._article_cache

    def matrix(self, table: str, columns: list[str], dtype=np.float32) -> np.ndarray:
        """`getattr(self, table)[columns]` as a cached array (tables are not modified after fit/load)."""
        cache, key = self._blocks(table), (table, tuple(columns), np.dtype(dtype).str)
        if key not in cache:
            # The whole frame as one array, then its columns by position: selecting columns by name on the
            # frame cost ~10x more, which an online refit (a fresh one-user table per request) pays.
            frame = getattr(self, table)
            positions = [frame.columns.get_loc(c) for c in columns]
            cache[key] = frame.to_numpy(dtype=dtype)[:, positions]
        return cache[key]

    def article_positions(self, article_ids: np.ndarray) -> np.ndarray:
        """`articles.index.get_indexer(article_ids)` through a cached id -> row array (ids are small ints)."""
        cache = self._blocks("articles")
        if "rows" not in cache:
            ids = self.articles.index.to_numpy(dtype=np.int64)
            rows = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=np.intp)
            rows[ids] = np.arange(len(ids))
            cache["rows"] = rows
        rows = cache["rows"]
        inside = (article_ids >= 0) & (article_ids < len(rows))
        return np.where(inside, rows[np.where(inside, article_ids, 0)] if len(rows) else -1, -1)

    def max_article_category(self) -> int:
        """The largest category id of the article table (0 when empty), cached with the article blocks."""
        cache = self._blocks("articles")
        if "max_category" not in cache:
            cache["max_category"] = int(self.articles["a_category"].max()) if len(self.articles) else 0
        return cache["max_category"]

    def build_article_blocks(self) -> None:
        """Build every article-side block `feature_columns` reads, now (a new article table is prepared off
        the request path; the requests' per-user copies then share them)."""
        self.matrix("articles", ARTICLE_FEATURES)
        self.matrix("articles", ["a_category"])
        self.article_positions(np.zeros(1, dtype=np.int64))
        self.max_article_category()

    def save(self, out_dir: str | Path) -> Path:
        """Write the tables as parquet, the profiles as one .npy matrix (row i = users.index[i]), plus meta.json.

        The profiles are the biggest part (Globo: 323k users x 250 floats) and are read on every hourly index
        swap in each API worker: as .npy they are memory-mapped in no time and their pages shared between
        the workers, where decoding them from parquet took ~2 s with the GIL held."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.users.reset_index().to_parquet(out / _FILES["users"], index=False)
        np.save(out / _FILES["profiles"], np.ascontiguousarray(self.profiles, dtype=np.float32))
        self.user_categories.to_parquet(out / _FILES["user_categories"], index=False)
        self.articles.reset_index().to_parquet(out / _FILES["articles"], index=False)
        if self.context is not None:
            self.context.reset_index().to_parquet(out / _FILES["context"], index=False)
        (out / "meta.json").write_text(json.dumps({"cutoff_ms": int(self.cutoff_ms),
                                                   "profile_dim": int(self.profiles.shape[1])}))
        return out

    @classmethod
    def load(cls, in_dir: str | Path, embeddings: np.ndarray, user_side: bool = True) -> FeatureTables:
        """Read tables written by `save` (profiles memory-mapped, read-only); `embeddings` =
        `normalise_embeddings(read_embeddings(...))`. `user_side=False` reads the article side only: the user
        tables come back empty with their columns (an API replica that reads users from Redis)."""
        src = Path(in_dir)
        meta_path = src / "meta.json"
        if not meta_path.exists():
            raise MissingInputError(f"no feature tables in {src} (meta.json missing): run `newsrec features` first")
        meta = json.loads(meta_path.read_text())
        if not user_side:
            import pyarrow.parquet as pq

            def empty(name: str) -> pd.DataFrame:
                return pq.read_schema(src / _FILES[name]).empty_table().to_pandas()

            return cls(
                cutoff_ms=int(meta["cutoff_ms"]),
                users=empty("users").set_index(C.USER_ID),
                profiles=np.zeros((0, int(meta["profile_dim"])), dtype=np.float32),
                user_categories=empty("user_categories"),
                articles=pd.read_parquet(src / _FILES["articles"]).set_index(C.ARTICLE_ID),
                embeddings=embeddings,
            )
        users = pd.read_parquet(src / _FILES["users"])
        if (src / _FILES["profiles"]).exists():
            profiles = np.load(src / _FILES["profiles"], mmap_mode="r")
        else:  # registered before profiles had their own file
            dim = int(meta["profile_dim"])
            column = users.pop(_LEGACY_PROFILE)
            profiles = np.stack(column.to_numpy()).astype(np.float32).reshape(-1, dim) if len(column) else \
                np.zeros((0, dim), dtype=np.float32)
        context_path = src / _FILES["context"]
        return cls(
            cutoff_ms=int(meta["cutoff_ms"]),
            users=users.set_index(C.USER_ID),
            profiles=profiles,
            user_categories=pd.read_parquet(src / _FILES["user_categories"]),
            articles=pd.read_parquet(src / _FILES["articles"]).set_index(C.ARTICLE_ID),
            embeddings=embeddings,
            context=pd.read_parquet(context_path).set_index(C.USER_ID) if context_path.exists() else None,
        )


def read_articles(path: str | Path) -> pd.DataFrame:
    """articles_metadata.csv with the contract's int64 dtypes."""
    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"articles metadata not found: {p}")
    frame = pd.read_csv(p)
    missing = set(C.METADATA_COLUMNS) - set(frame.columns)
    if missing:
        raise InputError(f"{p}: missing columns {sorted(missing)}")
    return frame[C.METADATA_COLUMNS].astype(C.METADATA_DTYPES)


def read_embeddings(path: str | Path) -> np.ndarray:
    """articles_embeddings.pickle as float32 [n_articles, dim] (row = article_id)."""
    import pickle

    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"article embeddings not found: {p}")
    with p.open("rb") as fh:
        matrix = np.asarray(pickle.load(fh), dtype=np.float32)
    if matrix.ndim != 2:
        raise InputError(f"{p}: expected a 2-d matrix, got shape {matrix.shape}")
    return matrix


def normalise_embeddings(matrix: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), so dot products are cosines. `in_place` scales a
    float32 `matrix` that the caller owns and no longer needs raw: the same values, without a second
    matrix of its size (Globo's catalogue: 364 MB)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    scale = np.where(norms == 0, 1.0, norms)
    if in_place and matrix.dtype == np.float32:
        matrix /= scale
        return matrix
    return (matrix / scale).astype(np.float32, copy=False)


def _history_before(clicks: pd.DataFrame, cutoff_ms: int) -> pd.DataFrame:
    missing = {C.USER_ID, C.SESSION_ID, C.CLICK_ARTICLE_ID, C.CLICK_TIMESTAMP} - set(clicks.columns)
    if missing:
        raise InputError(f"clicks frame lacks columns {sorted(missing)}")
    # The cutoff is enforced here too, so a caller that passes a wider frame cannot leak the future.
    before = clicks[C.CLICK_TIMESTAMP].to_numpy() < cutoff_ms
    return clicks if before.all() else clicks[before]


def user_profiles(
    history: pd.DataFrame, embeddings: np.ndarray, cutoff_ms: int, half_life_h: float
) -> tuple[pd.Index, np.ndarray]:
    """Recency-weighted mean of each user's clicked embeddings (L2-normalised), users sorted by id."""
    from scipy.sparse import csr_matrix

    h = _history_before(history, cutoff_ms)
    users, pos = np.unique(h[C.USER_ID].to_numpy(), return_inverse=True)
    age_h = (cutoff_ms - h[C.CLICK_TIMESTAMP].to_numpy()) / C.HOUR_MS
    weights = np.power(0.5, age_h / half_life_h).astype(np.float32)
    # A sparse users x articles weight matrix times the embeddings: one pass over the clicks, no
    # per-click copy of a 250-dim row (np.add.at over 3M clicks takes minutes).
    mix = csr_matrix(
        (weights, (pos, h[C.CLICK_ARTICLE_ID].to_numpy())), shape=(len(users), embeddings.shape[0])
    )
    profiles = np.asarray(mix @ embeddings, dtype=np.float32)
    return pd.Index(users, name=C.USER_ID), normalise_embeddings(profiles, in_place=True)


def _runs(*keys: np.ndarray) -> np.ndarray:
    """Start of each run of equal consecutive key tuples (rows already sorted by the keys)."""
    change = np.zeros(len(keys[0]), dtype=bool)
    change[:1] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


def _pairs(user: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, value, count) of every distinct pair, sorted by user then value."""
    order = np.lexsort((value, user))
    user, value = user[order], value[order]
    starts = _runs(user, value)
    return user[starts], value[starts], np.diff(np.r_[starts, len(user)])


def _mode(user: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Each user's most frequent value (ties: the smallest), users in ascending order."""
    pair_user, pair_value, n = _pairs(user, value)
    order = np.lexsort((pair_value, -n, pair_user))
    return pair_value[order][_runs(pair_user[order])]


def _by_article(articles: pd.DataFrame, article_ids: np.ndarray) -> np.ndarray:
    """Row of each click's article in `articles`; clicks on articles it lacks are an error."""
    ids = articles[C.ARTICLE_ID].to_numpy(np.int64)
    sorter = np.argsort(ids, kind="stable")
    at = np.searchsorted(ids, article_ids, sorter=sorter)
    rows = sorter[np.minimum(at, len(ids) - 1)] if len(ids) else np.zeros(0, dtype=np.intp)
    if len(article_ids) and (len(ids) == 0 or not np.array_equal(ids[rows], article_ids)):
        missing = np.setdiff1d(article_ids, ids)
        raise InputError(f"clicks on {len(missing)} article(s) missing from the metadata, e.g. {missing[:5].tolist()}")
    return rows


def fit_user_tables(
    history: pd.DataFrame, articles: pd.DataFrame, cutoff_ms: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """User table (index user_id; USER_FEATURES + USER_KEYS) and user x category shares, from history only.

    Segmented reductions over the clicks sorted by (user, time): the same numpy code fits millions of
    clicks offline and refits one user online (the API, on every request of a user with new clicks),
    where pandas' fixed cost per groupby came to ~16 ms.
    """
    h = _history_before(history, cutoff_ms)
    user, ts = h[C.USER_ID].to_numpy(np.int64), h[C.CLICK_TIMESTAMP].to_numpy(np.int64)
    order = np.lexsort((ts, user))  # stable: clicks at the same time keep their order, so "last" is defined
    user, ts = user[order], ts[order]
    article = h[C.CLICK_ARTICLE_ID].to_numpy(np.int64)[order]
    rows = _by_article(articles, article)
    category = articles[C.CATEGORY_ID].to_numpy(np.int64)[rows]
    created = articles[C.CREATED_AT_TS].to_numpy(np.int64)[rows]
    words = articles[C.WORDS_COUNT].to_numpy(np.float64)[rows]

    starts = _runs(user)
    last = np.append(starts[1:], len(user))[: len(starts)] - 1  # each user's last click (none: empty)
    clicks = last + 1 - starts

    def per_user(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, starts) if len(starts) else values[:0]

    cat_user, cat_value, cat_clicks = _pairs(user, category)
    cat_starts = _runs(cat_user)  # every user has at least one category: one run per user, in order
    n_categories = np.diff(np.r_[cat_starts, len(cat_user)])
    share = cat_clicks / np.repeat(clicks, n_categories)
    sessions = _pairs(user, h[C.SESSION_ID].to_numpy(np.int64)[order])[0]
    n_sessions = np.diff(np.r_[_runs(sessions), len(sessions)])
    columns = {
        "u_clicks": clicks,
        "u_sessions": n_sessions,
        "u_clicks_24h": per_user((ts >= cutoff_ms - 24 * C.HOUR_MS).astype(np.int64)),
        "u_hours_since_last": (cutoff_ms - ts[last]) / C.HOUR_MS,
        "u_hours_since_first": (cutoff_ms - ts[starts]) / C.HOUR_MS,
        "u_mean_session_size": clicks / n_sessions,
        "u_n_categories": n_categories,
        "u_top_cat_share": np.maximum.reduceat(share, cat_starts) if len(share) else share,
        "u_mean_click_age_h": per_user(np.clip(ts - created, 0, None) / C.HOUR_MS) / clicks,
        "u_mean_words": per_user(words) / clicks,
        "u_last_article": article[last],
        "u_last_category": category[last],
    }
    for i in range(1, RECENT_CLICKS):
        columns[f"u_prev_article_{i}"] = np.where(last - i >= starts, article[np.maximum(last - i, 0)], -1)
    for name, col in _HABITS.items():
        columns[name] = _mode(user, h[col].to_numpy(np.int64)[order]) if col in h.columns else np.full(len(starts), -1)
    users = pd.DataFrame({c: columns[c] for c in USER_FEATURES + USER_KEYS}, index=pd.Index(user[starts], name=C.USER_ID))
    user_categories = pd.DataFrame({C.USER_ID: cat_user, C.CATEGORY_ID: cat_value, "share": share})
    return users, user_categories


def fit_article_table(history: pd.DataFrame, articles: pd.DataFrame, cutoff_ms: int) -> pd.DataFrame:
    """Article table (index article_id) for articles published before the cutoff: age, popularity windows."""
    h = _history_before(history, cutoff_ms)
    available = articles[articles[C.CREATED_AT_TS] < cutoff_ms].set_index(C.ARTICLE_ID)
    ts = h[C.CLICK_TIMESTAMP]
    by_article = h[C.CLICK_ARTICLE_ID]

    def clicks_since(hours: int) -> pd.Series:
        return (ts >= cutoff_ms - hours * C.HOUR_MS).groupby(by_article).sum()

    recent = h[ts >= cutoff_ms - 24 * C.HOUR_MS]
    table = pd.DataFrame(index=available.index)
    table["a_age_h"] = (cutoff_ms - available[C.CREATED_AT_TS]) / C.HOUR_MS
    for hours in (1, 6, 24):
        table[f"a_clicks_{hours}h"] = clicks_since(hours).reindex(table.index, fill_value=0)
    table["a_clicks_all"] = by_article.value_counts().reindex(table.index, fill_value=0)
    table["a_users_24h"] = recent.groupby(C.CLICK_ARTICLE_ID)[C.USER_ID].nunique().reindex(table.index, fill_value=0)
    table["a_hours_since_last_click"] = (cutoff_ms - ts.groupby(by_article).max()).reindex(table.index) / C.HOUR_MS
    table["a_category"] = available[C.CATEGORY_ID]
    table["a_words"] = available[C.WORDS_COUNT]
    cat_24h = table.groupby("a_category")["a_clicks_24h"].sum()
    table["a_cat_clicks_24h"] = cat_24h.reindex(table["a_category"]).to_numpy()
    for col in ("a_clicks_1h", "a_clicks_6h", "a_clicks_24h", "a_clicks_all", "a_users_24h", "a_cat_clicks_24h"):
        table[col] = table[col].astype("int64")
    table.index.name = C.ARTICLE_ID
    return derive_article_features(table)[ARTICLE_FEATURES]


def derive_article_features(table: pd.DataFrame) -> pd.DataFrame:
    """The article features computed from the table's own click counts and age (a_trend, shares, rank,
    velocity), in place; the live refresh (serving/live.py) calls it after moving the counts.

    Raw counts mean different things at 4 am and at noon, and the ranker is trained on many hours but scores
    one: a share of the hour's clicks and a rank among all articles are comparable across hours.
    """
    # Hourly rate now vs the day's average: rising stories score above 1.
    table["a_trend"] = table["a_clicks_1h"] / (table["a_clicks_24h"] / 24.0 + 1.0)
    for hours in (1, 6):
        counts = table[f"a_clicks_{hours}h"]
        table[f"a_share_{hours}h"] = counts / max(float(counts.sum()), 1.0)
        # Share within the article's category: what a reader who has picked that section reads now.
        in_category = counts.groupby(table["a_category"]).transform("sum")
        table[f"a_cat_share_{hours}h"] = counts / np.maximum(in_category, 1.0)
    # The article's place in the recent_popular order (1 = most read in the last 6 h; ties share a place).
    table["a_rank_6h"] = table["a_clicks_6h"].rank(method="min", ascending=False)
    # Last hour's clicks against the article's lifetime hourly rate: > 1 while a story is still climbing,
    # which a_trend (against the day's mean) cannot say of an article younger than a day.
    table["a_velocity"] = table["a_clicks_1h"] * np.clip(table["a_age_h"], 1.0, None) / (table["a_clicks_all"] + 1.0)
    return table


def request_context(requests: pd.DataFrame) -> pd.DataFrame:
    """Context of each user's request: the first click of `requests` per user (index user_id, CONTEXT_FEATURES).

    Offline, `requests` is the target window, so the context is what the user arrived with; it
    never carries which article they read. Online the API builds the same frame from the request.
    """
    needed = {C.USER_ID, C.CLICK_TIMESTAMP, *_CONTEXT.values()}
    missing = needed - set(requests.columns)
    if missing:
        raise InputError(f"request frame lacks columns {sorted(missing)}")
    first = requests.sort_values([C.USER_ID, C.CLICK_TIMESTAMP]).drop_duplicates(C.USER_ID).set_index(C.USER_ID)
    ctx = pd.DataFrame(index=first.index)
    ctx["c_hour_of_day"] = (first[C.CLICK_TIMESTAMP] // C.HOUR_MS) % 24
    for name, col in _CONTEXT.items():
        ctx[name] = first[col]
    return ctx[CONTEXT_FEATURES].astype("int64")


def fit_user_side(
    history: pd.DataFrame, articles: pd.DataFrame, embeddings: np.ndarray, cutoff_ms: int, half_life_h: float
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(users, user_categories, profiles) of the users in `history`: every row depends on that user's clicks
    alone, so the users may be fitted in partitions and the parts put back in user order (`merge_user_sides`)."""
    users, user_categories = fit_user_tables(history, articles, cutoff_ms)
    index, profiles = user_profiles(history, embeddings, cutoff_ms, half_life_h)
    assert index.equals(users.index)
    return users, user_categories, profiles


def merge_user_sides(
    parts: list[tuple[pd.DataFrame, pd.DataFrame, np.ndarray]],
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """`fit_user_side` of disjoint user partitions as one result, identical to fitting them together."""
    users = pd.concat([p[0] for p in parts])
    order = np.argsort(users.index.to_numpy(), kind="stable")
    categories = pd.concat([p[1] for p in parts], ignore_index=True)
    # Stable on user id: each user's categories keep the ascending order fit_user_tables gave them.
    categories = categories.iloc[np.argsort(categories[C.USER_ID].to_numpy(), kind="stable")].reset_index(drop=True)
    profiles = np.concatenate([p[2] for p in parts])[order]
    return users.iloc[order], categories, profiles


class PartitionedUserSide:
    """`fit_user_side` on a Dask cluster: the history split into user-hash partitions, one task each, the
    articles and the embeddings shared with the workers (the embeddings once per client), the parts merged.

    Called like `fit_user_side`; `fit_tables(..., user_side=PartitionedUserSide(client, n))`.
    """

    def __init__(self, client, partitions: int) -> None:
        self.client = client
        self.partitions = int(partitions)
        self._embeddings: tuple[int, object] | None = None  # (id of the array, its future on the workers)

    def _shared_embeddings(self, embeddings: np.ndarray):
        if self._embeddings is None or self._embeddings[0] != id(embeddings):
            self._embeddings = (id(embeddings), self.client.scatter(embeddings, broadcast=True, hash=False))
        return self._embeddings[1]

    def __call__(
        self, history: pd.DataFrame, articles: pd.DataFrame, embeddings: np.ndarray, cutoff_ms: int,
        half_life_h: float,
    ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
        from pipelines.cluster import user_partition

        part = user_partition(history[C.USER_ID].to_numpy(), self.partitions)
        pieces = [history[part == i] for i in range(self.partitions)]
        pieces = [p for p in pieces if len(p)] or [history]
        shared = self._shared_embeddings(embeddings)
        articles_f = self.client.scatter(articles, broadcast=True, hash=False)
        futures = self.client.map(fit_user_side, self.client.scatter(pieces, hash=False), articles=articles_f,
                                  embeddings=shared, cutoff_ms=cutoff_ms, half_life_h=half_life_h, pure=False)
        return merge_user_sides(self.client.gather(futures))


def fit_tables(
    history: pd.DataFrame,
    articles: pd.DataFrame,
    embeddings: np.ndarray,
    cutoff_ms: int,
    params: dict,
    requests: pd.DataFrame | None = None,
    only_users: np.ndarray | None = None,
    user_side=fit_user_side,
) -> FeatureTables:
    """All feature tables at `cutoff_ms` from `history` (clicks at or after the cutoff are ignored).

    `only_users` fits the user-side tables for those users alone (the article table always reads the whole
    history): an hourly replay scores an hour's few hundred users, not everyone who ever clicked.
    `user_side` fits the user-side tables: `fit_user_side` in this process, or a `PartitionedUserSide`
    on a Dask cluster (the same result)."""
    if embeddings.shape[0] < len(articles):
        raise InputError(f"embeddings have {embeddings.shape[0]} rows for {len(articles)} articles")
    user_history = history
    if only_users is not None:
        user_history = history[history[C.USER_ID].isin(np.asarray(only_users, dtype=np.int64))]
    users, user_categories, profiles = user_side(user_history, articles, embeddings, cutoff_ms,
                                                 float(params["profile_half_life_h"]))
    return FeatureTables(
        cutoff_ms=int(cutoff_ms),
        users=users,
        profiles=profiles,
        user_categories=user_categories,
        articles=fit_article_table(history, articles, cutoff_ms),
        embeddings=embeddings,
        context=request_context(requests) if requests is not None else None,
    )


def _rowwise_dots(b: np.ndarray, b_rows: np.ndarray, others: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """For each (a, a_rows) of `others`: a[a_rows[i]] . b[b_rows[i]] for every i, NaN where a row is -1.

    b's rows (the candidates' embeddings) are gathered once for all of them, in chunks of 2,048 rows: a
    chunk's gathered rows (2 MB of 250-d float32 per side) stay in the CPU's cache for the dots that read
    them (100,000-row chunks went out to memory and back: 2.7x slower, the same dots). A side whose row is
    the same on every row of a chunk (one request: one user's profile, its last clicks) is broadcast rather
    than gathered. Each dot is the same einsum over the same two rows
    whichever way they were fetched."""
    # Memory-mapped matrices as plain arrays over the same pages: np.memmap's indexing costs a request more
    # than the gather itself.
    b = np.asarray(b)
    outs = [np.full(len(b_rows), np.nan, dtype=np.float32) for _ in others]
    step = 2_048
    for start in range(0, len(b_rows), step):
        chunk = slice(start, start + step)
        b_ok = b_rows[chunk] >= 0
        if not b_ok.any():
            continue
        rows_b = b[np.where(b_ok, b_rows[chunk], 0)]
        for out, (a, a_rows) in zip(outs, others, strict=True):
            a, rows = np.asarray(a), a_rows[chunk]
            ok = b_ok & (rows >= 0)
            if not ok.any():
                continue
            rows_a = (np.broadcast_to(a[rows[0]], rows_b.shape) if (rows == rows[0]).all()
                      else a[np.where(ok, rows, 0)])
            out[chunk][ok] = np.einsum("ij,ij->i", rows_a, rows_b)[ok]
    return outs


def _positions(index: pd.Index, ids: np.ndarray) -> np.ndarray:
    """index.get_indexer(ids), looking up each run of equal consecutive ids once: candidate rows come
    grouped by user, so a request's few hundred rows cost one lookup, a snapshot's one per user."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.intp)
    heads = _runs(ids)
    found = _small_indexer(index, ids[heads]) if len(index) <= _SMALL_INDEX else None
    if found is None:
        found = index.get_indexer(ids[heads])
    return found if len(heads) == len(ids) else np.repeat(found, np.diff(np.r_[heads, len(ids)]))


# A request's user tables hold one user: comparing with its few ids beats building pandas' hash table for them.
_SMALL_INDEX = 16


def _small_indexer(index: pd.Index, keys: np.ndarray) -> np.ndarray | None:
    """`index.get_indexer(keys)` by comparison for a small unique integer index (None: not that case)."""
    values = index.to_numpy()
    if values.dtype.kind not in "iu" or np.asarray(keys).dtype.kind not in "iu" or not index.is_unique:
        return None
    if len(values) == 0:
        return np.full(len(keys), -1, dtype=np.intp)
    equal = np.asarray(keys)[:, None] == values[None, :]
    return np.where(equal.any(axis=1), equal.argmax(axis=1), -1).astype(np.intp)


def _take(frame: pd.DataFrame | np.ndarray, columns: list[str], pos: np.ndarray, dtype=np.float32) -> dict[str, np.ndarray]:
    """frame[columns] (or an array of those columns) at row positions `pos`, NaN where pos is -1."""
    if isinstance(frame, np.ndarray):
        values = frame
    else:  # selecting columns by list costs more than a request's whole context: skip it when in order
        values = (frame if list(frame.columns) == columns else frame[columns]).to_numpy(dtype=dtype)
    taken = values[np.where(pos >= 0, pos, 0)] if len(values) else np.zeros((len(pos), len(columns)), dtype)
    taken[pos < 0] = np.nan
    return {col: taken[:, i] for i, col in enumerate(columns)}


def assemble(
    candidates: pd.DataFrame, tables: FeatureTables, context: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The model matrix: one row per candidate row (same order and index), columns FEATURES, float32.

    `candidates` has user_id, article_id and the candidate sources' score/rank columns; `context`
    (index user_id, CONTEXT_FEATURES) defaults to the tables' own. Unknown users get NaN user
    features (the cold path), unknown context gets NaN. Rows are independent of each other, so a
    frame may be assembled in slices.
    """
    X = feature_columns(candidates, tables, context)
    return pd.DataFrame({col: X[col] for col in FEATURES}, index=candidates.index)


def feature_columns(
    candidates: pd.DataFrame | Mapping[str, np.ndarray], tables: FeatureTables, context: pd.DataFrame | None = None
) -> dict[str, np.ndarray]:
    """`assemble` as float32 arrays by feature name, without the frame (what one API request scores);
    `candidates` may also be columns by name, as `CandidateIndex.candidate_columns` gives them."""
    for col in (C.USER_ID, C.ARTICLE_ID):
        if col not in candidates:
            raise InputError(f"candidate frame lacks column '{col}'")
    ctx = tables.context if context is None else context
    user_ids = np.asarray(candidates[C.USER_ID])
    article_ids = np.asarray(candidates[C.ARTICLE_ID])
    user_pos = _positions(tables.users.index, user_ids)
    art_pos = tables.article_positions(article_ids.astype(np.int64, copy=False))
    known_user = user_pos >= 0

    X = _take(tables.matrix("users", USER_FEATURES), USER_FEATURES, user_pos)
    X |= _take(tables.matrix("articles", ARTICLE_FEATURES), ARTICLE_FEATURES, art_pos)
    if ctx is not None:
        X |= _take(ctx, CONTEXT_FEATURES, _positions(ctx.index, user_ids))
    else:
        X |= {col: np.full(len(user_ids), np.nan, dtype=np.float32) for col in CONTEXT_FEATURES}
    # Ids stay float64: float32 cannot hold every article id of a large catalogue exactly.
    keys = _take(tables.matrix("users", USER_KEYS, np.float64), USER_KEYS, user_pos, dtype=np.float64)

    n_articles = tables.embeddings.shape[0]
    art_rows = np.where((article_ids >= 0) & (article_ids < n_articles), article_ids, -1)
    # The candidate against the user's profile and each of the user's last RECENT_CLICKS clicks.
    recent = [np.nan_to_num(keys["u_last_article"], nan=-1).astype(np.int64)] + [
        np.nan_to_num(keys[f"u_prev_article_{i}"], nan=-1).astype(np.int64) for i in range(1, RECENT_CLICKS)]
    emb = tables.embeddings
    X["ua_emb_sim"], *sims = _rowwise_dots(emb, art_rows, [(tables.profiles, user_pos)] + [(emb, r) for r in recent])
    X["ua_last_sim"] = sims[0]

    # Category share of the user for the article's category: a sorted search on one int64 key.
    category = X["a_category"]
    uc = tables.user_categories
    if "share_keys" not in tables._cache:
        # Sized by the catalogue's categories too, so the key stays valid for any candidate article.
        categories = uc[C.CATEGORY_ID].to_numpy(np.int64)
        n_cat = 1 + max(tables.max_article_category(), int(categories.max()) if len(uc) else 0)
        keys_uc = uc[C.USER_ID].to_numpy(np.int64) * n_cat + categories
        order = np.argsort(keys_uc, kind="stable")  # (user, category) pairs are unique: a sorted search finds each
        tables._cache["share_keys"] = (n_cat, keys_uc[order], uc["share"].to_numpy(np.float32)[order])
    n_cat, share_keys, share_values = tables._cache["share_keys"]
    in_range = np.isfinite(category) & (np.nan_to_num(category, nan=0) < n_cat)
    row_keys = user_ids.astype(np.int64) * n_cat + np.nan_to_num(category, nan=0).astype(np.int64)
    at = np.minimum(np.searchsorted(share_keys, row_keys), max(len(share_keys) - 1, 0))
    hit = np.where(in_range & (share_keys[at] == row_keys if len(share_keys) else False), at, -1)
    share = np.where(hit >= 0, share_values[np.maximum(hit, 0)], 0.0) if len(share_values) else np.zeros(len(hit))
    X["ua_cat_share"] = np.where(known_user, share, np.nan).astype(np.float32)
    X["ua_last_cat_match"] = np.where(known_user, (keys["u_last_category"] == category), np.nan).astype(np.float32)
    # A reader picks a section, then a story in it: P(article) ~ P(user reads its category) x the article's
    # share of that category's clicks now (a product no tree split can form from the two alone).
    for hours in (1, 6):
        X[f"ua_cat_mix_{hours}h"] = (X["ua_cat_share"] * X[f"a_cat_share_{hours}h"]).astype(np.float32)
    # How far this article's age is from the ages the user usually reads at (log scale: hours to days).
    X["ua_age_vs_habit"] = np.log1p(np.clip(X["a_age_h"], 0, None)) - np.log1p(X["u_mean_click_age_h"])
    X["c_device_habit"] = np.where(
        known_user & ~np.isnan(X["c_device"]), X["c_device"] == X["u_device"], np.nan
    ).astype(np.float32)
    _recent_click_features(X, recent, np.column_stack(sims), tables)

    for col in SOURCE_FEATURES:
        X[col] = (np.asarray(candidates[col], dtype=np.float32) if col in candidates
                  else np.full(len(user_ids), np.nan, dtype=np.float32))
    return X


def _recent_click_features(X: dict[str, np.ndarray], recent: list[np.ndarray], sims: np.ndarray,
                           tables: FeatureTables) -> None:
    """Candidate vs each of the user's last RECENT_CLICKS clicks (`recent`: their article ids per row, -1 for
    none; `sims`: the cosine with each, NaN for none): max and mean cosine, share of them in the candidate's
    category; and the article's age minus the hours since the user's last click (< 0: published since the
    user was last here). NaN for unknown users."""
    has = ~np.isnan(sims)
    n = has.sum(axis=1)
    filled = np.where(has, sims, 0.0)
    X["ua_recent_sim_max"] = np.where(n > 0, np.where(has, sims, -np.inf).max(axis=1), np.nan).astype(np.float32)
    X["ua_recent_sim_mean"] = np.where(n > 0, filled.sum(axis=1) / np.maximum(n, 1), np.nan).astype(np.float32)
    # The clicked articles' categories, read from the article table (every clicked article is in it).
    category = tables.matrix("articles", ["a_category"])[:, 0]
    same = np.zeros(len(sims), dtype=np.float32)
    seen = np.zeros(len(sims), dtype=np.int64)
    for rows in recent:
        pos = tables.article_positions(rows)
        ok = (rows >= 0) & (pos >= 0)
        seen += ok
        same += ok & ((category[np.maximum(pos, 0)] if len(category) else -1) == X["a_category"])
    X["ua_recent_cat_share"] = np.where(seen > 0, same / np.maximum(seen, 1), np.nan).astype(np.float32)
    X["ua_new_since_visit"] = (X["a_age_h"] - X["u_hours_since_last"]).astype(np.float32)


def build_snapshot_features(
    data_root: str | Path, snapshots: list, out_dir: str | Path, params: dict, user_side=fit_user_side
) -> dict[str, Path]:
    """Fit and save the tables of every snapshot under `<out_dir>/<snapshot name>/`.

    Each snapshot's history is read up to its cutoff only; its target window (absent for the
    serve snapshot) supplies the request context and nothing else. `user_side` as in `fit_tables`.
    """
    from pipelines.catalogue import delivered_hours, known_at, read_catalogue
    from pipelines.split import snapshots_clicks

    root = Path(data_root)
    catalogue, embeddings = read_catalogue(root)
    delivered = delivered_hours(root, catalogue)
    embeddings = normalise_embeddings(embeddings, in_place=True)  # the raw rows are not read again
    written = {}
    for snap, history, target in snapshots_clicks(lake.validated_dir(root), snapshots):
        articles = known_at(catalogue, delivered, snap.cutoff_hour)
        # A labelled snapshot only ever scores the users of its target window: their user tables suffice
        # (dozens of hourly snapshots would otherwise each store every user's table and profile).
        labelled = len(target) > 0
        tables = fit_tables(
            history, articles, embeddings, snap.cutoff_ms, params, requests=target if labelled else None,
            only_users=target[C.USER_ID].unique() if labelled else None, user_side=user_side,
        )
        written[snap.name] = tables.save(Path(out_dir) / snap.name)
    return written


def main(argv: list[str] | None = None) -> int:
    from pipelines.cluster import connect, partition_count
    from pipelines.config import parse_step, step_parser
    from pipelines.split import read_snapshots

    parser = step_parser("features", __doc__, data_root="dataset root with raw/ and validated/")
    parser.add_argument("--split", type=Path, required=True, help="snapshot file written by `newsrec split`")
    parser.add_argument("--out", type=Path, required=True, help="folder for <snapshot>/ feature tables")
    args, config = parse_step(parser, argv)
    params, dask_params = config["features"], config["dask"]
    with connect(dask_params) as client:
        user_side = fit_user_side if client is None else \
            PartitionedUserSide(client, partition_count(client, dask_params))
        written = build_snapshot_features(args.data_root, read_snapshots(args.split), args.out, params,
                                          user_side=user_side)
    for name, path in written.items():
        print(f"{name:<12} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
