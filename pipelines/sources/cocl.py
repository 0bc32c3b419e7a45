"""cocl: the co-read neighbours of the user's last distinct clicks (params recent_clicks), each click weighted
by how recent it is (cocl_recency^position), summed per article."""

from __future__ import annotations

import numpy as np

from pipelines.sources.base import CandidateSource, Ranked, block_rank, register, sorted_positions


def _slices(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)]) without the Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + offsets


@register
class Cocl(CandidateSource):
    name = "cocl"
    label = "read together with their reads"
    baseline = "cocl"
    position = 20
    report_position = 30

    def propose(self, index, query, n, prepared) -> Ranked | None:
        if not len(query.clicks[0]) or not len(index.coclick):
            return None
        read = query.read
        users, articles, ts = query.clicks
        order = np.lexsort((-ts, users))  # by user, newest click first
        users, articles = users[order], articles[order]
        _, first = np.unique(read.encode(users, articles), return_index=True)
        latest = np.zeros(len(users), dtype=bool)
        latest[first] = True  # each (user, article) once, at its newest click
        users, articles = users[latest], articles[latest]
        pos = block_rank(users)
        keep = pos < int(index.params["recent_clicks"])
        users, articles = users[keep], articles[keep]
        recency = np.power(float(index.params["cocl_recency"]), pos[keep])

        # Each recent click's co-read neighbours: a slice of the co-click table grouped by article_a.
        keys, a_start, a_end, nb_b, nb_w = index.coclick_neighbours()
        at = sorted_positions(keys, articles)  # keys is not empty: this source runs only with co-clicks
        lo, hi = np.where(at >= 0, a_start[at], 0), np.where(at >= 0, a_end[at], 0)
        rows = _slices(lo, hi)
        u = np.repeat(users, hi - lo)
        b = nb_b[rows]
        s = np.repeat(recency, hi - lo) * nb_w[rows]
        unread = ~read.contains(u, b)
        u, b, s = u[unread], b[unread], s[unread]
        pair, inv = np.unique(read.encode(u, b), return_inverse=True)
        score = np.bincount(inv, weights=s, minlength=len(pair))
        u, b = pair // read.m, pair % read.m
        best = np.lexsort((b, -score, u))
        u, b, score = u[best], b[best], score[best]
        r = block_rank(u)
        top = r < n
        return Ranked(u[top], b[top], score[top], r[top] + 1)
