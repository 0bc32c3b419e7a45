"""The batch steps on a Dask cluster (params `dask.scheduler`) against the single process, on the tiny profile.

A real `distributed.LocalCluster` of two worker processes with one thread each: the machine has two cores,
and worker processes are what a cluster has (pickling, scattering, LightGBM's sockets between workers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import columns as C
from pipelines import features as F

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def work(serving_bundle) -> Path:
    """The serving fixture's work folder: split.json, candidates/, features/ of the tiny profile, data -> root."""
    return serving_bundle.parent


def _history(work: Path, role: str):
    from pipelines.catalogue import read_catalogue
    from pipelines.split import read_snapshots, snapshot_clicks

    snap = read_snapshots(work / "split.json", roles=[role])[0]
    history, target = snapshot_clicks(work / "data" / "validated" / "clicks", snap)
    catalogue, embeddings = read_catalogue(work / "data")
    return snap, history, target, catalogue, F.normalise_embeddings(embeddings)


@pytest.mark.unit
def test_user_partitions_are_stable_and_cover_every_partition():
    from pipelines.cluster import user_partition

    users = np.arange(1000)
    part = user_partition(users, 4)
    assert set(part) == {0, 1, 2, 3} and np.array_equal(part, user_partition(users, 4))
    assert np.array_equal(user_partition(users[::-1], 4), part[::-1])  # a user's partition is its own


@pytest.mark.integration
@pytest.mark.parametrize("role", ["serve", "train"])
def test_user_tables_on_dask_equal_the_single_process_bit_for_bit(client, work, role):
    snap, history, target, articles, embeddings = _history(work, role)
    only = target[C.USER_ID].unique() if len(target) else None
    params = {"profile_half_life_h": 24}
    one = F.fit_tables(history, articles, embeddings, snap.cutoff_ms, params, only_users=only)
    many = F.fit_tables(history, articles, embeddings, snap.cutoff_ms, params, only_users=only,
                        user_side=F.PartitionedUserSide(client, 3))
    assert len(one.users) > 20
    pd.testing.assert_frame_equal(many.users, one.users, check_exact=True)
    pd.testing.assert_frame_equal(many.user_categories, one.user_categories, check_exact=True)
    assert many.profiles.dtype == one.profiles.dtype and np.array_equal(many.profiles, one.profiles)
    pd.testing.assert_frame_equal(many.articles, one.articles, check_exact=True)


@pytest.mark.integration
def test_features_cli_on_a_scheduler_writes_the_same_tables(client, work, tmp_path, monkeypatch):
    """`newsrec features` with `dask.scheduler` set (as a deployment sets it) against the single process."""
    from pipelines.split import read_snapshots, write_snapshots

    split = write_snapshots(read_snapshots(work / "split.json", roles=["val", "serve"]), tmp_path / "split.json")
    args = ["--data-root", str(work / "data"), "--split", str(split)]
    assert F.main([*args, "--out", str(tmp_path / "one")]) == 0
    monkeypatch.setenv("NEWSREC__DASK__SCHEDULER", client.scheduler.address)
    assert F.main([*args, "--out", str(tmp_path / "dask")]) == 0
    embeddings = np.zeros((1, 1), dtype=np.float32)
    for snap in read_snapshots(split):
        one = F.FeatureTables.load(tmp_path / "one" / snap.name, embeddings)
        dask = F.FeatureTables.load(tmp_path / "dask" / snap.name, embeddings)
        pd.testing.assert_frame_equal(dask.users, one.users, check_exact=True)
        pd.testing.assert_frame_equal(dask.user_categories, one.user_categories, check_exact=True)
        assert np.array_equal(dask.profiles, one.profiles)
