"""Exploration for fresh articles: a few slots go to new stories chosen by Thompson sampling.

A story published minutes ago has no clicks, so no learned signal can promote it, and without exposure it
never gets any. `serve.explore_share` of each list (floor(k x share) slots, the last ones) goes to fresh
articles (published within `serve.explore_fresh_hours` of the request, in the served pool, unread by
the user, not already in the list), picked by the largest draw from each one's Beta posterior of
click-through: Beta(prior_clicks + clicks, prior_misses + shown - clicks), where `shown` counts every
list the service put the article in and `clicks` every click posted for it. A story that gets read
keeps being explored until the ranker learns it from the clicks at the next hourly refresh; one that is
ignored fades out. Counts live in process, or in Redis when `serve.redis_url` is set (shared by
replicas). Impressions log which articles were explored, so `newsrec ab-report` shows the explored
slots' click-through beside the others' (what exploration costs and what it finds). Offline evaluation
does not explore.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipelines import columns as C

EXPLORE = "explore"


class ExploreStats(Protocol):
    def shown(self, article_ids: Sequence[int]) -> None:
        """Count one impression for each article."""

    def clicked(self, article_id: int) -> None:
        """Count one click."""

    def counts(self, article_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shown, clicked) per article id."""


class InProcessExploreStats:
    """Counts in this process; articles are forgotten `forget_after` ids later (fresh ones are what matter)."""

    def __init__(self, max_articles: int = 200_000) -> None:
        self._shown: dict[int, int] = {}
        self._clicked: dict[int, int] = {}
        self._max = max_articles
        self._lock = threading.Lock()

    def shown(self, article_ids: Sequence[int]) -> None:
        with self._lock:
            for a in article_ids:
                self._shown[int(a)] = self._shown.get(int(a), 0) + 1
            if len(self._shown) > self._max:  # oldest-inserted first: dicts keep insertion order
                for a in list(self._shown)[: len(self._shown) - self._max]:
                    self._shown.pop(a, None)
                    self._clicked.pop(a, None)

    def clicked(self, article_id: int) -> None:
        with self._lock:
            self._clicked[int(article_id)] = self._clicked.get(int(article_id), 0) + 1

    def counts(self, article_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            shown = np.array([self._shown.get(int(a), 0) for a in article_ids], dtype=np.int64)
            clicked = np.array([self._clicked.get(int(a), 0) for a in article_ids], dtype=np.int64)
        return shown, clicked


class RedisExploreStats:
    """Counts in two Redis hashes shared by replicas (expiring a day after the last update).

    A request must not wait on Redis for a bandit's bookkeeping: increments are buffered in process and
    written at most every `sync_seconds`, and counts read are cached that long (a posterior a second old
    explores as well)."""

    def __init__(self, url: str, prefix: str, ttl_seconds: int = 86_400, sync_seconds: float = 1.0,
                 clock=time.monotonic) -> None:
        import redis

        self.keys = (f"{prefix}explore:shown", f"{prefix}explore:clicked")
        self.ttl = ttl_seconds
        self.sync_seconds = sync_seconds
        self._clock = clock
        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._pending: tuple[Counter, Counter] = (Counter(), Counter())
        self._flushed = clock()
        self._cache: dict[int, tuple[int, int]] = {}
        self._cached_at = -float("inf")
        self._lock = threading.Lock()

    def shown(self, article_ids: Sequence[int]) -> None:
        with self._lock:
            self._pending[0].update(int(a) for a in article_ids)
        self._maybe_flush()

    def clicked(self, article_id: int) -> None:
        with self._lock:
            self._pending[1][int(article_id)] += 1
        self._maybe_flush()

    def flush(self) -> None:
        """Write the buffered increments now."""
        with self._lock:
            pending, self._pending = self._pending, (Counter(), Counter())
            self._flushed = self._clock()
        if not (pending[0] or pending[1]):
            return
        pipe = self._redis.pipeline(transaction=False)
        for key, counts in zip(self.keys, pending, strict=True):
            for a, n in counts.items():
                pipe.hincrby(key, str(a), n)
            if counts:
                pipe.expire(key, self.ttl)
        pipe.execute()

    def _maybe_flush(self) -> None:
        if self._clock() - self._flushed >= self.sync_seconds:
            self.flush()

    def counts(self, article_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(article_ids) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        now = self._clock()
        if now - self._cached_at >= self.sync_seconds:
            self._cache, self._cached_at = {}, now
        missing = [int(a) for a in article_ids if int(a) not in self._cache]
        if missing:
            fields = [str(a) for a in missing]
            pipe = self._redis.pipeline(transaction=False)
            pipe.hmget(self.keys[0], fields)
            pipe.hmget(self.keys[1], fields)
            shown, clicked = pipe.execute()
            self._cache.update({a: (int(s or 0), int(c or 0)) for a, s, c in zip(missing, shown, clicked,
                                                                                  strict=True)})
        got = [self._cache[int(a)] for a in article_ids]
        return np.array([g[0] for g in got], dtype=np.int64), np.array([g[1] for g in got], dtype=np.int64)


def make_explore_stats(redis_url: str | None, prefix: str) -> ExploreStats:
    return RedisExploreStats(redis_url, prefix) if redis_url else InProcessExploreStats()


@dataclass
class Explorer:
    """Thompson sampling over fresh pool articles; see the module docstring."""

    share: float
    fresh_hours: float
    prior_clicks: float
    prior_misses: float
    stats: ExploreStats
    rng: np.random.Generator

    def slots(self, k: int) -> int:
        return int(np.floor(k * self.share + 1e-9)) if self.share > 0 else 0

    def choose(self, prepared, exclude: set[int], n: int, now_ms: int) -> list[tuple[int, float]]:
        """Up to `n` (article id, posterior draw) of fresh articles of `prepared`'s pool, none in `exclude`,
        best draw first."""
        if n <= 0:
            return []
        pool = prepared.bundle.index.pool
        ids = pool[C.ARTICLE_ID].to_numpy()
        created = pool[C.CREATED_AT_TS].to_numpy()
        fresh = (created <= now_ms) & (created >= now_ms - self.fresh_hours * C.HOUR_MS)
        ids = ids[fresh]
        if exclude and len(ids):
            ids = ids[~np.isin(ids, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))]
        if len(ids) == 0:
            return []
        shown, clicked = self.stats.counts(ids)
        draw = self.rng.beta(self.prior_clicks + clicked, self.prior_misses + np.maximum(shown - clicked, 0))
        best = np.argsort(-draw, kind="stable")[:n]
        return [(int(a), float(d)) for a, d in zip(ids[best], draw[best], strict=True)]
