"""Candidate generation: fit an index at a cutoff, then query it for a frame of users.

`CandidateIndex.fit` reads the hourly aggregates before the cutoff and the article catalogue, and
keeps what the query side needs: the pool of recommendable articles (published before the cutoff
and either fresh or still being clicked), their L2-normalised embeddings in a faiss inner-product
index, each article's nearest neighbours ("similar articles"), each article's top co-read
neighbours (time-decayed), and popularity (all history) and trend (decayed) orders. `save`/`load`
round-trip it through a folder, which is what the serving bundle carries.

`candidates(user_clicks)` proposes, per user, up to n articles from each source:

    emb    faiss kNN of the user's profile (recency-weighted mean of clicked embeddings) over the pool,
           with a small trend prior (emb_trend_boost; 0 = pure cosine)
    cocl   the co-read neighbours of the user's last clicks, weighted by how recent each click is
    pop    the pool's most clicked articles (all history before the cutoff)
    trend  the pool's articles by decayed recent clicks (newest first among ties: fresh stories surface)

and returns one row per (user, article) with each source's score and rank plus a reciprocal-rank
fusion. Articles the user already read are never proposed; users without clicks get pop and trend
only. Everything is vectorised over users, so the API calls the same code for one user.

`newsrec candidates` runs it for every snapshot of the split file, labels each row with the
snapshot's target clicks and writes candidate recall per source for all, warm and cold users.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.columns import (
    ARTICLE_A,
    ARTICLE_B,
    ARTICLE_ID,
    CANDIDATE_SOURCES,
    CATEGORY_ID,
    CLICK_ARTICLE_ID,
    CLICK_TIMESTAMP,
    CLICKS,
    CREATED_AT_TS,
    EMBEDDINGS_FILE,
    FUSED,
    HOUR_MS,
    LABEL,
    METADATA_FILE,
    RANK,
    SCORE,
    USER_ID,
    WARM,
    WEIGHT,
    WORDS_COUNT,
    rank_col,
    score_col,
)
from pipelines.config import load_params

QUERY_COLUMNS = [USER_ID, CLICK_ARTICLE_ID, CLICK_TIMESTAMP]
_SOURCE_COLUMNS = [f(s) for s in [*CANDIDATE_SOURCES, FUSED] for f in (score_col, rank_col)]
OUTPUT_COLUMNS = [USER_ID, ARTICLE_ID, *_SOURCE_COLUMNS]
TREND = "trend"
LAST_CLICK_HOUR = "last_click_hour"
_FILES = {
    "pool": "pool.parquet",
    "coclick": "coclick.parquet",
    "similar": "similar.parquet",
    "emb": "embeddings.npy",
    "emb_ids": "embedding_ids.npy",
    "meta": "meta.json",
}


def _normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def _block_rank(users: np.ndarray) -> np.ndarray:
    """0-based position of each row inside its run of equal consecutive `users` values."""
    if len(users) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    run = np.cumsum(np.r_[True, users[1:] != users[:-1]]) - 1
    return np.arange(len(users)) - starts[run]


class _PairKeys:
    """(user, article) pairs as one int64 so membership tests are a hash lookup, not a merge."""

    def __init__(self, users: np.ndarray, articles: np.ndarray, article_bound: int):
        self.m = int(article_bound) + 1
        top = int(users.max()) if len(users) else 0
        if top >= (2**62) // self.m:
            raise ValueError(
                f"user ids up to {top} with article ids up to {article_bound} overflow the pair key"
            )
        self.keys = pd.Index(self.encode(users, articles)).unique()

    def encode(self, users: np.ndarray, articles: np.ndarray) -> np.ndarray:
        return users.astype(np.int64) * self.m + articles.astype(np.int64)

    def contains(self, users: np.ndarray, articles: np.ndarray) -> np.ndarray:
        if len(self.keys) == 0:
            return np.zeros(len(users), dtype=bool)
        return pd.Index(self.encode(users, articles)).isin(self.keys)


def _top_excluding(
    fetch: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray]],
    users: np.ndarray,
    read: _PairKeys,
    n: int,
    max_depth: int,
) -> pd.DataFrame:
    """Each user's top n unread items from a ranked source.

    `fetch(users, depth)` returns (user, article, score) arrays with each user's first `depth` items in
    order, users in the given order. Depth starts just above n and grows only for users whose read
    articles crowd the list, so heavy readers never make everyone's list longer.
    """
    out, todo, depth = [], np.asarray(users), min(n + 16, max_depth)
    while len(todo) and depth > 0:
        u, a, s = fetch(todo, depth)
        keep = ~read.contains(u, a)
        u, a, s = u[keep], a[keep], s[keep]
        r = _block_rank(u)
        got = pd.Series(r < n).groupby(u).sum().reindex(todo, fill_value=0).to_numpy()
        short = todo[(got < n)] if depth < max_depth else todo[:0]
        ok = (r < n) & ~np.isin(u, short)
        out.append(pd.DataFrame({USER_ID: u[ok], ARTICLE_ID: a[ok], SCORE: s[ok], RANK: r[ok] + 1}))
        todo, depth = short, min(depth * 4, max_depth)
    if not out:
        return pd.DataFrame(
            {
                USER_ID: np.zeros(0, np.int64),
                ARTICLE_ID: np.zeros(0, np.int64),
                SCORE: np.zeros(0, np.float64),
                RANK: np.zeros(0, np.int64),
            }
        )
    return pd.concat(out, ignore_index=True)


@dataclass
class CandidateIndex:
    """What the candidate sources know at `cutoff_ms`; see the module docstring."""

    cutoff_ms: int
    cutoff_hour: int
    epoch_ms: int
    params: dict
    pool: pd.DataFrame  # one row per recommendable article (article_id, metadata, popularity columns)
    coclick: pd.DataFrame  # article_a, article_b (in the pool), weight, rank
    emb_ids: np.ndarray  # sorted ids of the articles whose embeddings are kept (pool + ever clicked)
    emb: np.ndarray = field(repr=False)  # float32 [len(emb_ids), dim], rows L2-normalised
    similar: pd.DataFrame | None = None  # article_a, article_b, score, rank for every pool article
    _faiss: Any = field(default=None, repr=False, compare=False)
    # Derived once per index, not per query (the API queries one user at a time): sorted source orders and
    # the co-click table's row positions grouped by article_a.
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ---- fit -------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        data_root: str | Path,
        articles: pd.DataFrame,
        embeddings: np.ndarray,
        cutoff_ms: int,
        params: dict,
        epoch_ms: int,
    ) -> CandidateIndex:
        """Build the index from `<data_root>/aggregates` strictly before `cutoff_ms` (an hour boundary)."""
        from pipelines.aggregates import read_coclick, read_popularity

        offset = int(cutoff_ms) - int(epoch_ms)
        if offset % HOUR_MS:
            raise ValueError(f"cutoff {cutoff_ms} is not on an hour boundary of epoch {epoch_ms}")
        cutoff_hour = offset // HOUR_MS
        if embeddings.ndim != 2 or embeddings.shape[0] <= int(articles[ARTICLE_ID].max()):
            raise ValueError(
                f"embeddings of shape {embeddings.shape} do not cover article ids up to "
                f"{int(articles[ARTICLE_ID].max())}"
            )
        windows = [int(w) for w in params["windows"]]
        pop = read_popularity(data_root, cutoff_hour, windows, float(params["trend_half_life_hours"]))
        available = articles.loc[articles[CREATED_AT_TS] < cutoff_ms]
        fresh = available[CREATED_AT_TS] >= cutoff_ms - int(params["pool_fresh_hours"]) * HOUR_MS
        active_ids = pop.loc[
            pop[LAST_CLICK_HOUR] >= cutoff_hour - int(params["pool_active_hours"]), ARTICLE_ID
        ]
        pool = available.loc[fresh | available[ARTICLE_ID].isin(active_ids)]
        pool = pool[[ARTICLE_ID, CATEGORY_ID, CREATED_AT_TS, WORDS_COUNT]].merge(
            pop, on=ARTICLE_ID, how="left"
        )
        count_cols = [c for c in pop.columns if c not in (ARTICLE_ID, TREND, LAST_CLICK_HOUR)]
        pool[count_cols] = pool[count_cols].fillna(0).astype("int64")
        pool[TREND] = pool[TREND].fillna(0.0)
        pool[LAST_CLICK_HOUR] = pool[LAST_CLICK_HOUR].fillna(-1).astype("int64")
        pool = pool.sort_values(ARTICLE_ID).reset_index(drop=True)

        # Embeddings of everything a user's history can point at (clicked before the cutoff) plus the
        # pool: enough for profiles and kNN, a fraction of the catalogue at Globo scale.
        known = pop[ARTICLE_ID].to_numpy()
        known = known[(known >= 0) & (known < embeddings.shape[0])]
        emb_ids = np.union1d(pool[ARTICLE_ID].to_numpy(), known).astype(np.int64)
        cocl = read_coclick(
            data_root,
            cutoff_hour,
            float(params["cocl_half_life_hours"]),
            int(params["cocl_top_k"]),
            targets=pool[ARTICLE_ID].to_numpy(),
        )
        index = cls(
            cutoff_ms=int(cutoff_ms),
            cutoff_hour=int(cutoff_hour),
            epoch_ms=int(epoch_ms),
            params=dict(params),
            pool=pool,
            coclick=cocl,
            emb_ids=emb_ids,
            emb=_normalise(np.asarray(embeddings[emb_ids], dtype=np.float32)),
        )
        index.similar = index.similar_articles(pool[ARTICLE_ID].to_numpy(), int(params["similar_k"]))
        return index

    # ---- persistence -----------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Write the index to a folder (parquet tables, .npy embeddings, meta.json); faiss is rebuilt on load."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.pool.to_parquet(out / _FILES["pool"], index=False)
        self.coclick.to_parquet(out / _FILES["coclick"], index=False)
        (self.similar if self.similar is not None else pd.DataFrame()).to_parquet(
            out / _FILES["similar"], index=False
        )
        np.save(out / _FILES["emb"], self.emb)
        np.save(out / _FILES["emb_ids"], self.emb_ids)
        meta = {
            "cutoff_ms": self.cutoff_ms,
            "cutoff_hour": self.cutoff_hour,
            "epoch_ms": self.epoch_ms,
            "params": self.params,
            "pool_size": len(self.pool),
            "embeddings": len(self.emb_ids),
            "coclick_pairs": len(self.coclick),
        }
        (out / _FILES["meta"]).write_text(json.dumps(meta, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, in_dir: str | Path) -> CandidateIndex:
        """Read an index written by `save`."""
        src = Path(in_dir)
        if not (src / _FILES["meta"]).exists():
            raise FileNotFoundError(
                f"no candidate index in {src} (meta.json missing): run `newsrec candidates`"
            )
        meta = json.loads((src / _FILES["meta"]).read_text())
        similar = pd.read_parquet(src / _FILES["similar"])
        return cls(
            cutoff_ms=int(meta["cutoff_ms"]),
            cutoff_hour=int(meta["cutoff_hour"]),
            epoch_ms=int(meta["epoch_ms"]),
            params=meta["params"],
            pool=pd.read_parquet(src / _FILES["pool"]),
            coclick=pd.read_parquet(src / _FILES["coclick"]),
            emb_ids=np.load(src / _FILES["emb_ids"]),
            emb=np.load(src / _FILES["emb"]),
            similar=similar if len(similar.columns) else None,
        )

    # ---- query helpers ---------------------------------------------------------------------------
    @property
    def pool_ids(self) -> np.ndarray:
        return self.pool[ARTICLE_ID].to_numpy()

    def _faiss_index(self):
        """Exact inner-product search over the pool, built on first use.

        Each pool vector is its normalised embedding plus one extra coordinate, emb_trend_boost *
        log1p(trend). A query with 0 there scores pure cosine (similar articles); a user profile with 1
        there scores cosine + boost * log1p(trend), so the kNN prefers what is being read now among
        equally close articles, in the same single exact search.
        """
        if self._faiss is None:
            import faiss

            idx = faiss.IndexFlatIP(self.emb.shape[1] + 1)
            if len(self.pool):
                prior = float(self.params["emb_trend_boost"]) * np.log1p(self.pool[TREND].to_numpy())
                vectors = np.hstack(
                    [
                        self.emb[np.searchsorted(self.emb_ids, self.pool_ids)],
                        prior[:, None].astype(np.float32),
                    ]
                )
                idx.add(np.ascontiguousarray(vectors, dtype=np.float32))
            self._faiss = idx
        return self._faiss

    def _emb_rows(self, article_ids: np.ndarray) -> np.ndarray:
        """Row of each article in `emb`, -1 where the index holds no embedding for it."""
        if len(self.emb_ids) == 0:
            return np.full(len(article_ids), -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.emb_ids, article_ids), 0, len(self.emb_ids) - 1)
        return np.where(self.emb_ids[pos] == article_ids, pos, -1)

    def _search(self, vectors: np.ndarray, depth: int, prior: float) -> tuple[np.ndarray, np.ndarray]:
        """faiss search in bounded chunks, queries weighting the trend prior by `prior` (0 or 1); returns
        (scores, pool article ids), -1 ids where the pool ran out."""
        idx = self._faiss_index()
        depth = min(depth, idx.ntotal)
        scores, rows = [], []
        for start in range(0, len(vectors), 4096):
            chunk = vectors[start : start + 4096]
            query = np.hstack([chunk, np.full((len(chunk), 1), prior, dtype=np.float32)])
            d, i = idx.search(np.ascontiguousarray(query, dtype=np.float32), depth)
            scores.append(d)
            rows.append(i)
        d, i = np.vstack(scores), np.vstack(rows)
        return d, np.where(i >= 0, self.pool_ids[np.clip(i, 0, None)], -1)

    @staticmethod
    def _check_clicks(user_clicks: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in QUERY_COLUMNS if c not in user_clicks.columns]
        if missing:
            raise ValueError(f"user clicks frame lacks column(s) {missing}; needs {QUERY_COLUMNS}")
        frame = user_clicks[QUERY_COLUMNS]
        if frame.isna().any().any():
            raise ValueError("user clicks frame has missing values")
        return frame.astype("int64")

    # ---- public queries --------------------------------------------------------------------------
    def user_profile(self, user_clicks: pd.DataFrame) -> tuple[pd.Index, np.ndarray]:
        """Each user's L2-normalised recency-weighted mean of clicked-article embeddings.

        Uses the user's `profile_clicks` latest clicks; weight halves every `profile_half_life_hours`
        before the user's own last click (relative, so no clock is needed: online and offline agree).
        Users whose clicked articles have no embedding in the index are left out. Returns (user ids
        sorted, matrix [users, dim]).
        """
        from scipy.sparse import csr_matrix

        uc = self._check_clicks(user_clicks).sort_values([USER_ID, CLICK_TIMESTAMP], ascending=[True, False])
        uc = uc[_block_rank(uc[USER_ID].to_numpy()) < int(self.params["profile_clicks"])]
        rows = self._emb_rows(uc[CLICK_ARTICLE_ID].to_numpy())
        uc, rows = uc[rows >= 0], rows[rows >= 0]
        if len(uc) == 0:
            return pd.Index(np.zeros(0, np.int64), name=USER_ID), np.zeros((0, self.emb.shape[1]), np.float32)
        users, inv = np.unique(uc[USER_ID].to_numpy(), return_inverse=True)
        ts = uc[CLICK_TIMESTAMP].to_numpy()
        last = pd.Series(ts).groupby(inv).transform("max").to_numpy()
        half_life_ms = float(self.params["profile_half_life_hours"]) * HOUR_MS
        weights = np.power(0.5, (last - ts) / half_life_ms)
        mix = csr_matrix((weights, (inv, rows)), shape=(len(users), len(self.emb_ids)))
        return pd.Index(users, name=USER_ID), _normalise(np.asarray(mix @ self.emb))

    def similar_articles(self, article_ids: Sequence[int], k: int) -> pd.DataFrame:
        """Top k pool articles by embedding cosine for each given article (itself excluded): article_a,
        article_b, score, rank. Articles the index has no embedding for get no rows."""
        ids = np.unique(np.asarray(article_ids, dtype=np.int64))
        rows = self._emb_rows(ids)
        ids, rows = ids[rows >= 0], rows[rows >= 0]
        empty = pd.DataFrame(
            {
                ARTICLE_A: np.zeros(0, np.int64),
                ARTICLE_B: np.zeros(0, np.int64),
                SCORE: np.zeros(0, np.float32),
                RANK: np.zeros(0, np.int64),
            }
        )
        if len(ids) == 0 or len(self.pool) == 0 or k < 1:
            return empty
        d, nb = self._search(self.emb[rows], k + 1, prior=0.0)
        a = np.repeat(ids, d.shape[1])
        b, s = nb.ravel(), d.ravel()
        ok = (b >= 0) & (b != a)
        a, b, s = a[ok], b[ok], s[ok]
        r = _block_rank(a)
        keep = r < k
        return pd.DataFrame({ARTICLE_A: a[keep], ARTICLE_B: b[keep], SCORE: s[keep], RANK: r[keep] + 1})

    def _emb_source(self, clicks: pd.DataFrame, read: _PairKeys, n: int) -> pd.DataFrame:
        users, profiles = self.user_profile(clicks)
        row_of = pd.Series(np.arange(len(users)), index=users)

        def fetch(todo: np.ndarray, depth: int):
            d, nb = self._search(profiles[row_of.loc[todo].to_numpy()], depth, prior=1.0)
            u = np.repeat(todo, d.shape[1])
            b, s = nb.ravel(), d.ravel()
            ok = b >= 0
            return u[ok], b[ok], s[ok]

        return _top_excluding(fetch, users.to_numpy(), read, n, len(self.pool))

    def _cocl_source(self, clicks: pd.DataFrame, read: _PairKeys, n: int) -> pd.DataFrame:
        recent = clicks.sort_values([USER_ID, CLICK_TIMESTAMP], ascending=[True, False])
        recent = recent.drop_duplicates([USER_ID, CLICK_ARTICLE_ID])
        pos = _block_rank(recent[USER_ID].to_numpy())
        keep = pos < int(self.params["recent_clicks"])
        recent = pd.DataFrame(
            {
                USER_ID: recent[USER_ID].to_numpy()[keep],
                ARTICLE_A: recent[CLICK_ARTICLE_ID].to_numpy()[keep],
                "w": np.power(float(self.params["cocl_recency"]), pos[keep]),
            }
        )
        pairs = recent.merge(self._coclick_rows(recent[ARTICLE_A].to_numpy()), on=ARTICLE_A, how="inner")
        pairs = pairs[~read.contains(pairs[USER_ID].to_numpy(), pairs[ARTICLE_B].to_numpy())]
        scored = (
            pairs.assign(**{SCORE: pairs["w"] * pairs[WEIGHT]})
            .groupby([USER_ID, ARTICLE_B], sort=False)[SCORE]
            .sum()
            .reset_index()
            .sort_values([USER_ID, SCORE, ARTICLE_B], ascending=[True, False, True])
        )
        r = _block_rank(scored[USER_ID].to_numpy())
        scored = scored.assign(**{RANK: r + 1})[r < n]
        return scored.rename(columns={ARTICLE_B: ARTICLE_ID})[[USER_ID, ARTICLE_ID, SCORE, RANK]]

    def _global_source(
        self, order: pd.DataFrame, score: str, users: np.ndarray, read: _PairKeys, n: int
    ) -> pd.DataFrame:
        ids, scores = order[ARTICLE_ID].to_numpy(), order[score].to_numpy(dtype=np.float64)

        def fetch(todo: np.ndarray, depth: int):
            return np.repeat(todo, depth), np.tile(ids[:depth], len(todo)), np.tile(scores[:depth], len(todo))

        return _top_excluding(fetch, users, read, n, len(ids))

    def _coclick_rows(self, articles: np.ndarray) -> pd.DataFrame:
        """The co-click rows whose article_a is in `articles`, in the table's own order (a slice per article
        instead of a join against the whole table)."""
        if "cocl_order" not in self._cache:
            a = self.coclick[ARTICLE_A].to_numpy()
            order = np.argsort(a, kind="stable")
            self._cache["cocl_order"] = (a[order], order)
        keys, order = self._cache["cocl_order"]
        wanted = np.unique(articles)
        lo, hi = np.searchsorted(keys, wanted, "left"), np.searchsorted(keys, wanted, "right")
        rows = np.sort(np.concatenate([order[a:b] for a, b in zip(lo, hi)])) if len(wanted) else order[:0]
        return self.coclick[[ARTICLE_A, ARTICLE_B, WEIGHT]].iloc[rows]

    def popular(self) -> pd.DataFrame:
        """The pool by all-history clicks (ties: trend, then newest)."""
        if "popular" not in self._cache:
            self._cache["popular"] = self.pool.sort_values(
                [CLICKS, TREND, CREATED_AT_TS, ARTICLE_ID], ascending=[False, False, False, True]
            )
        return self._cache["popular"]

    def trending(self) -> pd.DataFrame:
        """The pool by decayed recent clicks (ties: newest first, so unclicked fresh stories lead the tail)."""
        if "trending" not in self._cache:
            self._cache["trending"] = self.pool.sort_values([TREND, CREATED_AT_TS, ARTICLE_ID],
                                                            ascending=[False, False, True])
        return self._cache["trending"]

    def candidates(
        self,
        user_clicks: pd.DataFrame,
        users: Sequence[int] | None = None,
        n: int | dict[str, int] | None = None,
    ) -> pd.DataFrame:
        """One row per (user, proposed article) for `users` (default: every user in `user_clicks`).

        `user_clicks` (user_id, click_article_id, click_timestamp) is each user's history: it drives emb
        and cocl and every clicked article is excluded. `n` is the list length per source (an int for all,
        or a dict; default params `per_source`). Columns: OUTPUT_COLUMNS (score NaN / rank 0 where a
        source did not propose the article), sorted by user then fused rank.
        """
        clicks = self._check_clicks(user_clicks)
        users_arr = (
            np.unique(clicks[USER_ID].to_numpy())
            if users is None
            else np.unique(np.asarray(users, dtype=np.int64))
        )
        clicks = clicks[clicks[USER_ID].isin(users_arr)]
        sizes = (
            {s: int(v) for s, v in self.params["per_source"].items()}
            if n is None
            else (
                {s: int(n) for s in CANDIDATE_SOURCES}
                if isinstance(n, (int, np.integer))
                else {s: int(v) for s, v in n.items()}
            )
        )
        unknown = set(sizes) - set(CANDIDATE_SOURCES)
        if unknown:
            raise ValueError(
                f"unknown candidate source(s) {sorted(unknown)}; sources are {CANDIDATE_SOURCES}"
            )
        bound = int(
            max(
                clicks[CLICK_ARTICLE_ID].max() if len(clicks) else 0,
                self.emb_ids.max() if len(self.emb_ids) else 0,
            )
        )
        read = _PairKeys(clicks[USER_ID].to_numpy(), clicks[CLICK_ARTICLE_ID].to_numpy(), bound)

        parts: dict[str, pd.DataFrame] = {}
        if sizes.get("emb", 0) > 0 and len(clicks) and len(self.pool):
            parts["emb"] = self._emb_source(clicks, read, sizes["emb"])
        if sizes.get("cocl", 0) > 0 and len(clicks) and len(self.coclick):
            parts["cocl"] = self._cocl_source(clicks, read, sizes["cocl"])
        if sizes.get("pop", 0) > 0 and len(self.pool):
            parts["pop"] = self._global_source(self.popular(), CLICKS, users_arr, read, sizes["pop"])
        if sizes.get("trend", 0) > 0 and len(self.pool):
            parts["trend"] = self._global_source(self.trending(), TREND, users_arr, read, sizes["trend"])
        return self._merge(parts, read)

    def _merge(self, parts: dict[str, pd.DataFrame], read: _PairKeys) -> pd.DataFrame:
        """Long per-source lists -> one wide row per (user, article) with reciprocal-rank fusion."""
        order = [s for s in CANDIDATE_SOURCES if s in parts and len(parts[s])]
        if not order:
            dtypes = {USER_ID: "int64", ARTICLE_ID: "int64"}
            dtypes.update({c: "int32" if c.endswith(RANK) else "float32" for c in _SOURCE_COLUMNS})
            dtypes[score_col(FUSED)] = "float64"
            return pd.DataFrame({c: pd.Series(dtype=dtypes[c]) for c in OUTPUT_COLUMNS})
        keys = np.concatenate(
            [read.encode(parts[s][USER_ID].to_numpy(), parts[s][ARTICLE_ID].to_numpy()) for s in order]
        )
        codes, uniq = pd.factorize(keys)
        # Columns collected as arrays and framed once: inserting them one by one costs more than the work.
        cols = {USER_ID: uniq // read.m, ARTICLE_ID: uniq % read.m}
        weights = self.params["fusion_weights"]
        rrf_k = float(self.params["rrf_k"])
        fused = np.zeros(len(uniq))
        offset = 0
        for s in CANDIDATE_SOURCES:
            # float32/int32: at Globo scale a snapshot has tens of millions of candidate rows
            sc = np.full(len(uniq), np.nan, dtype=np.float32)
            rk = np.zeros(len(uniq), dtype=np.int32)
            if s in order:
                p = parts[s]
                c = codes[offset : offset + len(p)]
                offset += len(p)
                sc[c] = p[SCORE].to_numpy()
                rk[c] = p[RANK].to_numpy()
                fused[c] += float(weights.get(s, 0.0)) / (rrf_k + p[RANK].to_numpy())
            cols[score_col(s)] = sc
            cols[rank_col(s)] = rk
        cols[score_col(FUSED)] = fused
        out = pd.DataFrame(cols)
        out = out.sort_values(
            [USER_ID, score_col(FUSED), ARTICLE_ID], ascending=[True, False, True], kind="mergesort"
        )
        out[rank_col(FUSED)] = (_block_rank(out[USER_ID].to_numpy()) + 1).astype(np.int32)
        return out.reset_index(drop=True)[OUTPUT_COLUMNS]


# ---- the stage -----------------------------------------------------------------------------------
def label_candidates(candidates: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """Add `label` (1 if the user clicked the article in the target window, per `eval_targets`)."""
    hit = targets[[USER_ID, ARTICLE_ID]].drop_duplicates().assign(**{LABEL: 1})
    out = candidates.merge(hit, on=[USER_ID, ARTICLE_ID], how="left")
    out[LABEL] = out[LABEL].fillna(0).astype("int8")
    return out


def candidate_report(candidates: pd.DataFrame, targets: pd.DataFrame, recall_at: Sequence[int]) -> dict:
    """Candidate recall per source, for the union of all sources and for the fused list cut at each N,
    for all / warm / cold users of `targets` (with its `warm` column); also the mean list length."""
    from pipelines.metrics import candidate_recall

    segments = {"all": targets, "warm": targets[targets[WARM]], "cold": targets[~targets[WARM]]}
    report = {}
    for seg, truth in segments.items():
        users = truth[USER_ID].unique()
        cands = candidates[candidates[USER_ID].isin(users)]
        row: dict[str, float] = {"users": len(users)}
        if len(users):
            for s in CANDIDATE_SOURCES:
                row[f"{s}"] = float(candidate_recall(cands[cands[rank_col(s)] > 0], truth).mean())
            row["union"] = float(candidate_recall(cands, truth).mean())
            for k in recall_at:
                row[f"fused@{int(k)}"] = float(
                    candidate_recall(cands[cands[rank_col(FUSED)] <= int(k)], truth).mean()
                )
            row["mean_list_length"] = float(cands.groupby(USER_ID).size().reindex(users, fill_value=0).mean())
        report[seg] = row
    return report


def sample_users(users: np.ndarray, max_users: int) -> np.ndarray:
    """At most `max_users` of `users`, chosen by a fixed hash of the id: deterministic, unbiased by activity,
    and the same user is kept in every snapshot that keeps them."""
    users = np.unique(np.asarray(users, dtype=np.int64))
    if len(users) <= max_users:
        return users
    with np.errstate(over="ignore"):
        mixed = users.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return np.sort(users[np.argsort(mixed ^ (mixed >> np.uint64(29)), kind="stable")[:max_users]])


def build_candidates(
    data_root: str | Path,
    snapshots: Sequence,
    out_dir: str | Path,
    index_dir: str | Path,
    params: dict,
    epoch_ms: int,
) -> dict[str, dict]:
    """For each snapshot: fit and save its index under `<index_dir>/<name>/`; for labelled snapshots also
    write `<out_dir>/<name>.parquet` (candidates of every evaluated user, with `label`; roles listed in
    params `max_users` keep a fixed sample of that many users). Returns the candidate-recall report per
    labelled snapshot."""
    from pipelines.features import read_articles, read_embeddings
    from pipelines.split import eval_targets, snapshot_clicks

    root = Path(data_root)
    articles = read_articles(root / "raw" / METADATA_FILE)
    embeddings = read_embeddings(root / "raw" / EMBEDDINGS_FILE)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    reports = {}
    for snap in snapshots:
        index = CandidateIndex.fit(root, articles, embeddings, snap.cutoff_ms, params, epoch_ms)
        index.save(Path(index_dir) / snap.name)
        if snap.role == "serve":
            continue
        history, target = snapshot_clicks(root / "validated" / "clicks", snap)
        targets = eval_targets(history, target, articles, snap.cutoff_ms)
        cap = (params.get("max_users") or {}).get(snap.role)
        users = sample_users(targets[USER_ID].unique(), int(cap)) if cap else targets[USER_ID].unique()
        targets = targets[targets[USER_ID].isin(users)]
        cands = index.candidates(history[history[USER_ID].isin(users)], users=users)
        cands = label_candidates(cands, targets)
        tmp = Path(out_dir) / f".{snap.name}.parquet.tmp"
        cands.to_parquet(tmp, index=False)
        tmp.replace(Path(out_dir) / f"{snap.name}.parquet")
        reports[snap.name] = candidate_report(cands, targets, params["recall_at"])
    return reports


def main(argv: list[str] | None = None) -> int:
    from pipelines.split import read_snapshots

    parser = argparse.ArgumentParser(prog="newsrec candidates", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root", type=Path, required=True, help="data root with raw/, validated/, aggregates/"
    )
    parser.add_argument("--split", type=Path, required=True, help="snapshot file written by `newsrec split`")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for <snapshot>.parquet candidate lists"
    )
    parser.add_argument(
        "--index-out", type=Path, required=True, help="folder for <snapshot>/ candidate indexes"
    )
    parser.add_argument("--metrics", type=Path, required=True, help="candidate recall report to write (JSON)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params("candidates", args.params)
    epoch_ms = int(load_params("data", args.params)["epoch_ms"])
    try:
        reports = build_candidates(
            args.data_root, read_snapshots(args.split), args.out, args.index_out, params, epoch_ms
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"newsrec candidates: {exc}", file=sys.stderr)
        return 1
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(reports, indent=2) + "\n")
    for name, rep in reports.items():
        for seg, row in rep.items():
            cells = "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
            print(f"{name:<12} {seg:<5} {cells}")
    print(f"wrote {args.out}, {args.index_out}, {args.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
