"""Real-time article popularity between hourly index refreshes.

Every click posted to `/v1/events` is counted per article and minute (in process by default; in Redis
when `serve.redis_url` is set, so every replica sees every replica's clicks). Every
`serve.live_refresh_seconds` the service folds the clicks received since the index's cutoff into what
requests read, as one atomic swap per served model (`with_live`):

- the pool's `trend` (clicks decayed with `candidates.trend_half_life_hours`): the index's value decayed
  from its cutoff to now, plus each live click decayed from its minute, which re-sorts the `trend`
  source and the trend prior of the embedding kNN;
- the article table's time-dependent features: `a_age_h` and `a_hours_since_last_click` move with the
  clock; `a_clicks_1h`/`6h`/`24h` are the index's count over the part of its window still inside the
  window now (assuming its clicks were spread evenly over it: the index keeps counts, not times) plus
  the live clicks inside the window; `a_clicks_all` adds every live click; `a_trend`, the click shares,
  the 6-hour rank and the velocity are recomputed from them as the pipeline computes them.

The hourly refresh replaces all of this with exact values; only clicks after the new cutoff stay live.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import defaultdict
from typing import Any, Protocol

import numpy as np

from pipelines import columns as C
from pipelines.features import derive_article_features

MINUTE_MS = 60_000
# Live counts older than this are never read (the widest article window is 24 h before the newest index).
RETAIN_MS = 26 * C.HOUR_MS
_WINDOWS = {"a_clicks_1h": 1, "a_clicks_6h": 6, "a_clicks_24h": 24}


class LiveCounts(Protocol):
    def add(self, article_id: int, timestamp_ms: int) -> None:
        """Count one click."""

    def since(self, start_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(article ids, minute start ms, clicks) of every minute bucket at or after `start_ms`'s minute."""


class InProcessLiveCounts:
    """Counts in this process (one API worker); old minutes are dropped as new ones arrive."""

    def __init__(self) -> None:
        self._minutes: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self._lock = threading.Lock()

    def add(self, article_id: int, timestamp_ms: int) -> None:
        minute = int(timestamp_ms) // MINUTE_MS * MINUTE_MS
        with self._lock:
            self._minutes[minute][int(article_id)] += 1
            oldest = minute - RETAIN_MS
            for stale in [m for m in self._minutes if m < oldest]:
                del self._minutes[stale]

    def since(self, start_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        first = int(start_ms) // MINUTE_MS * MINUTE_MS
        with self._lock:
            rows = [(a, m, n) for m, arts in self._minutes.items() if m >= first for a, n in arts.items()]
        return _arrays(rows)


class RedisLiveCounts:
    """Counts in Redis, shared by replicas: one hash per minute (article -> clicks), expiring after a day."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.prefix = f"{prefix}live:"
        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def add(self, article_id: int, timestamp_ms: int) -> None:
        minute = int(timestamp_ms) // MINUTE_MS * MINUTE_MS
        key = f"{self.prefix}{minute}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.hincrby(key, str(int(article_id)), 1)
        pipe.pexpire(key, RETAIN_MS)
        pipe.zadd(f"{self.prefix}minutes", {str(minute): minute})
        pipe.zremrangebyscore(f"{self.prefix}minutes", "-inf", minute - RETAIN_MS)
        pipe.execute()

    def since(self, start_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        first = int(start_ms) // MINUTE_MS * MINUTE_MS
        minutes = [int(m) for m in self._redis.zrangebyscore(f"{self.prefix}minutes", first, "+inf")]
        pipe = self._redis.pipeline(transaction=False)
        for m in minutes:
            pipe.hgetall(f"{self.prefix}{m}")
        rows = [(int(a), m, int(n)) for m, h in zip(minutes, pipe.execute(), strict=True) for a, n in h.items()]
        return _arrays(rows)


def _arrays(rows: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    a, m, n = (np.asarray(col, dtype=np.int64) for col in zip(*rows, strict=True))
    return a, m, n


def make_live_counts(redis_url: str | None, prefix: str) -> LiveCounts:
    return RedisLiveCounts(redis_url, prefix) if redis_url else InProcessLiveCounts()


def with_live(prepared: Any, live: LiveCounts, now_ms: int | None = None) -> Any:
    """`prepared` (serving.recommend.Prepared) with the live clicks since its index's cutoff folded into
    the pool's trend and the article table as of `now_ms` (default: the end of the newest live minute, for
    replayed traffic); `prepared` itself when nothing arrived since the cutoff. The result shares
    everything else with `prepared`."""
    from pipelines.candidates import TREND

    bundle = prepared.bundle
    index, tables = bundle.index, bundle.tables
    cutoff = int(index.cutoff_ms)
    articles, minute, clicks = live.since(cutoff)
    if now_ms is None:
        now_ms = int(minute.max()) + MINUTE_MS if len(minute) else cutoff
    now = max(int(now_ms), cutoff)
    keep = (minute >= cutoff) & (minute < now)
    articles, minute, clicks = articles[keep], minute[keep], clicks[keep]
    if len(articles) == 0:
        return prepared
    half_life_h = float(index.params["trend_half_life_hours"])
    age_h = (now - cutoff) / C.HOUR_MS
    # A minute's clicks count from its middle, like the pipeline counts an hour's from its middle.
    weight = clicks * np.power(0.5, (now - minute - MINUTE_MS / 2) / C.HOUR_MS / half_life_h)
    ids, pos = np.unique(articles, return_inverse=True)

    pool = index.pool.copy()
    pool_ids = pool[C.ARTICLE_ID].to_numpy()
    live_trend = np.bincount(pos, weights=weight)
    at = np.searchsorted(ids, pool_ids)
    hit = (at < len(ids)) & (ids[np.minimum(at, len(ids) - 1)] == pool_ids)
    pool[TREND] = pool[TREND].to_numpy() * 0.5 ** (age_h / half_life_h) + np.where(
        hit, live_trend[np.minimum(at, len(ids) - 1)], 0.0)
    new_index = dataclasses.replace(index, pool=pool, _faiss=None,
                                    _cache={k: v for k, v in index._cache.items() if k == "cocl_slices"})
    new_index.trending()  # built here, off the request path
    new_index._faiss_index()

    table = tables.articles.copy()
    rows = table.index.get_indexer(ids)
    found = rows >= 0
    table["a_age_h"] = table["a_age_h"] + age_h
    for col, hours in _WINDOWS.items():
        inside = (minute >= now - hours * C.HOUR_MS)
        recent = np.bincount(pos[inside], weights=clicks[inside], minlength=len(ids))
        kept = table[col].to_numpy(np.float64) * max(0.0, 1.0 - age_h / hours)
        kept[rows[found]] += recent[found]
        table[col] = np.rint(kept).astype(table[col].dtype)
    total = np.bincount(pos, weights=clicks, minlength=len(ids))
    all_clicks = table["a_clicks_all"].to_numpy().copy()
    all_clicks[rows[found]] += total[found].astype(all_clicks.dtype)
    table["a_clicks_all"] = all_clicks
    derive_article_features(table)  # a_trend, shares, rank, velocity: as the pipeline derives them
    last = np.full(len(ids), -1, dtype=np.int64)
    np.maximum.at(last, pos, minute + MINUTE_MS)
    since_last = table["a_hours_since_last_click"].to_numpy(np.float64) + age_h
    since_last[rows[found]] = (now - last[found]) / C.HOUR_MS
    table["a_hours_since_last_click"] = since_last
    # The user-side caches stay valid; the article blocks are rebuilt from the new table (a copy with another
    # article table never reads the old ones), here, off the request path (the requests' copies share them).
    new_tables = dataclasses.replace(tables, articles=table)
    new_tables.build_article_blocks()
    return dataclasses.replace(prepared, bundle=dataclasses.replace(bundle, index=new_index, tables=new_tables))
