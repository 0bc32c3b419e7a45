"""Online user state: capping, expiry and LRU in process; the same contract against a real Redis."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from serving.state import Click, InMemoryUserState, RedisUserState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.unit
def test_in_memory_keeps_newest_clicks_capped():
    store = InMemoryUserState(max_clicks=3, ttl_seconds=60, max_users=10)
    for i in range(5):
        store.add_click(7, 100 + i, 1_000 + i)
    assert store.recent(7) == [Click(104, 1004), Click(103, 1003), Click(102, 1002)]
    assert store.recent(8) == []


@pytest.mark.unit
def test_in_memory_ttl_runs_from_the_last_click():
    clock = FakeClock()
    store = InMemoryUserState(max_clicks=10, ttl_seconds=60, max_users=10, clock=clock)
    store.add_click(1, 10, 0)
    clock.now += 50
    store.add_click(1, 11, 1)  # re-arms the TTL
    clock.now += 50
    assert [c.article_id for c in store.recent(1)] == [11, 10]
    clock.now += 11
    assert store.recent(1) == []
    assert len(store) == 0
    store.add_click(1, 12, 2)  # an expired user starts afresh, old clicks do not come back
    assert [c.article_id for c in store.recent(1)] == [12]


@pytest.mark.unit
def test_in_memory_drops_least_recently_active_users_beyond_the_cap():
    store = InMemoryUserState(max_clicks=5, ttl_seconds=60, max_users=2)
    store.add_click(1, 10, 0)
    store.add_click(2, 20, 0)
    store.add_click(1, 11, 1)  # user 1 is now the most recent writer
    store.add_click(3, 30, 0)
    assert store.recent(2) == []
    assert [c.article_id for c in store.recent(1)] == [11, 10]
    assert len(store) == 2


@pytest.mark.unit
def test_in_memory_concurrent_writers_lose_nothing_under_the_cap():
    store = InMemoryUserState(max_clicks=10_000, ttl_seconds=60, max_users=10)

    def writer(offset: int) -> None:
        for i in range(500):
            store.add_click(1, offset + i, i)

    threads = [threading.Thread(target=writer, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.recent(1)) == 2000


@pytest.fixture
def redis_store(redis_server):
    prefix = f"newsrec-test:{uuid.uuid4().hex}:"
    store = RedisUserState(redis_server, prefix=prefix, max_clicks=3, ttl_seconds=2)
    yield store
    keys = store._redis.keys(prefix + "*")
    if keys:
        store._redis.delete(*keys)
    store.close()


@pytest.mark.integration
def test_redis_store_caps_orders_and_expires(redis_store):
    assert redis_store.ping()
    for i in range(5):
        redis_store.add_click(42, 100 + i, 1_000 + i)
    assert redis_store.recent(42) == [Click(104, 1004), Click(103, 1003), Click(102, 1002)]
    ttl = redis_store._redis.ttl(redis_store._key(42))
    assert 0 < ttl <= 2
    assert redis_store.recent(43) == []
    time.sleep(2.2)
    assert redis_store.recent(42) == []


@pytest.mark.integration
def test_redis_store_is_shared_between_clients(redis_store, redis_server):
    other = RedisUserState(redis_server, prefix=redis_store.prefix, max_clicks=3, ttl_seconds=60)
    other.add_click(5, 55, 123)
    assert redis_store.recent(5) == [Click(55, 123)]
    other.close()


@pytest.mark.integration
def test_redis_down_is_reported_not_raised_by_ping():
    store = RedisUserState("redis://127.0.0.1:1/0", prefix="x:", max_clicks=3, ttl_seconds=60)
    assert store.ping() is False
