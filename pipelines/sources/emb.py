"""emb: faiss kNN of the user's profile (recency-weighted mean of clicked embeddings) over the pool, with a
small trend prior (params emb_trend_boost; 0 = pure cosine)."""

from __future__ import annotations

import numpy as np

from pipelines.sources.base import CandidateSource, Ranked, register, top_excluding


@register
class Emb(CandidateSource):
    name = "emb"
    label = "similar to what they read"
    baseline = "emb_knn"
    position = 10
    report_position = 40

    def propose(self, index, query, n, prepared) -> Ranked | None:
        if not len(query.clicks[0]) or not len(index.pool):
            return None
        users, profiles = index._profiles(*query.clicks)

        def fetch(todo: np.ndarray, depth: int):
            d, nb = index._search(profiles[np.searchsorted(users, todo)], depth, prior=1.0)
            u = np.repeat(todo, d.shape[1])
            b, s = nb.ravel(), d.ravel()
            ok = b >= 0
            return u[ok], b[ok], s[ok]

        return top_excluding(fetch, users, query.read, n, len(index.pool))
