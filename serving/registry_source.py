"""Serving bundles from the MLflow model registry, by alias."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from serving.models import ServedModel, VersionRef

# Where `newsrec register` logs the evaluation report on the version's run (pipelines.eval_report).
REPORT_ARTIFACT = "evaluation/eval_report.html"
# Run metrics shown beside the version in /v1/models and the dashboard (when the training run logged them).
_INFO_METRICS = ("ndcg", "recall", "mrr", "hr", "coverage")


class MlflowBundleSource:
    """Resolves `models:/<name>@<alias>` and loads the version's pyfunc, whose python model holds the bundle.

    `own_state=False` (users read from Redis, serve.user_store_url): a loaded version keeps only its ranker and
    serves nothing until it is combined with an hourly index whose users are in Redis; the state it was
    registered with (every reader's history and feature rows) is never prepared."""

    def __init__(self, tracking_uri: str, model_name: str, compile_ranker: bool = True, own_state: bool = True) -> None:
        import os

        from mlflow import MlflowClient

        # Artifact download progress bars would fill the service log on every poll that loads a version.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.compile_ranker = compile_ranker
        self.own_state = own_state
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._reports: dict[str, str] = {}  # run id -> evaluation report

    def resolve(self, alias: str) -> VersionRef | None:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

        try:
            mv = self.client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException as exc:
            # An alias (or the whole registered model) that does not exist yet is a normal state, not an error.
            if exc.error_code in (ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return VersionRef(name=self.model_name, version=str(mv.version), run_id=mv.run_id or "", source=mv.source)

    def load(self, ref: VersionRef) -> ServedModel:
        import mlflow
        import mlflow.pyfunc

        # load_model resolves models:/ URIs against the process-wide registry URI.
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        model = mlflow.pyfunc.load_model(ref.uri)
        python_model = model.unwrap_python_model()
        bundle = python_model.bundle
        _forget_loaded(python_model)
        from serving.index_source import index_info
        from serving.recommend import prepare

        if not self.own_state:
            return ServedModel(ref=ref, bundle=None, loaded_at=time.time(), info=self._info(ref),
                               base=bundle.ranker_only())
        prepared = prepare(bundle, self.compile_ranker)
        info = {**self._info(ref), "predictor": bundle.ranker.predictor,
                "index": index_info(None, bundle.cutoff_ms, "model bundle")}
        return ServedModel(ref=ref, bundle=prepared, loaded_at=time.time(), info=info, base=bundle)

    def check(self, ref: VersionRef) -> str | None:
        """Why `ref` could not be loaded again (its artifacts are gone), or None when they are there. The served
        copy keeps answering from memory, but a restart or a new replica would have nothing to load."""
        from mlflow.artifacts import list_artifacts
        from mlflow.exceptions import MlflowException

        try:
            uri = self.client.get_model_version_download_uri(ref.name, ref.version)
            present = any(Path(a.path).name == "MLmodel" for a in list_artifacts(artifact_uri=uri))
        except (MlflowException, OSError) as exc:
            return f"artifacts of {ref.uri} cannot be listed ({exc}): a restart could not load it"
        return None if present else (f"artifacts of {ref.uri} are gone from {uri}: served from memory, but a "
                                     "restart or a new replica could not load it")

    def report(self, ref: VersionRef) -> str | None:
        """The version's evaluation report (`evaluation/eval_report.html` of its run), or None when it has none.
        Downloaded once per run and kept (it is a few hundred KB and never changes)."""
        if not ref.run_id:
            return None
        if ref.run_id not in self._reports:
            import tempfile

            from mlflow.artifacts import download_artifacts
            from mlflow.exceptions import MlflowException

            with tempfile.TemporaryDirectory() as tmp:
                try:
                    path = download_artifacts(run_id=ref.run_id, artifact_path=REPORT_ARTIFACT, dst_path=tmp,
                                              tracking_uri=self.tracking_uri)
                except (MlflowException, OSError):
                    return None
                self._reports[ref.run_id] = Path(path).read_text(encoding="utf-8")
        return self._reports[ref.run_id]

    def _info(self, ref: VersionRef) -> dict[str, Any]:
        """When the version was trained and its offline metrics, for people deciding whether to trust it."""
        info: dict[str, Any] = {}
        if not ref.run_id:
            return info
        run = self.client.get_run(ref.run_id)
        info["trained_at"] = _iso(run.info.start_time)
        info["run_name"] = run.info.run_name
        info["metrics"] = {k: v for k, v in sorted(run.data.metrics.items()) if k.split("_")[0] in _INFO_METRICS
                           or any(m in k for m in _INFO_METRICS)}
        mv = self.client.get_model_version(ref.name, ref.version)
        info["version_tags"] = dict(mv.tags)
        info["registered_at"] = _iso(mv.creation_timestamp)
        return info


def _iso(epoch_ms: int | None) -> str | None:
    """MLflow's epoch milliseconds as the ISO 8601 time every other time in the API is."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat() if epoch_ms is not None else None


def _forget_loaded(python_model) -> None:
    """MLflow's loader of models logged as code keeps the last model it loaded in a module global
    (`mlflow.models.model.__mlflow_model__`), and with it the whole bundle that model read: every reader's history
    and feature rows stayed alive after the service dropped them (a version served over an hourly index keeps
    only its ranker): ~200 MB of each worker's private memory at Globo scale. Release it."""
    import mlflow.models.model as loader

    if getattr(loader, "__mlflow_model__", None) is python_model:
        loader.__mlflow_model__ = None
