"""Candidate generation: fit an index at a cutoff, then query it for a frame of users.

`CandidateIndex.fit` reads the hourly aggregates before the cutoff and the article catalogue, and
keeps what the query side needs: the pool of recommendable articles (published before the cutoff
and either fresh or still being clicked), their L2-normalised embeddings in a faiss inner-product
index, each article's nearest neighbours ("similar articles"), each article's top co-read
neighbours (time-decayed), and popularity (all history) and trend (decayed) orders. `save`/`load`
round-trip it through a folder, which is what the serving bundle carries.

`candidates(user_clicks)` proposes, per user, up to n articles (params `per_source`) from each source of
`pipelines.sources` (emb, cocl, pop, trend, learned: one module each) and returns one row per (user, article)
with each source's score and rank, a weighted reciprocal-rank fusion (params `fusion_weights`, `rrf_k`) and
the columns a source scores for every row (the learned model's `learned_sim`). Articles the user already read
are never proposed; users without clicks get the sources that need no history (pop, trend) only. Everything
is vectorised over users with numpy (no per-row Python, no pandas inside a query), so the same code serves
a snapshot of 20,000 users offline and one user per API request.

`newsrec candidates` runs it for every snapshot of the split file, labels each row with the
snapshot's target clicks and writes candidate recall per source for all, warm and cold users.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import lake
from pipelines.columns import (
    ARTICLE_A,
    ARTICLE_B,
    ARTICLE_ID,
    CATEGORY_ID,
    CLICK_ARTICLE_ID,
    CLICK_TIMESTAMP,
    CLICKS,
    CREATED_AT_TS,
    FUSED,
    HOUR_MS,
    LABEL,
    LEARNED,
    RANK,
    SCORE,
    TREND,
    USER_ID,
    WARM,
    WEIGHT,
    WORDS_COUNT,
    rank_col,
    score_col,
)
from pipelines.config import parse_step, step_parser
from pipelines.errors import InputError, MissingInputError
from pipelines.sources import base as sources
from pipelines.sources.base import (
    CandidateSource,
    PairKeys,
    Query,
    Ranked,
    block_rank,
    dense_users,
    sorted_positions,
    top_excluding,
)

QUERY_COLUMNS = [USER_ID, CLICK_ARTICLE_ID, CLICK_TIMESTAMP]
_SOURCE_COLUMNS = [*sources.source_columns(), score_col(FUSED), rank_col(FUSED)]
_MERGED_COLUMNS = [USER_ID, ARTICLE_ID, *_SOURCE_COLUMNS]
OUTPUT_COLUMNS = [*_MERGED_COLUMNS, *sources.row_columns()]
PROFILE_CHUNK_USERS = 4096
LIST_BLOCK_USERS = 4096  # users whose labelled candidate lists the stage makes and writes at once
LAST_CLICK_HOUR = "last_click_hour"
_FILES = {
    "pool": "pool.parquet",
    "coclick": "coclick.parquet",
    "similar": "similar.parquet",
    "emb": "embeddings.npy",
    "emb_ids": "embedding_ids.npy",
    "emb_meta": "embedding_meta.npy",
    "meta": "meta.json",
}  # and a folder <source name>/ for each source that saves state of its own (the learned model)


def _normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def top_unread(
    order_ids: np.ndarray,
    order_scores: np.ndarray,
    users: np.ndarray,
    user_clicks: pd.DataFrame | Mapping[str, np.ndarray],
    n: int,
) -> pd.DataFrame:
    """One global ranked list cut per user: each of `users` gets the first `n` of `order_ids` (best first)
    that they have not read in `user_clicks`; user_id, article_id, score, rank (1-based)."""
    ids = np.asarray(order_ids, dtype=np.int64)
    scores = np.asarray(order_scores, dtype=np.float64)
    users = np.unique(np.asarray(users, dtype=np.int64))
    clicked_u = np.asarray(user_clicks[USER_ID], dtype=np.int64)
    clicked_a = np.asarray(user_clicks[CLICK_ARTICLE_ID], dtype=np.int64)
    user_ids, (users, clicked_u) = dense_users(users, clicked_u)
    bound = int(max(ids.max() if len(ids) else 0, clicked_a.max() if len(clicked_a) else 0))
    read = PairKeys(clicked_u, clicked_a, bound)

    def fetch(todo: np.ndarray, depth: int):
        return np.repeat(todo, depth), np.tile(ids[:depth], len(todo)), np.tile(scores[:depth], len(todo))

    got = top_excluding(fetch, users, read, int(n), len(ids))
    return pd.DataFrame({USER_ID: user_ids[got.user], ARTICLE_ID: got.article, SCORE: got.score, RANK: got.rank})


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
    # category id and words count of each emb_ids row (-1 / 0 where unknown): the learned user tower's inputs
    emb_meta: np.ndarray | None = field(default=None, repr=False)
    # The fitted sources by name (pipelines.sources), set by fit/load: those this index carries.
    sources: dict[str, CandidateSource] = field(default_factory=dict, repr=False, compare=False)
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
        similar: bool = True,
        given: Mapping[str, Any] | None = None,
        normalised: bool = False,
    ) -> CandidateIndex:
        """Build the index from `<data_root>/aggregates` strictly before `cutoff_ms` (an hour boundary).

        `similar=False` skips the "similar articles" table (only the API's article page reads it); `given`
        (source name -> what that source fits from, e.g. {"learned": a pipelines.learned.LearnedModel}) is
        handed to each source's fit; a source given nothing fits from the index alone or is left out.
        `normalised`: `embeddings` are already `features.normalise_embeddings`' rows (a caller that holds only
        that copy), taken as they are: the same values the index would compute from the raw rows."""
        sources.check_names(params["per_source"], "candidates.per_source")
        sources.check_names(params["fusion_weights"], "candidates.fusion_weights")
        from pipelines.aggregates import read_coclick, read_popularity

        offset = int(cutoff_ms) - int(epoch_ms)
        if offset % HOUR_MS:
            raise InputError(f"cutoff {cutoff_ms} is not on an hour boundary of epoch {epoch_ms}")
        cutoff_hour = offset // HOUR_MS
        if embeddings.ndim != 2 or embeddings.shape[0] <= int(articles[ARTICLE_ID].max()):
            raise InputError(
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
        meta_ids = articles[ARTICLE_ID].to_numpy(np.int64)
        by_id = np.argsort(meta_ids, kind="stable")
        at = sorted_positions(meta_ids[by_id], emb_ids)
        rows = np.where(at >= 0, by_id[np.maximum(at, 0)], -1) if len(meta_ids) else at
        emb_meta = np.stack([
            np.where(rows >= 0, articles[CATEGORY_ID].to_numpy(np.int64)[np.maximum(rows, 0)], -1),
            np.where(rows >= 0, articles[WORDS_COUNT].to_numpy(np.int64)[np.maximum(rows, 0)], 0),
        ]) if len(meta_ids) else np.stack([np.full(len(emb_ids), -1), np.zeros(len(emb_ids))]).astype(np.int64)
        index = cls(
            cutoff_ms=int(cutoff_ms),
            cutoff_hour=int(cutoff_hour),
            epoch_ms=int(epoch_ms),
            params=dict(params),
            pool=pool,
            coclick=cocl,
            emb_ids=emb_ids,
            emb=(np.asarray(embeddings[emb_ids], dtype=np.float32) if normalised
                 else _normalise(np.asarray(embeddings[emb_ids], dtype=np.float32))),
            emb_meta=emb_meta,
        )
        given = dict(given or {})
        sources.check_names(given, "the models given to the candidate index")
        index.sources = {s.name: fitted for s in sources.sources()
                         if (fitted := s.fit(index, given.get(s.name))) is not None}
        if similar:
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
        if self.emb_meta is not None:
            np.save(out / _FILES["emb_meta"], self.emb_meta)
        for name, source in self.sources.items():
            source.save(out / name)
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
            raise MissingInputError(
                f"no candidate index in {src} (meta.json missing): run `newsrec candidates`"
            )
        meta = json.loads((src / _FILES["meta"]).read_text())
        similar = pd.read_parquet(src / _FILES["similar"])
        index = cls(
            cutoff_ms=int(meta["cutoff_ms"]),
            cutoff_hour=int(meta["cutoff_hour"]),
            epoch_ms=int(meta["epoch_ms"]),
            params=meta["params"],
            pool=pd.read_parquet(src / _FILES["pool"]),
            coclick=pd.read_parquet(src / _FILES["coclick"]),
            emb_ids=np.load(src / _FILES["emb_ids"]),
            emb=np.load(src / _FILES["emb"]),
            similar=similar if len(similar.columns) else None,
            emb_meta=np.load(src / _FILES["emb_meta"]) if (src / _FILES["emb_meta"]).exists() else None,
        )
        index.sources = {s.name: loaded for s in sources.sources() if (loaded := s.load(index, src / s.name)) is not None}
        return index

    def given(self, name: str) -> Any:
        """What source `name` was fitted from (e.g. its model); None when the index does not carry it."""
        source = self.sources.get(name)
        return source.given if source is not None else None

    def with_given(self, name: str, given: Any) -> CandidateIndex:
        """This index with source `name` refitted from `given` (None: without that source). Its state is made
        here, once per index (at fit, at load, at each hourly swap in the API), never per request."""
        fitted = sources.by_name()[name].fit(self, given) if given is not None else None
        rest = {k: v for k, v in self.sources.items() if k != name}
        return dataclasses.replace(self, sources={**rest, **({name: fitted} if fitted is not None else {})})

    @property
    def learned(self) -> Any:
        """The learned model (pipelines.learned.LearnedModel) the index carries, None without one: the
        serving bundle keeps it apart from its index, as the ranker's own."""
        return self.given(LEARNED)

    def with_learned(self, model: Any) -> CandidateIndex:
        """This index with `model` (None: none) as its learned source (`with_given`)."""
        return self.with_given(LEARNED, model)

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

            # faiss picks its scoring kernel by batch size (BLAS for large batches); kernels round
            # differently, so one user's list (the API) would differ from the same user's in a batch
            # (offline) wherever scores nearly tie. One kernel for every batch size keeps them identical,
            # and is no slower here. (A process-wide setting: every index searches the same way.)
            faiss.cvar.distance_compute_blas_threshold = 2**31 - 1

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
    def _click_arrays(user_clicks: pd.DataFrame | Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """(user, article, timestamp) int64 arrays of a QUERY_COLUMNS frame (or columns by name); missing
        values are an error."""
        missing = [c for c in QUERY_COLUMNS if c not in user_clicks]
        if missing:
            raise InputError(f"user clicks frame lacks column(s) {missing}; needs {QUERY_COLUMNS}")
        arrays = []
        for col in QUERY_COLUMNS:
            values = np.asarray(user_clicks[col])
            if values.dtype.kind not in "iu" and pd.isna(values).any():
                raise InputError("user clicks frame has missing values")
            arrays.append(values.astype(np.int64, copy=False))
        return arrays[0], arrays[1], arrays[2]

    def _profiles(self, users: np.ndarray, articles: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`user_profile` on click arrays: (sorted user ids, profile matrix).

        Each profile is its user's weighted rows added one after another in a fixed order, so a user gets
        the same bits alone (the API) as in a batch of thousands (offline)."""
        order = np.lexsort((-ts, users))  # by user, newest click first (stable: ties keep their order)
        users, articles, ts = users[order], articles[order], ts[order]
        keep = block_rank(users) < int(self.params["profile_clicks"])
        rows = self._emb_rows(articles[keep])
        users, ts = users[keep][rows >= 0], ts[keep][rows >= 0]
        rows = rows[rows >= 0]
        if len(users) == 0:
            return np.zeros(0, np.int64), np.zeros((0, self.emb.shape[1]), np.float32)
        uniq, first, inv = np.unique(users, return_index=True, return_inverse=True)
        last = ts[first][inv]  # each user's first row is their newest click
        half_life_ms = float(self.params["profile_half_life_hours"]) * HOUR_MS
        weights = np.power(0.5, (last - ts) / half_life_ms)
        profiles = np.empty((len(uniq), self.emb.shape[1]), dtype=np.float32)
        bounds = np.append(first, len(users))
        for lo in range(0, len(uniq), PROFILE_CHUNK_USERS):  # bounded memory: a block of users at a time
            hi = min(lo + PROFILE_CHUNK_USERS, len(uniq))
            block = slice(bounds[lo], bounds[hi])
            weighted = self.emb[rows[block]] * weights[block, None]
            profiles[lo:hi] = _normalise(np.add.reduceat(weighted, first[lo:hi] - bounds[lo], axis=0))
        return uniq, profiles

    # ---- public queries --------------------------------------------------------------------------
    def user_profile(self, user_clicks: pd.DataFrame) -> tuple[pd.Index, np.ndarray]:
        """Each user's L2-normalised recency-weighted mean of clicked-article embeddings.

        Uses the user's `profile_clicks` latest clicks; weight halves every `profile_half_life_hours`
        before the user's own last click (relative, so no clock is needed: online and offline agree).
        Users whose clicked articles have no embedding in the index are left out. Returns (user ids
        sorted, matrix [users, dim]).
        """
        users, profiles = self._profiles(*self._click_arrays(user_clicks))
        return pd.Index(users, name=USER_ID), profiles

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
        r = block_rank(a)
        keep = r < k
        return pd.DataFrame({ARTICLE_A: a[keep], ARTICLE_B: b[keep], SCORE: s[keep], RANK: r[keep] + 1})

    def coclick_neighbours(self) -> tuple[np.ndarray, ...]:
        """The co-click table grouped by article_a, strongest first: (article_a keys, start, end, article_b,
        weight); rows [start[i], end[i]) of the last two are keys[i]'s neighbours in rank order. Built once
        per index: the cocl source and the API's "co-read" list both slice it."""
        if "cocl_slices" not in self._cache:
            a = self.coclick[ARTICLE_A].to_numpy(dtype=np.int64)
            order = np.lexsort((self.coclick[RANK].to_numpy(), a))
            keys, first, count = np.unique(a[order], return_index=True, return_counts=True)
            self._cache["cocl_slices"] = (
                keys,
                first,
                first + count,
                self.coclick[ARTICLE_B].to_numpy(dtype=np.int64)[order],
                self.coclick[WEIGHT].to_numpy(dtype=np.float64)[order],
            )
        return self._cache["cocl_slices"]

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
        at_ms: int | None = None,
    ) -> pd.DataFrame:
        """One row per (user, proposed article) for `users` (default: every user in `user_clicks`).

        `user_clicks` (user_id, click_article_id, click_timestamp) is each user's history: it drives emb
        and cocl and every clicked article is excluded. `n` is the list length per source (an int for all,
        or a dict; default params `per_source`). `at_ms` is the request time (default: the index's cutoff,
        as every offline list is asked at its index's hour). Columns: OUTPUT_COLUMNS (score NaN / rank 0
        where a source did not propose the article), sorted by user then fused rank.
        """
        return pd.DataFrame(self.candidate_columns(user_clicks, users, n, at_ms))

    def candidate_columns(
        self,
        user_clicks: pd.DataFrame | Mapping[str, np.ndarray],
        users: Sequence[int] | None = None,
        n: int | dict[str, int] | None = None,
        at_ms: int | None = None,
    ) -> dict[str, np.ndarray]:
        """`candidates` as arrays by column name (OUTPUT_COLUMNS order), without building the frame."""
        clicks = self._click_arrays(user_clicks)
        if users is None:
            users_arr = np.unique(clicks[0])
        else:
            users_arr = np.unique(np.asarray(users, dtype=np.int64))
            asked = np.isin(clicks[0], users_arr)
            clicks = tuple(c[asked] for c in clicks)
        sizes = (
            {s: int(v) for s, v in self.params["per_source"].items()}
            if n is None
            else (
                {s: int(n) for s in sources.names()}
                if isinstance(n, (int, np.integer))
                else {s: int(v) for s, v in n.items()}
            )
        )
        sources.check_names(sizes, "the list lengths per source")
        clicked_any = len(clicks[0]) > 0
        bound = int(max(clicks[1].max() if clicked_any else 0, self.emb_ids.max() if len(self.emb_ids) else 0))
        user_ids, (users_arr, click_users) = dense_users(users_arr, clicks[0])
        query = Query(users_arr, (click_users, clicks[1], clicks[2]), PairKeys(click_users, clicks[1], bound),
                      self.cutoff_ms if at_ms is None else int(at_ms))

        # What each source computes once per call, for its list and its row columns alike (a model's user pass).
        prepared = {name: source.prepare(self, query) for name, source in self.sources.items()}
        parts: dict[str, Ranked] = {}
        for name, source in self.sources.items():
            if sizes.get(name, 0) > 0:
                got = source.propose(self, query, sizes[name], prepared[name])
                if got is not None:
                    parts[name] = got
        out = self._merge(parts, query.read)
        for source in sources.sources():
            fitted = self.sources.get(source.name)
            if fitted is not None:
                out |= fitted.score_rows(self, prepared[source.name], out[USER_ID], out[ARTICLE_ID])
            else:
                out |= {c: np.full(len(out[USER_ID]), np.nan, dtype=np.float32) for c in source.row_columns}
        out[USER_ID] = user_ids[out[USER_ID]]
        return {c: out[c] for c in OUTPUT_COLUMNS}

    def _merge(self, parts: dict[str, Ranked], read: PairKeys) -> dict[str, np.ndarray]:
        """Per-source lists -> one wide row per (user, article) with reciprocal-rank fusion."""
        names = sources.names()
        order = [s for s in names if s in parts and len(parts[s].user)]
        if not order:
            dtypes = {USER_ID: np.int64, ARTICLE_ID: np.int64}
            dtypes.update({c: np.int32 if c.endswith(RANK) else np.float32 for c in _SOURCE_COLUMNS})
            dtypes[score_col(FUSED)] = np.float64
            return {c: np.zeros(0, dtype=dtypes[c]) for c in _MERGED_COLUMNS}
        keys = np.concatenate([read.encode(parts[s].user, parts[s].article) for s in order])
        uniq, codes = np.unique(keys, return_inverse=True)
        users, articles = uniq // read.m, uniq % read.m
        weights = self.params["fusion_weights"]
        rrf_k = float(self.params["rrf_k"])
        fused = np.zeros(len(uniq))
        by_source: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        offset = 0
        for s in names:  # in column order: the fused sum adds the sources in one fixed order
            # float32/int32: at Globo scale a snapshot has tens of millions of candidate rows
            sc = np.full(len(uniq), np.nan, dtype=np.float32)
            rk = np.zeros(len(uniq), dtype=np.int32)
            if s in order:
                p = parts[s]
                c = codes[offset : offset + len(p.user)]
                offset += len(p.user)
                sc[c] = p.score
                rk[c] = p.rank
                fused[c] += float(weights.get(s, 0.0)) / (rrf_k + p.rank)
            by_source[s] = (sc, rk)
        # By user, fused score down, article id: `uniq` is already in (user, article) order, and the sort is stable.
        best = np.lexsort((-fused, users))
        users = users[best]
        cols = {USER_ID: users, ARTICLE_ID: articles[best]}
        for s in names:
            cols[score_col(s)] = by_source[s][0][best]
            cols[rank_col(s)] = by_source[s][1][best]
        cols[score_col(FUSED)] = fused[best]
        cols[rank_col(FUSED)] = (block_rank(users) + 1).astype(np.int32)
        return {c: cols[c] for c in _MERGED_COLUMNS}


# ---- the stage -----------------------------------------------------------------------------------
def label_candidates(candidates: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """Add `label` (1 if the user clicked the article in the target window, per `eval_targets`)."""
    hit = targets[[USER_ID, ARTICLE_ID]].drop_duplicates().assign(**{LABEL: 1})
    out = candidates.merge(hit, on=[USER_ID, ARTICLE_ID], how="left")
    out[LABEL] = out[LABEL].fillna(0).astype("int8")
    return out


def candidate_recalls(candidates: pd.DataFrame, targets: pd.DataFrame, recall_at: Sequence[int]) -> pd.DataFrame:
    """Per user of `targets` (sorted by user id): candidate recall per source, of the union of all sources and
    of the fused list cut at each N, the list's length, and `warm` (targets' column). `candidates` are
    `label_candidates`' rows (one per user and article), so a user's recall of a list is the labels among its
    rows over the user's distinct target articles (`metrics.candidate_recall`, counted from the labels instead
    of joined again for every list). A user's figures read their own rows only, so the tables of disjoint groups
    of users concatenate; `candidate_report` averages."""
    truth = targets[[USER_ID, ARTICLE_ID]].drop_duplicates()
    users, relevant = np.unique(truth[USER_ID].to_numpy(), return_counts=True)
    at = np.searchsorted(users, candidates[USER_ID].to_numpy())
    mine = at < len(users)
    mine[mine] = users[at[mine]] == candidates[USER_ID].to_numpy()[mine]
    hit = mine & (candidates[LABEL].to_numpy() == 1)

    def recall(rows: np.ndarray) -> np.ndarray:
        return np.bincount(at[hit & rows], minlength=len(users)) / relevant

    out = {WARM: targets.groupby(USER_ID)[WARM].first().reindex(users).to_numpy(bool)}
    for s in sources.names():
        out[s] = recall(candidates[rank_col(s)].to_numpy() > 0)
    out["union"] = recall(np.ones(len(candidates), dtype=bool))
    for k in recall_at:
        out[f"fused@{int(k)}"] = recall(candidates[rank_col(FUSED)].to_numpy() <= int(k))
    out["list_length"] = np.bincount(at[mine], minlength=len(users))
    return pd.DataFrame(out, index=pd.Index(users, name=USER_ID))


def candidate_report(recalls: pd.DataFrame) -> dict:
    """`candidate_recalls` averaged over all / warm / cold users: the recall of each source, of the union and
    of the fused list at each N, and the mean list length."""
    report = {}
    for seg, rows in {"all": recalls, "warm": recalls[recalls[WARM]], "cold": recalls[~recalls[WARM]]}.items():
        row: dict[str, float] = {"users": len(rows)}
        if len(rows):
            row |= {col: float(rows[col].mean()) for col in recalls.columns if col not in (WARM, "list_length")}
            row["mean_list_length"] = float(rows["list_length"].mean())
        report[seg] = row
    return report


def user_blocks(users: np.ndarray, size: int) -> list[np.ndarray]:
    """`users` (sorted ids) cut into consecutive blocks of at most `size` (one empty block for no users): how lists
    are made, written and read."""
    return np.array_split(users, max(1, -(-len(users) // size)))


def read_candidate_blocks(path: str | Path, users: np.ndarray, size: int) -> Iterator[pd.DataFrame]:
    """The candidate rows of `users` (sorted ids) from a candidates file, `size` whole users at a time
    (`user_blocks`), each in the file's row order. The stage writes users in id order, so a block reads only the
    Parquet row groups its id range touches: a Globo test window (14M rows) is never in memory at once."""
    for block in (b for b in user_blocks(users, size) if len(b)):
        rows = pd.read_parquet(path, filters=[(USER_ID, ">=", int(block[0])), (USER_ID, "<=", int(block[-1]))])
        yield rows[rows[USER_ID].isin(block)].reset_index(drop=True)


def sample_users(users: np.ndarray, max_users: int) -> np.ndarray:
    """At most `max_users` of `users`, chosen by a fixed hash of the id: deterministic, unbiased by activity,
    and the same user is kept in every snapshot that keeps them."""
    users = np.unique(np.asarray(users, dtype=np.int64))
    if len(users) <= max_users:
        return users
    with np.errstate(over="ignore"):
        mixed = users.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return np.sort(users[np.argsort(mixed ^ (mixed >> np.uint64(29)), kind="stable")[:max_users]])


@lru_cache(maxsize=2)
def _loaded_index(index_dir: str, written_ns: int) -> CandidateIndex:
    """A Dask worker loads each snapshot's index once (from the shared data root), not once per task; an index
    saved again at the same path (its meta.json is written last) is a new key."""
    return CandidateIndex.load(index_dir)


def _partition_candidates(index_dir: str, history: pd.DataFrame, users: np.ndarray) -> pd.DataFrame:
    written_ns = (Path(index_dir) / _FILES["meta"]).stat().st_mtime_ns
    return _loaded_index(index_dir, written_ns).candidates(history, users=users)


def _index_candidates(index: CandidateIndex, history: pd.DataFrame, users: np.ndarray) -> pd.DataFrame:
    return index.candidates(history, users=users)


def candidates_on_cluster(client, partitions: int, index: str | Path | CandidateIndex, history: pd.DataFrame,
                          users: np.ndarray) -> pd.DataFrame:
    """`index.candidates(history, users=users)` on a Dask cluster: users split into user-hash partitions
    (cluster.user_partition), one task each with its users' history; the parts back in the single process's order
    (by user, then fused rank). `index`: a saved index's folder, which every worker reads itself (once), or an
    index in memory (an hour of the as-served replay), sent to every worker once."""
    from pipelines.cluster import user_partition

    if isinstance(index, CandidateIndex):
        shared, task = client.scatter(index, broadcast=True, hash=False), _index_candidates
    else:
        shared, task = str(Path(index).resolve()), _partition_candidates
    users = np.unique(np.asarray(users, dtype=np.int64))
    part = user_partition(users, partitions)
    history_part = user_partition(history[USER_ID].to_numpy(), partitions)
    futures = [client.submit(task, shared, history[history_part == p], users[part == p], pure=False)
               for p in range(partitions) if (part == p).any()]
    parts = client.gather(futures)
    return pd.concat(parts, ignore_index=True).sort_values(USER_ID, kind="stable").reset_index(drop=True)


def build_candidates(
    data_root: str | Path,
    snapshots: Sequence,
    out_dir: str | Path,
    index_dir: str | Path,
    params: dict,
    epoch_ms: int,
    learned_dir: str | Path | None = None,
    client=None,
    partitions: int = 1,
) -> dict[str, dict]:
    """For each snapshot: fit and save its index under `<index_dir>/<name>/`; for labelled snapshots also
    write `<out_dir>/<name>.parquet` (candidates of every evaluated user, with `label`; roles listed in
    params `max_users` keep a fixed sample of that many users). Returns the candidate-recall report per
    labelled snapshot. With `learned_dir` (`newsrec learned`'s models), each index carries the learned model
    fitted newest at or before its cutoff (`learned.model_for`), as the daily retrain would have left it.
    With a Dask `client`, the lists are made on the cluster in `partitions` user partitions
    (candidates_on_cluster; the same lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.catalogue import delivered_hours, known_at, read_catalogue
    from pipelines.learned import model_for
    from pipelines.split import eval_targets, snapshots_clicks

    root = Path(data_root)
    catalogue, embeddings = read_catalogue(root)
    delivered = delivered_hours(root, catalogue)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    reports = {}
    for snap, history, target in snapshots_clicks(lake.validated_dir(root), snapshots):
        articles = known_at(catalogue, delivered, snap.cutoff_hour)
        learned = model_for(learned_dir, snap.cutoff_hour) if learned_dir is not None else None
        if learned_dir is not None and learned is None:
            raise InputError(f"no learned model under {learned_dir} fitted at or before hour {snap.cutoff_hour} "
                             f"(snapshot {snap.name}): run `newsrec learned` with this split")
        index = CandidateIndex.fit(root, articles, embeddings, snap.cutoff_ms, params, epoch_ms,
                                   similar=snap.role == "serve", given={LEARNED: learned})  # only the API reads similar
        index.save(Path(index_dir) / snap.name)
        if snap.role == "serve":
            continue
        targets = eval_targets(history, target, articles, snap.cutoff_ms)
        cap = (params.get("max_users") or {}).get(snap.role)
        users = np.unique(targets[USER_ID].to_numpy())
        users = sample_users(users, int(cap)) if cap else users
        targets = targets[targets[USER_ID].isin(users)]
        asked = history[history[USER_ID].isin(users)]
        # A block of users at a time, appended to the file in user order: the same rows as one call for all users
        # (a user's list reads only their own clicks), at a bounded memory (Globo's test window: 33k users, 14M rows).
        tmp, recalls, writer = Path(out_dir) / f".{snap.name}.parquet.tmp", [], None
        try:
            for block in user_blocks(users, LIST_BLOCK_USERS):
                mine, truth = asked[asked[USER_ID].isin(block)], targets[targets[USER_ID].isin(block)]
                if client is None:
                    cands = index.candidates(mine, users=block)
                else:
                    cands = candidates_on_cluster(client, partitions, Path(index_dir) / snap.name, mine, block)
                cands = label_candidates(cands, truth)
                table = pa.Table.from_pandas(cands, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                recalls.append(candidate_recalls(cands, truth, params["recall_at"]))
                del cands, table
        finally:
            if writer is not None:
                writer.close()
        tmp.replace(Path(out_dir) / f"{snap.name}.parquet")
        reports[snap.name] = candidate_report(pd.concat(recalls))
    return reports


def main(argv: list[str] | None = None) -> int:
    from pipelines.split import read_snapshots

    parser = step_parser("candidates", __doc__, data_root="data root with raw/, validated/, aggregates/")
    parser.add_argument("--split", type=Path, required=True, help="snapshot file written by `newsrec split`")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for <snapshot>.parquet candidate lists"
    )
    parser.add_argument(
        "--index-out", type=Path, required=True, help="folder for <snapshot>/ candidate indexes"
    )
    parser.add_argument("--metrics", type=Path, required=True, help="candidate recall report to write (JSON)")
    parser.add_argument("--learned", type=Path, help="folder of hour=NNN/ learned models (`newsrec learned`); "
                        "omit: no learned source")
    args, config = parse_step(parser, argv)
    from pipelines.cluster import connect, partition_count

    params = config["candidates"]
    epoch_ms = int(config["data"]["epoch_ms"])
    dask_params = config["dask"]
    with connect(dask_params) as client:
        reports = build_candidates(
            args.data_root, read_snapshots(args.split), args.out, args.index_out, params, epoch_ms, args.learned,
            client=client, partitions=partition_count(client, dask_params) if client is not None else 1,
        )
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
