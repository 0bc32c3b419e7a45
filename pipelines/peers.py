"""The collaborative-filtering peer: implicit's ALS, the model a team would otherwise pick, as a baseline.

Matrix factorisation of the reader x article click matrix (Hu, Koren & Volinsky's implicit-feedback ALS,
implemented by the `implicit` library), fitted on the clicks before a cutoff: confidence alpha x clicks,
`factors` latent dimensions, L2 `regularization`, `iterations` sweeps, over the clicks of the last
`window_hours` hours (null: all history). It recommends from the whole catalogue it knows, which is every
article clicked in that window: it cannot see an article no one had clicked when it was fitted, and in news,
where most clicks go to stories a few hours old, that is its weakness. The evaluation fits it where every
other method is fitted (at the test cutoff, and again every hour when the window is replayed as served).

Defaults: params.yaml `evaluate.cf`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.columns import ARTICLE_ID, CLICK_ARTICLE_ID, CLICK_TIMESTAMP, HOUR_MS, RANK, SCORE, USER_ID
from pipelines.errors import InputError

CF_KEYS = ("factors", "regularization", "iterations", "alpha", "window_hours", "seed", "threads")


def check_params(params: Mapping) -> dict:
    """The `evaluate.cf` section, checked: a clear error for a missing or meaningless value."""
    missing = [k for k in CF_KEYS if k not in params]
    if missing:
        raise InputError(f"evaluate.cf lacks {missing}; it needs {list(CF_KEYS)}")
    out = dict(params)
    if int(out["factors"]) < 1 or int(out["iterations"]) < 1:
        raise InputError(f"evaluate.cf factors and iterations must be >= 1, got {out['factors']}, {out['iterations']}")
    if float(out["regularization"]) < 0 or float(out["alpha"]) <= 0:
        raise InputError(f"evaluate.cf regularization must be >= 0 and alpha > 0, got {out['regularization']}, "
                         f"{out['alpha']}")
    if out["window_hours"] is not None and float(out["window_hours"]) <= 0:
        raise InputError(f"evaluate.cf window_hours must be > 0 or null (all history), got {out['window_hours']}")
    if int(out["threads"]) < 0:
        raise InputError(f"evaluate.cf threads must be >= 0 (0: every core), got {out['threads']}")
    return out


@dataclass
class CFPeer:
    """ALS factors fitted at one cutoff: `users`/`items` are the sorted ids behind the factor rows."""

    users: np.ndarray
    items: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray

    @classmethod
    def fit(cls, history: pd.DataFrame, cutoff_ms: int, params: Mapping) -> CFPeer:
        """Fit on `history` (user_id, click_article_id, click_timestamp) before `cutoff_ms`, within the window."""
        import scipy.sparse as sp
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        p = check_params(params)
        ts = history[CLICK_TIMESTAMP].to_numpy()
        keep = ts < cutoff_ms
        if p["window_hours"] is not None:
            keep &= ts >= cutoff_ms - float(p["window_hours"]) * HOUR_MS
        clicks = history.loc[keep, [USER_ID, CLICK_ARTICLE_ID]]
        users, u = np.unique(clicks[USER_ID].to_numpy(np.int64), return_inverse=True)
        items, i = np.unique(clicks[CLICK_ARTICLE_ID].to_numpy(np.int64), return_inverse=True)
        dim = int(p["factors"])
        if len(users) == 0 or len(items) == 0:
            return cls(users, items, np.zeros((len(users), dim), np.float32), np.zeros((len(items), dim), np.float32))
        counts = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(len(users), len(items)))
        counts.sum_duplicates()
        # implicit's own threads split the users (then the articles); a BLAS thread pool under them only competes
        # for the cores. Each row's solve reads only the other side's factors: the same factors on any thread count.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=dim, regularization=float(p["regularization"]), iterations=int(p["iterations"]),
                alpha=float(p["alpha"]), random_state=int(p["seed"]), num_threads=int(p["threads"]),
            )
            model.fit(counts, show_progress=False)
        return cls(users, items, np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32))

    def _rows(self, ids: np.ndarray, known: np.ndarray) -> np.ndarray:
        """Row of each id in the sorted `known`, -1 where it is not there."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(known) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(known, ids), 0, len(known) - 1)
        return np.where(known[pos] == ids, pos, -1)

    def score(self, users: np.ndarray, articles: np.ndarray) -> np.ndarray:
        """user factor . article factor per (user, article) pair; NaN where the model knows neither."""
        ur, ir = self._rows(users, self.users), self._rows(articles, self.items)
        out = np.full(len(ur), np.nan)
        ok = (ur >= 0) & (ir >= 0)
        out[ok] = np.einsum("ij,ij->i", self.user_factors[ur[ok]], self.item_factors[ir[ok]])
        return out

    def recommend(
        self, users: np.ndarray, user_clicks: pd.DataFrame, available: np.ndarray, n: int
    ) -> pd.DataFrame:
        """Each user's top `n` articles of `available` that they have not read in `user_clicks`: user_id,
        article_id, score, rank. A user the model has no factors for gets no rows."""
        users = np.unique(np.asarray(users, dtype=np.int64))
        rows = self._rows(users, self.users)
        users, rows = users[rows >= 0], rows[rows >= 0]
        cand = np.flatnonzero(np.isin(self.items, np.asarray(available, dtype=np.int64)))
        empty = pd.DataFrame({USER_ID: np.zeros(0, np.int64), ARTICLE_ID: np.zeros(0, np.int64),
                              SCORE: np.zeros(0), RANK: np.zeros(0, np.int64)})
        if len(users) == 0 or len(cand) == 0 or n < 1:
            return empty
        read = user_clicks[user_clicks[USER_ID].isin(users)]
        read_rows = self._rows(read[CLICK_ARTICLE_ID].to_numpy(), self.items[cand])
        read_user = np.searchsorted(users, read[USER_ID].to_numpy(np.int64))
        parts = []
        step = max(1, 2_000_000 // max(len(cand), 1))  # a block of users x candidates stays ~16 MB
        for start in range(0, len(users), step):
            block = slice(start, start + step)
            scores = self.user_factors[rows[block]] @ self.item_factors[cand].T
            mine = (read_user >= start) & (read_user < start + len(scores)) & (read_rows >= 0)
            scores[read_user[mine] - start, read_rows[mine]] = -np.inf
            depth = min(n, len(cand))
            top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
            top_scores = np.take_along_axis(scores, top, axis=1)
            order = np.lexsort((self.items[cand][top], -top_scores), axis=1)
            top, top_scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
            ok = np.isfinite(top_scores)
            parts.append(pd.DataFrame({
                USER_ID: np.repeat(users[block], depth)[ok.ravel()],
                ARTICLE_ID: self.items[cand][top][ok],
                SCORE: top_scores[ok].astype(np.float64),
                RANK: np.tile(np.arange(1, depth + 1), len(scores))[ok.ravel()],
            }))
        return pd.concat(parts, ignore_index=True) if parts else empty
