"""MLflow tracking setup: which store and experiment the stages log to.

Training logs its run here and registering logs the model into the same run, so both call `use_tracking` with
params.yaml `mlflow`. Kept apart from pipelines.registry so that training does not import the registry.
"""

from __future__ import annotations

from pathlib import Path


def use_tracking(mlflow_params: dict) -> str:
    """Point mlflow at the configured store and experiment; its id.

    A new experiment's artifacts go to `artifact_root`: a local folder, an object-store URI the client
    writes to itself (`s3://bucket/prefix`, endpoint from MLFLOW_S3_ENDPOINT_URL), or null to let a tracking
    server decide (its proxied `--artifacts-destination`, so clients need no bucket credentials).
    """
    import mlflow

    mlflow.set_tracking_uri(mlflow_params["tracking_uri"])
    # The registry follows the tracking store, even when something earlier in the process pointed it elsewhere.
    mlflow.set_registry_uri(mlflow_params["tracking_uri"])
    name = mlflow_params["experiment"]
    exp = mlflow.get_experiment_by_name(name)
    artifact_root = mlflow_params.get("artifact_root")
    if exp is None and not artifact_root:
        exp_id = mlflow.create_experiment(name)
    elif exp is None and "://" in str(artifact_root):
        exp_id = mlflow.create_experiment(name, artifact_location=str(artifact_root))
    elif exp is None:
        root = Path(artifact_root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        exp_id = mlflow.create_experiment(name, artifact_location=root.as_uri())
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id
