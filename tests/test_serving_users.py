"""The user side of serving: the index files and Redis give the same lists; Redis holds whole versions only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from serving_support import EarlierChampion

from pipelines import columns as C
from pipelines.config import load_params
from pipelines.errors import InputError
from pipelines.serving_index import ServingIndex, current, refresh
from pipelines.user_store import RETIRE_GRACE_S, UserStoreConfig, key
from serving import recommend as rec
from serving.index_source import FolderIndexSource
from serving.models import ModelHolder
from serving.state import Click
from serving.users import RedisUserStore

EPOCH_MS = int(load_params("data")["epoch_ms"])


@pytest.fixture(scope="module")
def data_root(serving_bundle):
    return serving_bundle.parent / "data"


@pytest.fixture
def store_config(redis_server, redis_prefix):
    return UserStoreConfig(url=redis_server, prefix=redis_prefix, ttl_seconds=3600)


def _refresh(data_root, index_root, hour, user_store=None, keep=3):
    params = {"index_dir": str(index_root), "keep": keep}
    return refresh(data_root, hour, params, load_params("candidates"), load_params("features"), EPOCH_MS, user_store)


def _served(serving_bundle, index_root, user_store=None):
    # as the service does: with users in Redis the registry's model is loaded without its own state
    holder = ModelHolder(EarlierChampion(serving_bundle, 10, own_state=user_store is None), "champion", "challenger",
                         index_source=FolderIndexSource(index_root, compile_ranker=False, user_store=user_store))
    holder.refresh()
    return holder


def _same_rows(a, b):
    assert a.clicks.keys() == b.clicks.keys()
    for col in a.clicks:
        assert a.clicks[col].dtype == b.clicks[col].dtype and np.array_equal(a.clicks[col], b.clicks[col]), col
    pd.testing.assert_frame_equal(a.users, b.users)
    assert a.profiles.dtype == b.profiles.dtype and np.array_equal(a.profiles, b.profiles)
    pd.testing.assert_frame_equal(a.user_categories.reset_index(drop=True), b.user_categories.reset_index(drop=True))


def test_file_and_redis_stores_serve_the_same_lists(serving_bundle, data_root, tmp_path, store_config):
    index_root = tmp_path / "idx"
    _refresh(data_root, index_root, 14, store_config)
    files = _served(serving_bundle, index_root).slots.champion
    redis = _served(serving_bundle, index_root, store_config).slots.champion
    assert files.index_hour == redis.index_hour == 15
    assert redis.info["index"]["users"] == "redis"
    # the Redis replica holds no user's state: no history, empty user tables
    assert redis.bundle.bundle.history is None and len(redis.bundle.bundle.tables.users) == 0
    assert redis.bundle.bundle.tables.profiles.shape[0] == 0 and len(redis.bundle.bundle.tables.user_categories) == 0
    assert len(files.bundle.bundle.tables.users) > 0  # the file store's does (the comparison is not vacuous)

    a, b = files.bundle, redis.bundle
    assert a.users.n_users == b.users.n_users > 50
    assert a.context_default == b.context_default and a.context_codes == b.context_codes
    known = [u for u, _ in a.users.listing(range(a.users.n_users))]
    assert known == [u for u, _ in b.users.listing(range(b.users.n_users))]
    users = known[:: max(1, len(known) // 40)] + [known[-1] + 1, 10**12]  # a sample plus two unknown users
    cutoff = rec.cutoff_ms(a)
    pool = a.bundle.index.pool[C.ARTICLE_ID].to_numpy()
    assert rec.cutoff_ms(b) == cutoff
    for i, user in enumerate(users):
        _same_rows(a.users.rows(user), b.users.rows(user))
        recent = [] if i % 3 else [Click(int(pool[i % len(pool)]), cutoff + 60_000)]  # every third: online refit
        context = rec.Context(device=1) if i % 2 else rec.Context()
        got = [rec.recommend(p, user, recent, context, cutoff + 120_000, 10, {"diversity": "mmr", "mmr_depth": 30, "mmr_lambda": 0.7}
                             if i % 4 == 1 else None) for p in (a, b)]
        assert got[0].article_ids == got[1].article_ids and got[0].cold_start == got[1].cold_start
        assert [x["score"] for x in got[0].items] == [x["score"] for x in got[1].items]
        assert [x["sources"] for x in got[0].items] == [x["sources"] for x in got[1].items]
        assert got[0].warnings == got[1].warnings and np.array_equal(got[0].read, got[1].read)
        assert rec.user_history(a, user, recent, 5, cutoff) == rec.user_history(b, user, recent, 5, cutoff)
    assert sum(1 for u in users if len(a.users.rows(u).clicks[C.USER_ID])) >= 40  # known users were compared
    for order, seed in (("active", 0), ("random", 0), ("random", 7)):
        assert rec.known_users(a, 25, order, seed) == rec.known_users(b, 25, order, seed)
    assert rec.known_users(a, 5, "active")[0]["clicks"] >= rec.known_users(a, 5, "active")[-1]["clicks"]


def test_a_version_is_current_only_once_whole_in_redis_and_old_ones_expire(serving_bundle, data_root, tmp_path,
                                                                           store_config, redis_server):
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_server)
    index_root = tmp_path / "idx"
    _refresh(data_root, index_root, 12, store_config, keep=2)
    first = json.loads((index_root / "hour=013" / "index.json").read_text())["user_store"]
    meta = json.loads(client.get(key(store_config.prefix, first["namespace"], "meta")))
    assert meta["users"] == first["users"] > 0 and meta["users_with_clicks"] <= meta["users"]
    one_user = client.keys(f"{store_config.prefix}{first['namespace']}:u:*")[0]
    assert 0 < client.ttl(one_user) <= store_config.ttl_seconds  # written with a TTL

    # the same hour republished with the same data: the same keys, nothing retired
    _refresh(data_root, index_root, 12, store_config, keep=2)
    again = json.loads((index_root / "hour=013" / "index.json").read_text())["user_store"]
    assert again["namespace"] == first["namespace"] and again["payload_bytes"] == first["payload_bytes"]
    assert client.ttl(one_user) > RETIRE_GRACE_S

    # a newer version becomes current: the one before is set to expire soon (replicas serve the current one)
    _refresh(data_root, index_root, 13, store_config, keep=2)
    assert (index_root / "hour=013").exists() and 0 < client.ttl(one_user) <= RETIRE_GRACE_S
    second = json.loads((index_root / "hour=014" / "index.json").read_text())["user_store"]["namespace"]
    assert client.ttl(key(store_config.prefix, second, "meta")) > RETIRE_GRACE_S
    # a replayed old hour never becomes current: its state is not written to Redis at all
    before = len(client.keys(f"{store_config.prefix}*"))
    _refresh(data_root, index_root, 12, store_config, keep=3)
    assert "user_store" not in json.loads((index_root / "hour=013" / "index.json").read_text())
    assert len(client.keys(f"{store_config.prefix}*")) == before and current(index_root)["cutoff_hour"] == 14
    _refresh(data_root, index_root, 14, store_config, keep=2)
    assert not (index_root / "hour=013").exists()
    assert 0 < client.ttl(key(store_config.prefix, second, "meta")) <= RETIRE_GRACE_S

    # a replica refuses a version whose user state is gone, and keeps serving the one it has
    holder = _served(serving_bundle, index_root, store_config)
    assert holder.slots.champion.index_hour == 15
    served = holder.slots.champion
    assert served.bundle.users.ping()
    _refresh(data_root, index_root, 15, store_config, keep=2)
    gone = json.loads((index_root / "hour=016" / "index.json").read_text())["user_store"]["namespace"]
    client.delete(key(store_config.prefix, gone, "meta"))  # as if expired or evicted
    holder.refresh()
    assert holder.slots.champion is served and "not in Redis" in holder.last_error
    # an index published without the user store is refused by a replica that reads users from Redis
    _refresh(data_root, index_root, 16, None, keep=2)
    assert current(index_root)["cutoff_hour"] == 17
    holder.refresh()
    assert holder.slots.champion is served and "no user state in Redis" in holder.last_error
    client.close()


def test_a_redis_replica_serves_nothing_until_an_index_with_its_users_is_published(serving_bundle, data_root,
                                                                                    tmp_path, store_config):
    index_root = tmp_path / "idx"
    holder = _served(serving_bundle, index_root, store_config)
    assert holder.slots.champion is None and "waits for an hourly index" in holder.last_error
    _refresh(data_root, index_root, 14, store_config)
    assert holder.refresh() is True
    served = holder.slots.champion
    assert served.index_hour == 15 and served.base.history is None and served.base.tables is None
    assert holder.refresh() is False


def test_a_redis_replica_loads_only_the_article_side(serving_bundle, data_root, tmp_path, store_config):
    index_root = tmp_path / "idx"
    _refresh(data_root, index_root, 14, store_config)
    source = FolderIndexSource(index_root, compile_ranker=False, user_store=store_config)
    index = source.load(current(index_root))
    whole = ServingIndex.load(index_root / "hour=015")
    assert index.history is None and list(index.tables.users.columns) == list(whole.tables.users.columns)
    assert (index.tables.users.dtypes == whole.tables.users.dtypes).all()
    assert index.tables.profiles.shape == (0, whole.tables.profiles.shape[1])
    pd.testing.assert_frame_equal(index.tables.articles, whole.tables.articles)


def test_redis_down_at_request_time_fails_fast(serving_bundle, data_root, tmp_path, store_config):
    import time

    import redis as redis_py

    index_root = tmp_path / "idx"
    _refresh(data_root, index_root, 14, store_config)
    served = _served(serving_bundle, index_root, store_config).slots.champion
    users = served.bundle.users
    user = users.listing([0])[0][0]
    dead = UserStoreConfig(url="redis://127.0.0.1:1/0", prefix=store_config.prefix, ttl_seconds=3600).client()
    users._redis = dead  # the served version's Redis stops answering
    assert not users.ping()
    started = time.perf_counter()
    with pytest.raises(redis_py.exceptions.ConnectionError):
        rec.recommend(served.bundle, user, [], rec.Context(), rec.cutoff_ms(served.bundle), 10)
    assert time.perf_counter() - started < 5  # the client's short timeouts, not a hang
    with pytest.raises(LookupError, match="not in Redis"):
        RedisUserStore(UserStoreConfig(url=store_config.url, prefix=store_config.prefix, ttl_seconds=60).client(),
                       store_config, "hour=999.none")


@pytest.mark.parametrize(("serve", "message"), [
    ({"user_store_url": "http://redis:6379"}, "serve.user_store_url must be a Redis URL"),
    ({"user_store_url": 6379}, "serve.user_store_url must be a Redis URL"),
    ({"user_store_url": "redis://r:6379/0", "user_store_ttl_hours": 0}, "serve.user_store_ttl_hours"),
    ({"user_store_url": "redis://r:6379/0", "user_store_ttl_hours": "2d"}, "serve.user_store_ttl_hours"),
    ({"user_store_url": "redis://r:6379/0", "user_store_prefix": ""}, "serve.user_store_prefix"),
])
def test_bad_user_store_settings_are_refused_with_the_key_named(serve, message):
    base = {"user_store_prefix": "newsrec:users:", "user_store_ttl_hours": 48}
    with pytest.raises(InputError, match=message):
        UserStoreConfig.from_serve({**base, **serve})


def test_settings_read_the_user_store_once():
    from serving.settings import Settings

    settings = Settings.from_params()
    assert settings.user_store is None  # the embedded default: the index files
    cfg = settings.with_(user_store_url="redis://127.0.0.1:6379/3").user_store
    assert cfg == UserStoreConfig("redis://127.0.0.1:6379/3", settings.user_store_prefix,
                                  int(settings.user_store_ttl_hours * 3600))
    with pytest.raises(ValueError, match="hourly_index"):
        settings.with_(user_store_url="redis://127.0.0.1:6379/3", hourly_index=False)
    with pytest.raises(InputError, match="must be a Redis URL"):
        settings.with_(user_store_url="127.0.0.1:6379")


def test_the_api_over_redis_users_answers_like_the_files_and_503s_when_redis_is_down(
        serving_bundle, data_root, tmp_path, store_config):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    index_root = tmp_path / "idx"
    _refresh(data_root, index_root, 14, store_config)
    base = Settings.from_params(impression_log=tmp_path / "imp.jsonl", click_log=tmp_path / "clk.jsonl",
                                compile_ranker=False, explore_share=0.0, clock="cutoff").with_(index_dir=index_root)
    redis_settings = base.with_(user_store_url=store_config.url, user_store_prefix=store_config.prefix)
    apps = {name: create_app(s, source=EarlierChampion(serving_bundle, 10, own_state=s.user_store is None),
                             poll=False) for name, s in (("files", base), ("redis", redis_settings))}
    with TestClient(apps["files"]) as files, TestClient(apps["redis"]) as redis:
        assert redis.get("/readyz").status_code == 200
        users = [u["user_id"] for u in files.get("/v1/users", params={"n": 8}).json()]
        assert users == [u["user_id"] for u in redis.get("/v1/users", params={"n": 8}).json()]
        for user in users + [10**12]:
            lists = [c.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json() for c in (files, redis)]
            assert [i["article_id"] for i in lists[0]["items"]] == [i["article_id"] for i in lists[1]["items"]]
            assert len(lists[0]["items"]) == 10
            history = [c.get(f"/v1/users/{user}/history").json() for c in (files, redis)]
            assert history[0] == history[1]

        served = apps["redis"].state.holder.slots.champion
        served.bundle.users._redis = UserStoreConfig("redis://127.0.0.1:1/0", "x:", 3600).client()
        down = redis.get(f"/v1/users/{users[0]}/recommendations")
        assert down.status_code == 503 and "Redis does not answer" in down.json()["detail"]
        ready = redis.get("/readyz")
        assert ready.status_code == 503 and any("not in Redis" in r for r in ready.json()["reasons"])
        assert redis.get("/healthz").status_code == 200  # alive: the orchestrator must not kill it for this


def test_forget_user_erases_the_user_from_every_version_in_redis(serving_bundle, data_root, tmp_path, store_config):
    from pipelines import forget_user as F

    index_root = tmp_path / "idx"
    _refresh(data_root, index_root, 14, store_config)
    served = _served(serving_bundle, index_root, store_config).slots.champion
    users = served.bundle.users
    n = users.n_users
    user = rec.known_users(served.bundle, 1, "active")[0]["user_id"]  # also in the /v1/users top list
    assert len(users.rows(user).clicks[C.USER_ID]) > 0
    report = F.ErasureReport()
    F.erase_user_store(store_config.client(), store_config, user, report)
    assert report.removed["user_store"] == 1
    assert len(users.rows(user).clicks[C.USER_ID]) == 0 and len(users.rows(user).users) == 0
    assert users.n_users == n - 1 and user not in [u for u, _ in users.listing(range(users.n_users))]
    assert user not in [u["user_id"] for u in rec.known_users(served.bundle, 50, "active")]
    assert rec.recommend(served.bundle, user, [], rec.Context(), rec.cutoff_ms(served.bundle), 10).cold_start
    assert len(rec.known_users(served.bundle, n, "random")) == n - 1
    F.erase_user_store(store_config.client(), store_config, user, report)  # nothing left to erase
    assert report.removed["user_store"] == 1


def test_a_republished_hour_with_other_state_moves_the_replicas_to_its_keys(serving_bundle, data_root, tmp_path,
                                                                          store_config):
    from pipelines.serving_index import publish

    index_root = tmp_path / "idx"
    _refresh(data_root, index_root, 14, store_config)
    holder = _served(serving_bundle, index_root, store_config)
    before = holder.slots.champion.bundle.users.namespace
    assert current(index_root)["user_store"] == before
    # the same hour again, one reader fewer (as after an erasure): other state, other keys, a new pointer
    serving = ServingIndex.load(index_root / "hour=015")
    gone = int(serving.history[C.USER_ID].iloc[0])
    serving.history = serving.history[serving.history[C.USER_ID] != gone].reset_index(drop=True)
    publish(serving, index_root, 3, store_config)
    assert current(index_root)["cutoff_hour"] == 15 and current(index_root)["user_store"] != before
    assert holder.refresh() is True
    users = holder.slots.champion.bundle.users
    assert users.namespace == current(index_root)["user_store"]
    assert len(users.rows(gone).clicks[C.USER_ID]) == 0


def test_a_refresh_whose_redis_does_not_answer_publishes_nothing(data_root, tmp_path, store_config):
    from pipelines.errors import NewsrecError

    index_root = tmp_path / "idx"
    _refresh(data_root, index_root, 13, store_config)
    dead = UserStoreConfig("redis://127.0.0.1:1/0", store_config.prefix, 3600)
    with pytest.raises(NewsrecError, match=r"serve.user_store_url\) failed.*nothing was published"):
        _refresh(data_root, index_root, 14, dead)
    assert current(index_root)["cutoff_hour"] == 14 and not (index_root / "hour=015").exists()


def test_a_mirror_of_versions_whose_users_are_in_redis_carries_no_user_files(serving_bundle, data_root, tmp_path,
                                                                              store_config):
    """With a user store the mirror (refresh.publish_uri, a shared folder here) sends only what Redis replicas
    read; such a replica serves from it, and one configured without Redis is told why it cannot."""
    from pipelines import storage
    from pipelines.serving_index import fetch, remote_current
    from serving.index_source import MirroredIndexSource

    mirror_uri = str(tmp_path / "shared")
    params = {"index_dir": str(tmp_path / "idx"), "keep": 2, "publish_uri": mirror_uri}
    refresh(data_root, 14, params, load_params("candidates"), load_params("features"), EPOCH_MS, store_config)
    copy = remote_current(mirror_uri)["path"]
    mirrored = set(storage.list_files(f"{mirror_uri}/{copy}"))
    assert copy.startswith("hour=015.") and "index.json" in mirrored
    assert not {"history.npy", "features/profiles.npy"} & mirrored
    assert "history.npy" in storage.list_files(str(tmp_path / "idx" / "hour=015"))

    holder = ModelHolder(EarlierChampion(serving_bundle, 10, own_state=False), "champion", "challenger",
                         index_source=MirroredIndexSource(mirror_uri, tmp_path / "replica", compile_ranker=False,
                                                          user_store=store_config))
    holder.refresh()
    served = holder.slots.champion
    assert served is not None and served.index_hour == 15 and served.info["index"]["users"] == "redis"
    local = _served(serving_bundle, tmp_path / "idx").slots.champion.bundle  # the publisher's own files
    user = local.users.listing([0])[0][0]
    lists = [rec.recommend(b, user, [], rec.Context(), rec.cutoff_ms(b), 10).article_ids for b in (local, served.bundle)]
    assert len(lists[0]) == 10 and list(lists[0]) == list(lists[1])

    with pytest.raises(InputError, match="needs serve.user_store_url"):
        fetch(mirror_uri, remote_current(mirror_uri), tmp_path / "files-replica", user_side=True)
