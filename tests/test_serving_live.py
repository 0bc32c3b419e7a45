"""Real-time popularity: clicks posted to the API move the trend source and article features before the
next hourly refresh, in process or shared through Redis."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pipelines import columns as C
from pipelines.bundle import ServingBundle
from pipelines.candidates import TREND
from serving import recommend as rec
from serving.app import create_app
from serving.live import MINUTE_MS, InProcessLiveCounts, RedisLiveCounts, with_live
from serving.settings import Settings


@pytest.fixture(scope="module")
def prepared(serving_bundle):
    return rec.prepare(ServingBundle.load(serving_bundle), compile_ranker=False)


def _quiet_article(prepared) -> int:
    """A pool article at the bottom of the trending order (nobody reads it now)."""
    return int(prepared.bundle.index.trending()[C.ARTICLE_ID].iloc[-1])


@pytest.mark.unit
def test_in_process_counts_by_minute():
    live = InProcessLiveCounts()
    for ts in (0, 30_000, 60_000, 61_000):
        live.add(7, ts)
    live.add(8, 61_000)
    a, m, n = live.since(60_000)
    got = sorted(zip(a.tolist(), m.tolist(), n.tolist()))
    assert got == [(7, 60_000, 2), (8, 60_000, 1)]
    assert live.since(0)[2].sum() == 5


@pytest.mark.integration
def test_live_clicks_lift_an_article_in_the_trend_source_and_its_features(prepared):
    quiet = _quiet_article(prepared)
    cutoff = prepared.cutoff_ms
    live = InProcessLiveCounts()
    assert with_live(prepared, live, cutoff + 10 * MINUTE_MS) is prepared  # nothing live: unchanged
    for i in range(40):
        live.add(quiet, cutoff + (i % 10) * MINUTE_MS + 1)
    now = cutoff + 10 * MINUTE_MS
    fresh = with_live(prepared, live, now)

    assert int(fresh.bundle.index.trending()[C.ARTICLE_ID].iloc[0]) == quiet
    assert int(prepared.bundle.index.trending()[C.ARTICLE_ID].iloc[-1]) == quiet  # the base is untouched
    before = prepared.bundle.tables.articles.loc[quiet]
    after = fresh.bundle.tables.articles.loc[quiet]
    assert after["a_clicks_1h"] >= before["a_clicks_1h"] * (1 - 10 / 60) + 40 - 1
    assert after["a_clicks_all"] == before["a_clicks_all"] + 40
    assert after["a_hours_since_last_click"] == pytest.approx(0.0, abs=1 / 60 + 1e-9)
    assert after["a_age_h"] == pytest.approx(before["a_age_h"] + 10 / 60)
    # the derived features follow the moved counts, as the pipeline derives them
    assert after["a_share_1h"] > before["a_share_1h"] and after["a_rank_6h"] < before["a_rank_6h"]
    assert after["a_trend"] == pytest.approx(after["a_clicks_1h"] / (after["a_clicks_24h"] / 24.0 + 1.0))
    # decayed exactly like the pipeline: 40 clicks minutes old with a 1-hour half-life
    pool = fresh.bundle.index.pool.set_index(C.ARTICLE_ID)[TREND]
    assert 30 < pool[quiet] <= 40 + prepared.bundle.index.pool.set_index(C.ARTICLE_ID)[TREND][quiet]

    # a user with no history (cold start) now gets it from the trend source, and the ranker sees it
    cold = prepared.users.listing([prepared.users.n_users - 1])[0][0] + 12345
    got = rec.recommend(fresh, cold, [], rec.Context(), now, 10)
    assert quiet in got.article_ids
    assert quiet not in rec.recommend(prepared, cold, [], rec.Context(), now, 10).article_ids


def _settings(registry, tmp_path, **changes) -> Settings:
    base = Settings.from_params(tracking_uri=registry["tracking_uri"], impression_log=tmp_path / "i.jsonl",
                                click_log=tmp_path / "c.jsonl", hourly_index=False)
    return base.with_(**changes)


@pytest.mark.integration
def test_events_reach_other_replicas_through_redis(serving_registry, serving_bundle, redis_server, redis_prefix,
                                                   tmp_path):
    """Two app instances on one Redis: clicks posted to one lift the article on the other."""
    settings = _settings(serving_registry, tmp_path, redis_url=redis_server, state_prefix=redis_prefix,
                         challenger_share=0.0)
    bundle = ServingBundle.load(serving_bundle)
    quiet = int(bundle.index.trending()[C.ARTICLE_ID].iloc[-1])
    with TestClient(create_app(settings, poll=False)) as a, TestClient(create_app(settings, poll=False)) as b:
        cutoff = bundle.cutoff_ms
        for i in range(30):
            r = a.post("/v1/events", json={"user_id": 10**9 + i, "article_id": quiet,
                                           "timestamp": cutoff + 60_000 + i})
            assert r.status_code == 202
        cold = 10**10
        before = b.get(f"/v1/users/{cold}/recommendations", params={"k": 10}).json()
        assert quiet not in {i["article_id"] for i in before["items"]}
        b.app.state.holder.apply_live(lambda p: with_live(p, b.app.state.live, None))
        after = b.get(f"/v1/users/{cold}/recommendations", params={"k": 10}).json()
        assert quiet in {i["article_id"] for i in after["items"]}
    arts, _, n = RedisLiveCounts(redis_server, redis_prefix).since(cutoff)
    assert int(n[arts == quiet].sum()) == 30


@pytest.mark.unit
def test_overlays_never_stack(prepared):
    """apply_live always starts from the bundle before any overlay: applying twice equals once."""
    from serving.models import ModelHolder, ServedModel, VersionRef

    class One:
        def resolve(self, alias):
            return VersionRef("m", "1", "r", "s") if alias == "champion" else None

        def load(self, ref):
            return ServedModel(ref=ref, bundle=prepared, loaded_at=0.0)

    holder = ModelHolder(One(), "champion", "challenger")
    holder.refresh()
    live = InProcessLiveCounts()
    quiet = _quiet_article(prepared)
    for i in range(5):
        live.add(quiet, prepared.cutoff_ms + i)
    now = prepared.cutoff_ms + 2 * MINUTE_MS
    holder.apply_live(lambda p: with_live(p, live, now))
    once = holder.slots.champion.bundle.bundle.index.pool[TREND].to_numpy()
    holder.apply_live(lambda p: with_live(p, live, now))
    twice = holder.slots.champion.bundle.bundle.index.pool[TREND].to_numpy()
    np.testing.assert_array_equal(once, twice)
    assert holder.slots.champion.live_base is prepared
