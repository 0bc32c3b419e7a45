"""learned: the two-tower model (pipelines.learned), when the index was given one: the user tower over the
user's last clicks, inner product with the pool's article-tower vectors. Those are computed once per index,
as of its cutoff (so an article published since the model was trained has one), and searched exactly with
faiss: at fit, at load, at each hourly swap in the API, never per request. Its `learned_sim` is the model's
score of every candidate row, whichever source proposed it (a ranker feature)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.columns import CATEGORY_ID, CREATED_AT_TS, LEARNED, LEARNED_SIM, TREND, WORDS_COUNT
from pipelines.errors import InputError
from pipelines.sources.base import (
    CandidateSource,
    Ranked,
    block_rank,
    register,
    sorted_positions,
    top_excluding,
)

USER_CHUNK = 4096  # users per block of the user tower: bounded memory ([block, history, 250] at a time)
ROW_CHUNK = 8_192  # candidate rows per block of `score_rows`: its two gathered blocks (2.4 MB each) stay in the cache


@register
class Learned(CandidateSource):
    name = LEARNED
    label = "the reader model's pick"
    baseline = "learned"
    position = 50
    report_position = 50
    optional = True
    row_columns = (LEARNED_SIM,)

    def __init__(self, model: Any, pool_vectors: np.ndarray, search: Any):
        self.model = model  # pipelines.learned.LearnedModel
        self.pool_vectors = pool_vectors  # the article tower of each pool row, as of the index's cutoff
        self._search = search  # faiss exact inner-product index over pool_vectors

    @classmethod
    def fit(cls, index, given: Any = None) -> Learned | None:
        if given is None:
            return None
        import faiss

        if index.emb_meta is None:
            raise InputError("this candidate index has no article metadata for the learned model (written by "
                             "older code): rebuild it with `newsrec candidates` or `newsrec refresh`")
        mine, theirs = float(index.params["trend_half_life_hours"]), float(given.meta["trend_half_life_hours"])
        if mine != theirs:
            raise InputError(f"the learned model reads trends of half-life {theirs} h, this index has {mine} h: "
                             "fit the model with the index's candidates params")
        pool = index.pool
        vectors = given.article_vectors(
            index.emb[np.searchsorted(index.emb_ids, index.pool_ids)], pool[CATEGORY_ID].to_numpy(np.int64),
            pool[WORDS_COUNT].to_numpy(np.int64), pool[CREATED_AT_TS].to_numpy(np.int64),
            pool[TREND].to_numpy(np.float64), index.cutoff_ms,
        ) if len(pool) else np.zeros((0, given.dim), dtype=np.float32)
        faiss.cvar.distance_compute_blas_threshold = 2**31 - 1  # one kernel for every batch size (_faiss_index)
        search = faiss.IndexFlatIP(given.dim)
        search.add(vectors)
        return cls(given, vectors, search)

    @property
    def given(self) -> Any:
        return self.model

    def save(self, folder: Path) -> None:
        self.model.save(folder)

    @classmethod
    def load(cls, index, folder: Path) -> Learned | None:
        if not folder.is_dir():
            return None
        from pipelines.learned import LearnedModel

        return cls.fit(index, LearnedModel.load(folder))

    def prepare(self, index, query) -> tuple[np.ndarray, np.ndarray] | None:
        """One user-tower pass for the learned list and the learned score of every candidate."""
        if not len(query.clicks[0]) or not len(index.pool):
            return None
        return self.user_vectors(index, *query.clicks, query.at_ms)

    def user_vectors(self, index, users: np.ndarray, articles: np.ndarray, ts: np.ndarray,
                     at_ms: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The user tower on click arrays: (sorted user ids, vectors [users, model dim]), one pass per block of
        users. Each user's latest `history` clicks with an embedding in the index, newest first, as of the
        request time `at_ms` (default: the index's cutoff)."""
        at_ms = index.cutoff_ms if at_ms is None else int(at_ms)
        model = self.model
        n = int(model.params["history"])
        order = np.lexsort((-ts, users))  # by user, newest click first (stable: ties keep their order)
        users, articles, ts = users[order], articles[order], ts[order]
        rows = index._emb_rows(articles)
        users, ts, rows = users[rows >= 0], ts[rows >= 0], rows[rows >= 0]
        pos = block_rank(users)
        keep = pos < n
        users, ts, rows, pos = users[keep], ts[keep], rows[keep], pos[keep]
        uniq, inv = np.unique(users, return_inverse=True)
        out = np.empty((len(uniq), model.dim), dtype=np.float32)
        for lo in range(0, len(uniq), USER_CHUNK):
            hi = min(lo + USER_CHUNK, len(uniq))
            sel = (inv >= lo) & (inv < hi)
            u, p, r = inv[sel] - lo, pos[sel], rows[sel]
            width = int(p.max()) + 1
            grid = np.zeros((hi - lo, width), dtype=np.int64)
            mask = np.zeros((hi - lo, width), dtype=bool)
            times = np.zeros((hi - lo, width), dtype=np.int64)
            grid[u, p], mask[u, p], times[u, p] = r, True, ts[sel]
            out[lo:hi] = model.user_vectors(index.emb[grid], index.emb_meta[0][grid], index.emb_meta[1][grid],
                                            times, mask, at_ms)
        return uniq, out

    def propose(self, index, query, n, prepared) -> Ranked | None:
        if prepared is None or not len(prepared[0]):
            return None
        users, vectors = prepared
        pool_ids = index.pool_ids

        def fetch(todo: np.ndarray, depth: int):
            depth = min(depth, self._search.ntotal)
            d, i = [], []
            for lo in range(0, len(todo), USER_CHUNK):
                chunk = vectors[np.searchsorted(users, todo[lo: lo + USER_CHUNK])]
                dd, ii = self._search.search(np.ascontiguousarray(chunk), depth)
                d.append(dd)
                i.append(ii)
            d, i = np.vstack(d), np.vstack(i)
            u = np.repeat(todo, d.shape[1])
            b, s = np.where(i >= 0, pool_ids[np.clip(i, 0, None)], -1).ravel(), d.ravel()
            ok = b >= 0
            return u[ok], b[ok], s[ok]

        return top_excluding(fetch, users, query.read, n, len(index.pool))

    def score_rows(self, index, prepared, users: np.ndarray, articles: np.ndarray) -> dict[str, np.ndarray]:
        """The model's score of each (user, pool article) row; NaN without a user vector."""
        out = np.full(len(users), np.nan, dtype=np.float32)
        if prepared is None or len(users) == 0:
            return {LEARNED_SIM: out}
        u = sorted_positions(prepared[0], users)
        a = sorted_positions(index.pool_ids, articles)
        ok = np.flatnonzero((u >= 0) & (a >= 0))
        # A block of rows at a time: an hour's candidate rows at Globo scale would gather two [rows, dim]
        # matrices of half a gigabyte each; every row's product is the same either way.
        for lo in range(0, len(ok), ROW_CHUNK):
            rows = ok[lo: lo + ROW_CHUNK]
            out[rows] = np.einsum("ij,ij->i", prepared[1][u[rows]], self.pool_vectors[a[rows]])
        return {LEARNED_SIM: out}
