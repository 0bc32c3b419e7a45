"""The hourly serving index: fit, publish and swap without the ranker; compatibility by contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serving_support import EarlierChampion

from pipelines import columns as C
from pipelines.config import load_params
from pipelines.serving_index import (
    CURRENT,
    INDEX_FORMAT,
    ServingIndex,
    check_compatible,
    current,
    fit_serving_index,
    publish,
    refresh,
    version_order,
)
from serving.index_source import FolderIndexSource
from serving.models import ModelHolder

EPOCH_MS = int(load_params("data")["epoch_ms"])


@pytest.fixture(scope="module")
def data_root(serving_bundle):
    """The serving fixture's data root: tiny validated hours with aggregates (hours 0..23)."""
    return serving_bundle.parent / "data"


def _memory_mapped(array) -> bool:
    """Whether `array` is a view of a memory-mapped file (its chain of bases ends in a np.memmap)."""
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = getattr(array, "base", None)
    return False


def _refresh(data_root, index_root, hour, keep=3):
    params = {"index_dir": str(index_root), "keep": keep}
    return refresh(data_root, hour, params, load_params("candidates"), load_params("features"), EPOCH_MS)


def test_refresh_publishes_versions_atomically_and_never_rolls_back(data_root, tmp_path):
    index_root = tmp_path / "idx"
    for hour in (10, 11, 12, 13):
        _refresh(data_root, index_root, hour, keep=2)
    live = current(index_root)
    assert live["cutoff_hour"] == 14 and live["path"] == "hour=014" and live["format"] == INDEX_FORMAT
    assert sorted(p.name for p in index_root.glob("hour=*")) == ["hour=013", "hour=014"]  # keep=2
    assert not list(index_root.glob(".*"))  # no temporaries left behind

    served = ServingIndex.load(index_root / "hour=014")
    cutoff = EPOCH_MS + 14 * C.HOUR_MS
    assert served.cutoff_ms == cutoff and served.tables.cutoff_ms == cutoff and served.index.cutoff_ms == cutoff
    assert served.history[C.CLICK_TIMESTAMP].max() < cutoff
    assert (served.articles[C.CREATED_AT_TS] < cutoff).all()
    # the history holds every validated click before the cutoff
    from pipelines.split import load_clicks

    assert len(served.history) == len(load_clicks(data_root / "validated" / "clicks", None, cutoff))

    # what a worker reads on every swap is memory-mapped, not decoded: the big parts cost no time to load
    for big in (served.tables.profiles, served.history[C.USER_ID].to_numpy(), served.tables.embeddings):
        assert _memory_mapped(big)

    # a replayed old hour is republished but the live pointer stays on the newest
    _refresh(data_root, index_root, 12, keep=5)
    assert current(index_root)["cutoff_hour"] == 14
    assert (index_root / "hour=013").is_dir()


def test_index_refresh_moves_popularity_with_the_clock(data_root):
    from pipelines.features import read_articles, read_embeddings

    articles = read_articles(data_root / "raw" / C.METADATA_FILE)
    embeddings = read_embeddings(data_root / "raw" / C.EMBEDDINGS_FILE)
    fits = {h: fit_serving_index(data_root, h, articles, embeddings, load_params("candidates"),
                                 load_params("features"), EPOCH_MS) for h in (12, 13)}
    later = fits[13].index.pool.set_index(C.ARTICLE_ID)["clicks"]
    earlier = fits[12].index.pool.set_index(C.ARTICLE_ID)["clicks"]
    common = later.index.intersection(earlier.index)
    assert (later[common] >= earlier[common]).all() and later[common].sum() > earlier[common].sum()
    assert fits[13].meta["clicks"] > fits[12].meta["clicks"]


def test_compatibility_is_a_contract():
    meta = {"format": INDEX_FORMAT, "cutoff_hour": 5, "features": ["a", "b"]}
    check_compatible(["a", "b"], meta)
    with pytest.raises(ValueError, match=r"does not provide the ranker's features \['c'\]"):
        check_compatible(["a", "c"], meta)
    with pytest.raises(ValueError, match="format"):
        check_compatible(["a"], {**meta, "format": INDEX_FORMAT + 1})


def test_api_holder_swaps_to_a_newer_index_and_refuses_an_incompatible_one(serving_bundle, data_root, tmp_path):
    from serving import recommend as rec

    index_root = tmp_path / "idx"
    holder = ModelHolder(EarlierChampion(serving_bundle, 10), "champion", "challenger",
                         index_source=FolderIndexSource(index_root, compile_ranker=False))
    holder.refresh()
    own = holder.slots.champion
    assert own.index_hour is None  # nothing published yet: the model's own state

    _refresh(data_root, index_root, 14)
    assert holder.refresh() is True
    served = holder.slots.champion
    assert served.index_hour == 15 and served.ref == own.ref
    assert rec.cutoff_ms(served.bundle) == EPOCH_MS + 15 * C.HOUR_MS
    assert own.bundle is not served.bundle  # a request holding the old pair keeps it whole
    user = served.bundle.users.listing([0])[0][0]
    got = rec.recommend(served.bundle, user, [], rec.Context(), rec.cutoff_ms(served.bundle), 10)
    assert len(got.article_ids) == 10 and set(got.article_ids) <= set(served.bundle.bundle.index.pool_ids)
    # the hourly index carries no model: the ranker's own learned model embeds its pool at the swap
    index = served.bundle.bundle.index
    assert index.learned is own.bundle.bundle.learned is not None and len(index.sources["learned"].pool_vectors) == len(index.pool)
    assert holder.refresh() is False  # same pointer: nothing rebuilt

    # the live overlay (every few seconds) rebuilds from the pair now served, never from the one before it
    holder.apply_live(lambda p: p)
    _refresh(data_root, index_root, 15)
    assert holder.refresh() is True and holder.slots.champion.index_hour == 16
    holder.apply_live(lambda p: p)
    served = holder.slots.champion
    assert rec.cutoff_ms(served.bundle) == EPOCH_MS + 16 * C.HOUR_MS

    # an index that lacks a feature of the ranker is refused; the old pair keeps serving
    _refresh(data_root, index_root, 16)
    meta_path = index_root / "hour=017" / "index.json"
    meta = json.loads(meta_path.read_text())
    meta["features"] = [f for f in meta["features"] if f != "a_trend"]
    meta_path.write_text(json.dumps(meta))
    holder.refresh()
    assert holder.slots.champion is served
    assert "refused" in holder.last_error and "a_trend" in holder.last_error
    assert json.loads((index_root / CURRENT).read_text())["cutoff_hour"] == 17


def test_index_of_another_format_is_refused_at_load(data_root, tmp_path):
    out = _refresh(data_root, tmp_path / "idx", 8)
    meta = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**meta, "format": INDEX_FORMAT + 1}))
    with pytest.raises(ValueError, match="rebuild it with `newsrec refresh`"):
        ServingIndex.load(out)


def test_publish_replaces_a_replayed_version_whole(data_root, tmp_path):
    from pipelines.features import read_articles, read_embeddings

    articles = read_articles(data_root / "raw" / C.METADATA_FILE)
    embeddings = read_embeddings(data_root / "raw" / C.EMBEDDINGS_FILE)
    fit = fit_serving_index(data_root, 6, articles, embeddings, load_params("candidates"),
                            load_params("features"), EPOCH_MS)
    first = publish(fit, tmp_path, keep=3)
    (first / "stray.txt").write_text("from an earlier run")
    again = publish(fit, tmp_path, keep=3)
    assert again == first and not (again / "stray.txt").exists()
    assert np.load(again / "embeddings.npy").shape == embeddings.shape


def test_unchanged_catalogue_embeddings_are_linked_not_written_again(data_root, tmp_path):
    index_root = tmp_path / "idx"
    a, b = _refresh(data_root, index_root, 10), _refresh(data_root, index_root, 11)
    assert (a / "embeddings.npy").stat().st_ino == (b / "embeddings.npy").stat().st_ino
    assert json.loads((a / "index.json").read_text())["catalogue"] == json.loads((b / "index.json").read_text())[
        "catalogue"]


@pytest.mark.integration
def test_replicas_on_other_machines_read_the_versions_mirrored_to_s3(serving_bundle, data_root, tmp_path, s3_env):
    """The hourly DAG's worker publishes to its disk and mirrors to S3; an API replica elsewhere reads only S3."""
    import boto3

    from pipelines import storage
    from pipelines.serving_index import fetch, remote_current
    from serving import recommend as rec
    from serving.index_source import MirroredIndexSource

    s3 = boto3.client("s3")
    storage.make_buckets(["idx-mirror"], s3)
    uri = "s3://idx-mirror/serving_index"
    publisher, replica = tmp_path / "worker" / "idx", tmp_path / "replica" / "idx"
    params = {"index_dir": str(publisher), "keep": 2, "publish_uri": uri}

    def refresh_hour(hour):
        return refresh(data_root, hour, params, load_params("candidates"), load_params("features"), EPOCH_MS)

    source = MirroredIndexSource(uri, replica, compile_ranker=False)
    assert source.current() is None  # nothing published yet: the model's own state serves
    holder = ModelHolder(EarlierChampion(serving_bundle, 10), "champion", "challenger", index_source=source)
    holder.refresh()
    assert holder.slots.champion.index_hour is None

    refresh_hour(12)
    pointer = remote_current(uri)
    assert pointer["cutoff_hour"] == 13 and pointer["path"].startswith("hour=013.")
    assert {k: v for k, v in pointer.items() if k != "path"} == {k: v for k, v in current(publisher).items() if k != "path"}
    assert holder.refresh() is True and holder.slots.champion.index_hour == 13
    local = replica / pointer["path"]
    assert sorted(storage.list_files(str(local))) == sorted(storage.list_files(str(publisher / "hour=013")))
    served = holder.slots.champion.bundle
    user = served.users.listing([0])[0][0]
    got = rec.recommend(served, user, [], rec.Context(), rec.cutoff_ms(served), 10)
    assert len(got.article_ids) == 10

    # the next hours: the mirror holds the `keep` newest copies, the replica swaps and prunes its own;
    # the unchanged catalogue's embeddings are linked, not downloaded again
    for hour in (13, 14):
        refresh_hour(hour)
        assert holder.refresh() is True
    assert holder.slots.champion.index_hour == 15

    def hours(names):
        return sorted({n.split("/")[0].split(".")[0] for n in names if n.startswith("hour=")})

    assert hours(storage.list_files(uri)) == ["hour=014", "hour=015"]
    assert hours(p.name for p in replica.glob("hour=*")) == ["hour=014", "hour=015"]
    assert not list(replica.glob(".*"))
    h14, h15 = sorted(replica.glob("hour=*"))
    assert (h14 / "embeddings.npy").stat().st_ino == (h15 / "embeddings.npy").stat().st_ino
    mirrored = ServingIndex.load(h15)
    published = ServingIndex.load(publisher / "hour=015")
    assert mirrored.meta == published.meta and mirrored.index.pool.equals(published.index.pool)
    assert np.array_equal(mirrored.tables.profiles, published.tables.profiles)
    assert holder.refresh() is False  # same pointer: nothing copied or rebuilt

    # a copy in the mirror is never rewritten: republishing the live hour (a retried task) makes a new copy
    # and moves the pointer to it, while the one a replica may be reading stays whole
    before = remote_current(uri)["path"]
    refresh_hour(14)
    after = remote_current(uri)["path"]
    assert after != before and after.startswith("hour=015.") and storage.exists(f"{uri}/{before}/index.json")
    assert holder.refresh() is True and holder.slots.champion.index_hour == 15

    # a replayed old hour never moves the pointer there either
    refresh_hour(12)
    assert remote_current(uri)["path"] == after

    # a replica whose users are in Redis copies no per-user file
    lean = fetch(uri, remote_current(uri), tmp_path / "lean", user_side=False)
    names = set(storage.list_files(str(lean)))
    assert {"history.npy", "features/profiles.npy"}.isdisjoint(names) and "features/users.parquet" in names
    assert ServingIndex.load(lean, user_side=False).index.pool.equals(published.index.pool)

    # a URI naming a bucket that does not exist is an error, not "nothing published"
    with pytest.raises(storage.NotLandedError, match="no-such-bucket"):
        MirroredIndexSource("s3://no-such-bucket/idx", tmp_path / "x").current()


def test_the_api_serves_the_mirror_when_publish_uri_is_set_and_lists_the_same_as_the_publishers_folder(
        serving_bundle, data_root, tmp_path):
    """params `refresh.publish_uri` (here a shared folder) reaches the API as `index_uri`: it reads the
    mirror's pointer and answers exactly as a replica that reads the publisher's own folder."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.index_source import MirroredIndexSource
    from serving.settings import Settings

    publisher, shared = tmp_path / "worker" / "idx", tmp_path / "shared" / "idx"
    refresh(data_root, 14, {"index_dir": str(publisher), "keep": 2, "publish_uri": str(shared)},
            load_params("candidates"), load_params("features"), EPOCH_MS)
    base = Settings.from_params(impression_log=tmp_path / "imp.jsonl", click_log=tmp_path / "clk.jsonl",
                                compile_ranker=False, explore_share=0.0, clock="cutoff")
    assert base.index_uri == load_params("refresh")["publish_uri"]
    local = base.with_(index_dir=publisher)
    mirrored = base.with_(index_dir=tmp_path / "replica" / "idx", index_uri=str(shared))
    apps = {name: create_app(s, source=EarlierChampion(serving_bundle, 10), poll=False)
            for name, s in (("local", local), ("mirrored", mirrored))}
    assert isinstance(apps["mirrored"].state.holder.index_source, MirroredIndexSource)
    with TestClient(apps["local"]) as one, TestClient(apps["mirrored"]) as other:
        assert other.get("/v1/models").json()["champion"]["index"]["cutoff_hour"] == 15
        users = [u["user_id"] for u in one.get("/v1/users", params={"n": 5}).json()]
        for user in users + [10**12]:
            lists = [c.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json() for c in (one, other)]
            assert [i["article_id"] for i in lists[0]["items"]] == [i["article_id"] for i in lists[1]["items"]]
    assert [(p / "index.json").exists() for p in (tmp_path / "replica" / "idx").glob("hour=015.*")] == [True]


def test_versions_and_mirror_copies_are_ordered_by_hour_then_publish_time():
    names = ["hour=1000", "hour=999.12", "hour=999", "hour=999.5", "hour=014"]
    assert sorted(names, key=version_order) == ["hour=014", "hour=999", "hour=999.5", "hour=999.12", "hour=1000"]
