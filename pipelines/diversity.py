"""Diversity of the final list: a maximal-marginal-relevance re-rank over article embeddings, and its measures.

The API's list and the reranker's list in the offline evaluation go through the same `mmr` (params.yaml
`rank`), so what is measured is what is served. MMR (Carbonell & Goldstein 1998) fills the list one article
at a time from the `depth` best by score, taking the article with the highest

    lambda x relevance - (1 - lambda) x (highest cosine similarity to an article already in the list)

where relevance is the ranker's score scaled to [0, 1] over those `depth` articles. lambda = 1 keeps the
ranker's order exactly; lower values trade relevance for articles unlike those above them. An article without
an embedding (a zero row: MIND articles without text or co-reads) is similar to nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipelines.errors import InputError

METHODS = ("none", "mmr")


def check_params(params: Mapping | None) -> dict:
    """The `rank` section, checked: {"diversity": "none" | "mmr", "mmr_lambda": [0, 1], "mmr_depth": >= 1}."""
    p = dict(params or {"diversity": "none"})
    if p.get("diversity") not in METHODS:
        raise InputError(f"rank.diversity must be one of {list(METHODS)}, got {p.get('diversity')!r}")
    if p["diversity"] == "mmr":
        for key in ("mmr_lambda", "mmr_depth"):
            if key not in p:
                raise InputError(f"rank.diversity mmr needs rank.{key}")
        if not 0.0 <= float(p["mmr_lambda"]) <= 1.0:
            raise InputError(f"rank.mmr_lambda must be in [0, 1], got {p['mmr_lambda']}")
        if int(p["mmr_depth"]) < 1:
            raise InputError(f"rank.mmr_depth must be >= 1, got {p['mmr_depth']}")
    return p


def active(params: Mapping | None) -> bool:
    """Whether the `rank` params ask for a re-rank that can change a list (mmr with lambda < 1)."""
    p = check_params(params)
    return p["diversity"] == "mmr" and float(p["mmr_lambda"]) < 1.0


def mmr(scores: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Positions (into `scores`) of the k articles MMR picks, in list order.

    `scores` are one list's relevance scores, best first (the caller passes the `depth` best); `vectors` their
    L2-normalised embeddings (zero rows: no embedding). Ties go to the earlier position, so lam = 1 returns
    0..k-1."""
    n = len(scores)
    k = min(int(k), n)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    span = s.max() - s.min()
    rel = (s - s.min()) / span if span > 0 else np.ones(n)
    v = np.asarray(vectors, dtype=np.float32)
    picked = np.zeros(k, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    nearest = np.full(n, -np.inf)  # highest similarity to anything picked so far
    for step in range(k):
        value = lam * rel - (1.0 - lam) * (nearest if step else 0.0)
        value = np.where(free, value, -np.inf)
        i = int(np.argmax(value))
        picked[step] = i
        free[i] = False
        if step + 1 < k:
            # einsum's own loop, not BLAS: a threaded BLAS call on a busy machine costs milliseconds per request
            nearest = np.maximum(nearest, np.einsum("ij,j->i", v, v[i]).astype(np.float64))
    return picked


def rerank(users: np.ndarray, articles: np.ndarray, scores: np.ndarray, vectors, k: int, params: Mapping) -> np.ndarray:
    """MMR over many users' lists at once: rows of one user contiguous and best first (at most `depth` each);
    `vectors(article_ids)` gives their normalised embeddings. Returns the row positions kept, each user's
    picks in list order (up to k per user). With the re-rank off, each user's first k rows."""
    users = np.asarray(users)
    if len(users) == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    p = check_params(params)
    if not active(p):
        return np.concatenate([np.arange(a, min(b, a + k)) for a, b in zip(starts, ends, strict=True)])
    lam, depth = float(p["mmr_lambda"]), int(p["mmr_depth"])
    articles, ends = np.asarray(articles), np.minimum(ends, starts + depth)
    out = []
    # The vectors of a few users' lists at a time (~2 MB, read while in the cache), not a whole block's (4,096
    # users' at Globo: 200 MB of fresh pages, written and read back from memory).
    per_block = max(1, 2_048 // max(depth, 1))
    for lo in range(0, len(starts), per_block):
        firsts, lasts = starts[lo : lo + per_block], ends[lo : lo + per_block]
        emb = vectors(articles[np.concatenate([np.arange(a, b) for a, b in zip(firsts, lasts, strict=True)])])
        at = 0
        for a, b in zip(firsts, lasts, strict=True):
            out.append(a + mmr(scores[a:b], emb[at : at + b - a], k, lam))
            at += b - a
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def lookup(normalised: np.ndarray):
    """`vectors(article_ids)` for `rerank` over a matrix whose row i is article i's normalised embedding
    (zeros past its end)."""

    def vectors(article_ids: np.ndarray) -> np.ndarray:
        a = np.asarray(article_ids, dtype=np.int64)
        out = np.zeros((len(a), normalised.shape[1]), dtype=np.float32)
        ok = (a >= 0) & (a < len(normalised))
        out[ok] = normalised[a[ok]]
        return out

    return vectors


def index_vectors(index):
    """`vectors(article_ids)` from a CandidateIndex's normalised embeddings (zeros for articles it lacks)."""
    emb_ids, emb = index.emb_ids, index.emb

    def vectors(article_ids: np.ndarray) -> np.ndarray:
        a = np.asarray(article_ids, dtype=np.int64)
        out = np.zeros((len(a), emb.shape[1]), dtype=np.float32)
        if len(emb_ids):
            pos = np.clip(np.searchsorted(emb_ids, a), 0, len(emb_ids) - 1)
            ok = emb_ids[pos] == a
            out[ok] = emb[pos[ok]]
        return out

    return vectors
