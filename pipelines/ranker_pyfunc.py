"""The registered model's MLflow pyfunc: a candidate frame in, one reranker score per row out.

Logged as MLflow "model from code": this file is copied into the model and run on load, where
`set_model` below hands MLflow the model object (nothing is pickled). Kept apart from
pipelines.bundle because it costs an mlflow import; only logging and loading a model pay that.
"""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd

BUNDLE_ARTIFACT = "bundle"


class NewsrecRanker(mlflow.pyfunc.PythonModel):
    """Scores candidates with the serving bundle (ranker + feature tables fitted at the end of the data).

    After `mlflow.pyfunc.load_model(...)`, `.unwrap_python_model().bundle` is the whole
    `ServingBundle` (candidate index, feature tables, article metadata) for the API.
    """

    def load_context(self, context) -> None:
        from pipelines.bundle import ServingBundle

        self.bundle = ServingBundle.load(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return self.bundle.score(model_input)


mlflow.models.set_model(NewsrecRanker())
