"""The batch steps on a Dask cluster (params `dask.scheduler`) against the single process, on the tiny profile.

A real `distributed.LocalCluster` of two worker processes with one thread each: the machine has two cores,
and worker processes are what a cluster has (pickling, scattering, LightGBM's sockets between workers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import columns as C
from pipelines import features as F
from pipelines import train as T

ROOT = Path(__file__).resolve().parents[1]
# Two workers train data-parallel: bins from each worker's own sample, bagging per worker, histograms summed in
# another order, so the model is close, not equal. The tiny val set has ~130 queries (one query = 0.008 NDCG).
NDCG_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    from pipelines.cluster import local_cluster

    with local_cluster(2, 1) as cluster, Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def work(serving_bundle) -> Path:
    """The serving fixture's work folder: split.json, candidates/, features/ of the tiny profile, data -> root."""
    return serving_bundle.parent


@pytest.fixture(scope="module")
def train_params() -> dict:
    from serving_support import TRAIN_FAST

    from pipelines.config import load_params

    # the early-stopped fit on both paths: the refit on train + val (train.refit_on_val) is single-process only
    params = {**load_params("train", ROOT / "params.yaml"), **TRAIN_FAST, "refit_on_val": False}
    params["lgb"] = {**params["lgb"], "num_threads": 1}
    return params


@pytest.fixture(scope="module")
def single(work, train_params) -> T.Ranker:
    return T.train(work / "split.json", work / "candidates", work / "features", work / "data", train_params)


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


@pytest.mark.integration
def test_training_on_one_dask_worker_is_the_single_process_model(client, work, train_params, single, monkeypatch):
    """One partition trains on one worker: LightGBM is then serial, and every tree and setting is the single
    process's (only the network settings differ), which also checks the params' mapping onto the estimator. The
    folders are given relative to this process's, as dvc.yaml gives them: the workers run elsewhere."""
    monkeypatch.chdir(work)
    ranker = T.train(Path("split.json"), Path("candidates"), Path("features"), Path("data"), train_params,
                     client=client, partitions=1)

    def model(r: T.Ranker) -> list[str]:
        skip = ("[machines:", "[local_listen_port:", "[num_machines:", "[time_out:")
        return [line for line in r.booster.model_to_string().splitlines() if not line.startswith(skip)]

    assert model(ranker) == model(single)
    assert ranker.meta == single.meta


@pytest.mark.integration
def test_lightgbm_gets_one_distinct_free_port_per_worker_from_the_worker_itself(client):
    import socket

    workers = sorted(client.scheduler_info()["workers"])
    machines = T.lightgbm_machines(client, workers).split(",")
    assert len(machines) == len(set(machines)) == len(workers) == 2
    for entry in machines:
        host, port = entry.rsplit(":", 1)
        assert host == "127.0.0.1"
        with socket.socket() as s:  # free: LightGBM can bind it
            s.bind((host, int(port)))


@pytest.mark.integration
def test_training_on_two_dask_workers_is_within_tolerance(client, work, train_params, single, tmp_path):
    ranker = T.train(work / "split.json", work / "candidates", work / "features", work / "data", train_params,
                     client=client, partitions=2)
    machines = next(line for line in ranker.booster.model_to_string().splitlines() if line.startswith("[machines:"))
    assert len(machines.split(",")) == 2, machines  # both workers trained, each on its own partition
    key = f"val_ndcg_at_{train_params['eval_at']}"
    assert abs(ranker.meta[key] - single.meta[key]) <= NDCG_TOLERANCE
    rounds = min(len(ranker.meta["val_curve"]), len(single.meta["val_curve"]))
    gap = np.abs(np.subtract(ranker.meta["val_curve"][:rounds], single.meta["val_curve"][:rounds]))
    assert gap.max() <= NDCG_TOLERANCE
    assert {k: ranker.meta[k] for k in ("train_queries", "train_rows", "val_queries", "val_rows")} == \
        {k: single.meta[k] for k in ("train_queries", "train_rows", "val_queries", "val_rows")}
    # The same artifact: saved, loaded and scored like any ranker.
    loaded = T.Ranker.load(ranker.save(tmp_path / "ranker"))
    assert loaded.features == single.features
    assert loaded.booster.num_trees() == ranker.meta["best_iteration"]


def assert_same_lists(on_dask: pd.DataFrame, single: pd.DataFrame) -> None:
    """The lists the single process makes, up to the learned model's float32 rounding.

    The learned source scores users in batches with a BLAS product, whose rounding depends on the batch (a
    partition holds fewer users): its scores agree to float32 precision, and a tie at a list's cut may flip
    (the learned and fused ranks of those rows). Every other column is bit for bit the single process's."""
    key = [C.USER_ID, C.ARTICLE_ID]
    both = single.merge(on_dask, on=key, how="outer", suffixes=("", "_dask"), indicator=True)
    assert (both["_merge"] == "both").mean() > 0.999, "the lists differ beyond a tie at their cut"
    both = both[both["_merge"] == "both"]
    for col in single.columns.difference(key):
        a, b = both[col].to_numpy(), both[f"{col}_dask"].to_numpy()
        if "learned" in col and a.dtype.kind == "f":  # the learned score, and the ranker feature made from it
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
        elif "learned" in col or "fused" in col:  # ranks that a flipped tie moves
            assert np.mean((a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b) > 0.999, col
        else:
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), col


@pytest.mark.parametrize("role", ["train", "test"])
def test_candidate_lists_on_dask_equal_the_single_process(client, work, role):
    from pipelines.candidates import CandidateIndex, candidates_on_cluster
    from pipelines.split import read_snapshots

    snap, history, _, _, _ = _history(work, role)
    index_dir = work / "index" / snap.name
    users = np.unique(history[C.USER_ID].to_numpy())[::2]
    users = np.append(users, users.max() + 1)  # a cold user: no history, global sources only
    single = CandidateIndex.load(index_dir).candidates(history[history[C.USER_ID].isin(users)], users=users)
    on_dask = candidates_on_cluster(client, 3, index_dir, history[history[C.USER_ID].isin(users)], users)
    assert len(single) > 0 and single[C.USER_ID].nunique() == len(users)
    assert_same_lists(on_dask, single)
    assert read_snapshots(work / "split.json", roles=[role])[0].name == snap.name


def test_candidates_cli_on_a_scheduler_writes_the_same_lists(client, work, tmp_path, monkeypatch):
    """`newsrec candidates` with `dask.scheduler` set against the single process: the same files' rows."""
    from pipelines import candidates as CA
    from pipelines.split import read_snapshots, write_snapshots

    split = write_snapshots(read_snapshots(work / "split.json", roles=["val"]), tmp_path / "split.json")
    args = ["--data-root", str(work / "data"), "--split", str(split)]

    def run(name: str) -> int:
        return CA.main([*args, "--out", str(tmp_path / name), "--index-out", str(tmp_path / f"{name}-index"),
                        "--metrics", str(tmp_path / f"{name}.json")])

    assert run("one") == 0
    monkeypatch.setenv("NEWSREC__DASK__SCHEDULER", client.scheduler.address)
    assert run("dask") == 0
    name = read_snapshots(split)[0].name
    one, dask = (pd.read_parquet(tmp_path / d / f"{name}.parquet") for d in ("one", "dask"))
    assert len(one) > 0
    assert_same_lists(dask, one)


def test_evaluation_lists_on_dask_equal_the_single_process_bit_for_bit(client, work):
    """Every method's lists for the test snapshot, the reranker's through its diversity re-rank, ranked in three
    user partitions (the ranker's feature tables cut to each partition's users) against one process."""
    from pipelines import diversity
    from pipelines import evaluate as E
    from pipelines.candidates import TREND, CandidateIndex
    from pipelines.catalogue import read_catalogue
    from pipelines.config import load_params

    candidates = pd.read_parquet(work / "candidates" / "test.parquet").drop(columns=[C.LABEL])
    index = CandidateIndex.load(work / "index" / "test")
    _, embeddings = read_catalogue(work / "data")
    scorers = {E.RERANKER: E.reranker_scorer(T.Ranker.load(work / "ranker"), work / "features" / "test",
                                                 F.normalise_embeddings(embeddings))}
    args = (candidates, index.pool.set_index(C.ARTICLE_ID)[TREND], 20, scorers,
            diversity.check_params(load_params("rank", ROOT / "params.yaml")), diversity.index_vectors(index))
    one = E.rank_methods(*args)
    many = E.ClusterRanking(client, 3).rank(*args)
    assert E.RERANKER in one and one[E.RERANKER][C.USER_ID].nunique() > 20
    assert list(many) == list(one)
    for method, lists in one.items():
        pd.testing.assert_frame_equal(many[method], lists, check_exact=True, obj=method)


def test_evaluate_cli_on_a_scheduler_writes_the_same_eval_json(client, work, tmp_path, monkeypatch):
    """`newsrec evaluate` (both protocols, the reranker with its diversity re-rank, every baseline) with
    `dask.scheduler` set against the single process: the same eval.json, float for float."""
    import json

    from pipelines import evaluate as E

    args = ["--data-root", str(work / "data"), "--split", str(work / "split.json"),
            "--candidates", str(work / "candidates"), "--indexes", str(work / "index"),
            "--model", str(work / "ranker"), "--features", str(work / "features")]
    assert E.main([*args, "--out", str(tmp_path / "one")]) == 0
    monkeypatch.setenv("NEWSREC__DASK__SCHEDULER", client.scheduler.address)
    monkeypatch.setenv("NEWSREC__DASK__PARTITIONS", "3")  # more partitions than workers: a worker runs several
    calls: list[str] = []

    def counted(cls, name: str):
        run = getattr(cls, name)
        return lambda *a, **kw: calls.append(name) or run(*a, **kw)

    for cls, name in ((E.ClusterRanking, "rank"), (E.ClusterRanking, "candidates"), (F.PartitionedUserSide, "__call__")):
        monkeypatch.setattr(cls, name, counted(cls, name))
    assert E.main([*args, "--out", str(tmp_path / "dask")]) == 0
    one = json.loads((tmp_path / "one" / "eval.json").read_text())
    assert one["users"]["all"] > 20 and one["as_served"]["users"]["all"] > one["users"]["all"]
    assert E.RERANKER in one["methods"] and "reranker_vs_best_baseline" in one["as_served"]
    # on the cluster: the frozen ranking, and every replayed hour's candidate lists, user tables and ranking
    hours = one["as_served"]["hours"]
    assert calls.count("rank") == 1 + hours and calls.count("candidates") == calls.count("__call__") == hours
    # As text (NaN where a figure is undefined). Only the as-served learned source is computed per partition with
    # a batch-dependent float32 product (assert_same_lists); on tiny no tie at a list's cut flips, so every
    # figure is equal: a difference confined to learned-derived figures would be that rounding.
    for name in ("eval.json", "summary.json", "eval_table.md"):
        assert (tmp_path / "dask" / name).read_text() == (tmp_path / "one" / name).read_text()


def test_learned_cli_on_a_scheduler_fits_the_daily_models_on_the_workers_byte_for_byte(client, work, tmp_path,
                                                                                      monkeypatch):
    """`newsrec learned` with `dask.scheduler` set: each daily model is a task on the workers, the files they
    write are the single process's byte for byte (the serving fixture's models, fitted in this process with the
    same params), and a rerun keeps them all without a task."""
    import yaml
    from distributed import get_task_stream

    from pipelines import learned as L

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["learned"]["epochs"] = 2  # as serving_support fitted work/learned
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("NEWSREC__DASK__SCHEDULER", client.scheduler.address)
    # The data root relative to this process's folder, as dvc.yaml passes it: the workers run elsewhere.
    monkeypatch.chdir(work)
    args = ["--data-root", "data", "--split", str(work / "split.json"), "--out", str(tmp_path / "learned"),
            "--params", str(tmp_path / "params.yaml")]

    def fit_tasks(stream: list[dict]) -> set[str]:
        return {str(t["key"]) for t in stream if "_fit_at" in str(t["key"])}

    with get_task_stream(client) as stream:
        assert L.main(args) == 0
    single = sorted(p.relative_to(work / "learned") for p in (work / "learned").rglob("*") if p.is_file())
    models = [p for p in single if p.parts[0].startswith(f"{C.HOUR}=")]
    assert len({p.parts[0] for p in models}) >= 2
    assert len(fit_tasks(stream.data)) == len({p.parts[0] for p in models})
    for name in models:
        assert (tmp_path / "learned" / name).read_bytes() == (work / "learned" / name).read_bytes(), name

    with get_task_stream(client) as again:
        assert L.main(args) == 0
    assert not fit_tasks(again.data)
    report = json.loads((tmp_path / "learned" / "fits.json").read_text())
    assert set(report) == {p.parts[0] for p in models}
