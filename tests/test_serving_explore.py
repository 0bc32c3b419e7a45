"""Exploration: fresh articles get a few slots by Thompson sampling, logged so the A/B report can judge it."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pipelines import columns as C
from pipelines.ab_report import ab_report
from pipelines.bundle import ServingBundle
from serving import recommend as rec
from serving.app import create_app
from serving.eventlog import read_log
from serving.explore import Explorer, InProcessExploreStats
from serving.settings import Settings


@pytest.fixture(scope="module")
def prepared(serving_bundle):
    return rec.prepare(ServingBundle.load(serving_bundle), compile_ranker=False)


def _fresh(prepared, hours):
    pool = prepared.bundle.index.pool
    now = prepared.cutoff_ms
    return pool.loc[pool[C.CREATED_AT_TS] >= now - hours * C.HOUR_MS, C.ARTICLE_ID].to_numpy()


@pytest.mark.unit
def test_slots_follow_the_share():
    ex = Explorer(0.1, 3, 1, 20, InProcessExploreStats(), np.random.default_rng(0))
    assert [ex.slots(k) for k in (1, 9, 10, 19, 20, 100)] == [0, 0, 1, 1, 2, 10]
    assert Explorer(0.0, 3, 1, 20, InProcessExploreStats(), np.random.default_rng(0)).slots(100) == 0


@pytest.mark.integration
def test_thompson_sampling_prefers_what_readers_click_and_only_fresh_unread(prepared):
    fresh = _fresh(prepared, 3)
    assert len(fresh) >= 3, "the tiny profile publishes fresh articles every hour"
    stats = InProcessExploreStats()
    good, bad = int(fresh[0]), int(fresh[1])
    for _ in range(200):
        stats.shown([good, bad])
    for _ in range(60):
        stats.clicked(good)
    ex = Explorer(0.1, 3, 1, 20, stats, np.random.default_rng(1))
    picks = [ex.choose(prepared, set(), 1, prepared.cutoff_ms)[0][0] for _ in range(200)]
    assert picks.count(good) > 150 and bad not in picks  # 30% vs 0% click-through after 200 showings
    assert set(picks) <= set(fresh.tolist())
    got = ex.choose(prepared, {good}, 5, prepared.cutoff_ms)
    assert good not in {a for a, _ in got} and len(got) == min(5, len(fresh) - 1)
    assert all(0 <= d <= 1 for _, d in got)


def _settings(registry, tmp_path, **changes) -> Settings:
    base = Settings.from_params(tracking_uri=registry["tracking_uri"], impression_log=tmp_path / "i.jsonl",
                                click_log=tmp_path / "c.jsonl", hourly_index=False, log_flush_seconds=0.0)
    return base.with_(**changes)


@pytest.mark.integration
def test_the_api_gives_the_last_slot_to_a_fresh_article_and_logs_it(serving_registry, serving_bundle, tmp_path):
    bundle = ServingBundle.load(serving_bundle)
    settings = _settings(serving_registry, tmp_path, challenger_share=0.0, explore_share=0.1)
    user = int(bundle.history[C.USER_ID].value_counts().index[0])
    read = set(bundle.history.loc[bundle.history[C.USER_ID] == user, C.CLICK_ARTICLE_ID])
    with TestClient(create_app(settings, poll=False)) as client:
        body = client.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
        items = body["items"]
        assert [i["rank"] for i in items] == list(range(1, 11))
        assert [i["sources"] == ["explore"] for i in items] == [False] * 9 + [True]
        explored = items[-1]
        assert explored["age_hours"] <= 3 and explored["article_id"] not in read
        assert len({i["article_id"] for i in items}) == 10
        short = client.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()
        assert all(i["sources"] != ["explore"] for i in short["items"])  # floor(5 x 0.1) = 0 slots
        assert client.post("/v1/events", json={"user_id": user, "article_id": explored["article_id"],
                                                "impression_id": body["impression_id"]}).status_code == 202
    impressions = read_log(tmp_path / "i.jsonl")
    assert impressions[0]["explored"] == [explored["article_id"]] and impressions[1]["explored"] == []
    report = ab_report(impressions, read_log(tmp_path / "c.jsonl"), 1800, 0.95)["exploration"]
    assert report["explored_slots"] == 1 and report["explored_clicks"] == 1 and report["articles_clicked"] == 1
    assert report["other_slots"] == 9 + 5 and report["other_clicks"] == 0


@pytest.mark.integration
def test_no_exploration_when_switched_off(serving_registry, serving_bundle, tmp_path):
    settings = _settings(serving_registry, tmp_path, challenger_share=0.0, explore_share=0.0)
    with TestClient(create_app(settings, poll=False)) as client:
        items = client.get("/v1/users/123456789/recommendations", params={"k": 20}).json()["items"]
    assert all(i["sources"] != ["explore"] for i in items)


@pytest.mark.integration
def test_redis_counts_are_shared_buffered_and_cached(redis_server, redis_prefix):
    """Replicas share the counts; a request never waits on Redis for them: writes are buffered and reads
    cached for `sync_seconds` of the (injected) clock."""
    from serving.explore import RedisExploreStats

    now = [0.0]
    a = RedisExploreStats(redis_server, redis_prefix, clock=lambda: now[0])
    b = RedisExploreStats(redis_server, redis_prefix, clock=lambda: now[0])
    a.shown([7, 8])
    a.clicked(7)
    now[0] = 0.5
    assert b.counts(np.array([7, 8]))[0].tolist() == [0, 0]  # buffered in a, not written yet
    now[0] = 1.0
    a.shown([7])  # a second after the last write: this call writes everything buffered
    now[0] = 1.2
    assert b.counts(np.array([7]))[0].tolist() == [0]  # b's read of t=0.5 is cached for a second
    now[0] = 1.6
    shown, clicked = b.counts(np.array([7, 8, 9]))
    assert shown.tolist() == [2, 1, 0] and clicked.tolist() == [1, 0, 0]
