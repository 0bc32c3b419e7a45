"""Online user state: each user's most recent clicks, capped and expiring.

The bundle knows a user's history up to the model's cutoff; this store holds what happened since, so a
click posted to the API changes the very next recommendation (profile and read-article exclusion). Two
implementations of one small interface: in-process (the default, one replica) and Redis (shared by
replicas, survives restarts). Both keep the newest `max_clicks` per user and forget a user `ttl_seconds`
after their last click, so memory stays bounded however long the service runs.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple, Protocol


class Click(NamedTuple):
    article_id: int
    timestamp_ms: int


class UserStateStore(Protocol):
    """What the service needs from a state backend."""

    def add_click(self, user_id: int, article_id: int, timestamp_ms: int) -> None:
        """Record one click (newest first in `recent`)."""

    def recent(self, user_id: int) -> list[Click]:
        """The user's retained clicks, newest first; empty for an unknown or expired user."""

    def forget(self, user_id: int) -> int:
        """Erase the user's clicks (newsrec forget-user); returns how many were held."""

    def ping(self) -> bool:
        """True when the backend answers (readiness)."""

    def close(self) -> None:
        """Release connections."""


class InMemoryUserState:
    """Thread-safe per-process store; an LRU over users bounds memory, a TTL drops idle users."""

    def __init__(
        self,
        max_clicks: int,
        ttl_seconds: float,
        max_users: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_clicks = max_clicks
        self.ttl_seconds = ttl_seconds
        self.max_users = max_users
        self._clock = clock
        # user -> (expires_at, clicks newest first); order = least recently written first.
        self._users: OrderedDict[int, tuple[float, list[Click]]] = OrderedDict()
        self._lock = threading.Lock()

    def add_click(self, user_id: int, article_id: int, timestamp_ms: int) -> None:
        now = self._clock()
        with self._lock:
            entry = self._users.pop(user_id, None)
            clicks = entry[1] if entry is not None and entry[0] > now else []
            clicks = [Click(int(article_id), int(timestamp_ms)), *clicks][: self.max_clicks]
            self._users[user_id] = (now + self.ttl_seconds, clicks)
            while len(self._users) > self.max_users:
                self._users.popitem(last=False)

    def recent(self, user_id: int) -> list[Click]:
        now = self._clock()
        with self._lock:
            entry = self._users.get(user_id)
            if entry is None:
                return []
            if entry[0] <= now:
                del self._users[user_id]
                return []
            return list(entry[1])

    def __len__(self) -> int:
        return len(self._users)

    def forget(self, user_id: int) -> int:
        with self._lock:
            entry = self._users.pop(user_id, None)
        return 0 if entry is None else len(entry[1])

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


class RedisUserState:
    """One Redis list per user (`<prefix><user_id>`), newest first, trimmed and re-expired on each click."""

    def __init__(self, url: str, prefix: str, max_clicks: int, ttl_seconds: int) -> None:
        import redis

        self.prefix = prefix
        self.max_clicks = max_clicks
        self.ttl_seconds = int(ttl_seconds)
        # Short timeouts: a slow Redis must not hold a request much longer than the latency budget.
        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def _key(self, user_id: int) -> str:
        return f"{self.prefix}{int(user_id)}"

    def add_click(self, user_id: int, article_id: int, timestamp_ms: int) -> None:
        key = self._key(user_id)
        # One round trip, applied atomically, so concurrent writers never see an untrimmed list.
        pipe = self._redis.pipeline(transaction=True)
        pipe.lpush(key, f"{int(article_id)}:{int(timestamp_ms)}")
        pipe.ltrim(key, 0, self.max_clicks - 1)
        pipe.expire(key, self.ttl_seconds)
        pipe.execute()

    def recent(self, user_id: int) -> list[Click]:
        raw = self._redis.lrange(self._key(user_id), 0, self.max_clicks - 1)
        out = []
        for item in raw:
            article, ts = item.split(b":")
            out.append(Click(int(article), int(ts)))
        return out

    def forget(self, user_id: int) -> int:
        pipe = self._redis.pipeline(transaction=True)
        pipe.llen(self._key(user_id))
        pipe.delete(self._key(user_id))
        held, _ = pipe.execute()
        return int(held)

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except Exception:  # noqa: BLE001 - any failure to answer means "not ready"
            return False

    def close(self) -> None:
        self._redis.close()


def make_state_store(
    redis_url: str | None, prefix: str, max_clicks: int, ttl_seconds: int, max_users: int
) -> UserStateStore:
    """Redis when a URL is configured, else the in-process store."""
    if redis_url:
        return RedisUserState(redis_url, prefix, max_clicks, ttl_seconds)
    return InMemoryUserState(max_clicks, ttl_seconds, max_users)
