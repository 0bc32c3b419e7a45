"""Builds a real serving bundle on a small synthetic dataset by running the pipeline's own stage functions.

Used by the serving and dashboard tests, which need a champion that went through candidates, features,
LambdaRank training and the registry exactly as the offline flow produces one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Self

from pipelines import columns as C
from pipelines.config import load_params

ROOT = Path(__file__).resolve().parents[1]
# Windows small enough for a 24-hour dataset: three train cutoffs, then 3 h validation and 3 h test.
SPLIT = {"test_hours": 3, "val_hours": 3, "label_hours": 3, "train_snapshots": 3, "min_history_hours": 9}
TRAIN_FAST = {"num_boost_round": 60, "early_stopping_rounds": 20}


def build_bundle_dir(root: Path, work: Path, seed: int = 42) -> Path:
    """Run aggregates -> split -> features -> learned -> candidates -> train on `root` and assemble the bundle."""
    from pipelines.aggregates import aggregate_all
    from pipelines.bundle import build_bundle
    from pipelines.candidates import build_candidates
    from pipelines.features import fit_tables, normalise_embeddings, read_articles, read_embeddings
    from pipelines.learned import fit_daily
    from pipelines.split import snapshot_clicks, split
    from pipelines.train import train

    params_path = ROOT / "params.yaml"
    epoch_ms = int(load_params("data", params_path)["epoch_ms"])
    if not (root / "validated" / "clicks").is_dir():
        raise FileNotFoundError(f"{root} has no validated clicks: build from the tiny_validated fixture")
    (work / "data").symlink_to(root, target_is_directory=True)  # the data root, for tests that need it
    aggregate_all(root, epoch_ms, int(load_params("aggregates", params_path)["coclick_max_distance"]))
    split_path = work / "split.json"
    snaps = split(root, split_path, SPLIT, epoch_ms)

    raw = root / "raw"
    articles = read_articles(raw / C.METADATA_FILE)
    embeddings = normalise_embeddings(read_embeddings(raw / C.EMBEDDINGS_FILE))
    feature_params = load_params("features", params_path)
    for snap in snaps:
        history, target = snapshot_clicks(root / "validated" / "clicks", snap)
        tables = fit_tables(history, articles, embeddings, snap.cutoff_ms, feature_params,
                            requests=target if len(target) else None)
        tables.save(work / "features" / snap.name)

    # The learned model as the daily retrain fits it, briefly (two epochs): the bundle serves it like any other.
    candidate_params = load_params("candidates", params_path)
    fit_daily(root, snaps, work / "learned", {**load_params("learned", params_path), "epochs": 2}, epoch_ms,
              float(candidate_params["trend_half_life_hours"]))
    build_candidates(root, snaps, work / "candidates", work / "index", candidate_params, epoch_ms,
                     learned_dir=work / "learned")
    train_params = {**load_params("train", params_path), **TRAIN_FAST}
    train_params["lgb"] = {**train_params["lgb"], "seed": seed, "num_threads": 1}
    ranker = train(split_path, work / "candidates", work / "features", root, train_params)
    ranker.save(work / "ranker")
    bundle = work / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    build_bundle(work / "ranker", work / "features" / "serve", work / "index" / "serve", root, bundle,
                 validated_dir=root / "validated" / "clicks", feature_params=feature_params)
    return bundle


class EarlierChampion:
    """A BundleSource serving the registered bundle at `bundle_dir` as champion v1, as if it had been registered
    at the start of `hour` (its own state older than any hourly serving index published after that)."""

    def __init__(self, bundle_dir: Path, hour: int, compile_ranker: bool = False, own_state: bool = True) -> None:
        import dataclasses

        from pipelines.bundle import ServingBundle

        epoch_ms = int(load_params("data", ROOT / "params.yaml")["epoch_ms"])
        bundle = ServingBundle.load(bundle_dir)
        early = dataclasses.replace(bundle.tables, cutoff_ms=epoch_ms + hour * C.HOUR_MS)
        self.bundle = dataclasses.replace(bundle, tables=early)
        self.compile_ranker = compile_ranker
        self.own_state = own_state  # as MlflowBundleSource's: False = the ranker only, served over an index

    def resolve(self, alias: str):
        from serving.models import VersionRef

        return VersionRef("newsrec-ranker", "1", "run1", "src") if alias == "champion" else None

    def load(self, ref):
        import time

        from serving.models import ServedModel
        from serving.recommend import prepare

        if not self.own_state:
            return ServedModel(ref=ref, bundle=None, loaded_at=time.time(), info={}, base=self.bundle.ranker_only())
        return ServedModel(ref=ref, bundle=prepare(self.bundle, self.compile_ranker), loaded_at=time.time(),
                           info={}, base=self.bundle)


def register_versions(bundle_dir: Path, tracking_uri: str, artifact_root: Path, model_name: str,
                      aliases: list[str]) -> list[str]:
    """Register `bundle_dir` once per alias (versions 1, 2, ...) in the MLflow registry at `tracking_uri`."""
    import mlflow

    from pipelines.registry import register
    from pipelines.tracking import use_tracking

    use_tracking({"tracking_uri": tracking_uri, "artifact_root": str(artifact_root), "experiment": "serving-tests"})
    metrics = {"all": {"ndcg@10": 0.3}, "warm": {"ndcg@10": 0.35}, "cold": {"ndcg@10": 0.2}}
    report = Path(artifact_root) / "eval_report.html"  # what `newsrec register` logs beside eval.json
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("<!doctype html><html><body><h1>newsrec evaluation</h1></body></html>\n")
    versions = [register(bundle_dir, metrics, "test", model_name, alias, run_artifacts=[report])
                for alias in aliases]
    mlflow.set_tracking_uri(tracking_uri)
    return versions


class ServerThread:
    """A real uvicorn server for `app` on a free loopback port, in a daemon thread (context manager)."""

    def __init__(self, app) -> None:
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))

    def __enter__(self) -> Self:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
