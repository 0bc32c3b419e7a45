"""The serving bundle: what a registered model carries, how it is built, read and scored.

A registered `newsrec-ranker` version is a pyfunc (pipelines.ranker_pyfunc) whose artifact is this folder: the
booster and feature list, plus the candidate index (with the learned two-tower model the ranker's learned features
came from, under index/learned/) and feature tables fitted at the end of the data, so
`models:/newsrec-ranker@champion` is all the API needs. Kept apart from pipelines.registry (registering, the
promotion gate) so that the service and the pyfunc read a bundle without importing how one is registered.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines.errors import InputError, MissingInputError
from pipelines.features import (
    CONTEXT_FEATURES,
    FeatureTables,
    normalise_embeddings,
)
from pipelines.fileio import verify_manifest, write_manifest
from pipelines.serving_index import (
    HISTORY_COLUMNS,
    ServingIndex,
    check_compatible,
    load_history,
    save_history,
)
from pipelines.train import Ranker, score_candidates

# The registry aliases a bundle is served under: `newsrec register` sets the first on a new version, the promotion
# gate moves the second, the API resolves both.
CHAMPION = "champion"
CHALLENGER = "challenger"
log = logging.getLogger("newsrec.bundle")  # shown in the API's log (serving.app.configure_logging)

_BUNDLE_FILES = {"ranker": "ranker", "features": "features", "index": "index"}
_EMBEDDINGS = "embeddings.npy"
_ARTICLES = "articles.parquet"
_META = "bundle.json"
_HISTORY = "history.npy"  # memory-mapped, as in the hourly serving index
_LEGACY_HISTORY = "history.parquet"  # bundles registered before the history was an .npy
# Raised whenever what the bundle holds, or what the code expects of it, changes: a model registered by
# other code is refused with a clear message instead of failing on a missing key mid-request.
BUNDLE_FORMAT = 3  # 3: feature tables hold the last clicks before the newest and the derived article shares


@dataclass
class ServingBundle:
    """Everything online scoring needs, fitted at one cutoff (the end of the data)."""

    ranker: Ranker
    tables: FeatureTables
    index: Any  # pipelines.candidates.CandidateIndex
    articles: pd.DataFrame
    meta: dict
    history: pd.DataFrame | None = None  # HISTORY_COLUMNS sorted by user, time (absent in older bundles)
    # The learned model (pipelines.learned) the ranker was trained with, kept apart from the index it came in:
    # every hourly index the ranker serves over gets its article vectors from this model (`with_index`).
    learned: Any = None

    @property
    def cutoff_ms(self) -> int:
        return self.tables.cutoff_ms if self.tables is not None else int(self.meta["cutoff_ms"])

    def ranker_only(self) -> ServingBundle:
        """This bundle without its fitted state (tables, index, catalogue, history): what `with_index` needs.
        A served model keeps this as its base once it serves over an hourly index, instead of holding a second
        copy of the state (Globo: ~0.4 GB per worker)."""
        return dataclasses.replace(self, tables=None, index=None, articles=None, history=None,
                                   meta={**self.meta, "cutoff_ms": self.cutoff_ms})

    @classmethod
    def load(cls, bundle_dir: str | Path) -> ServingBundle:
        from pipelines.candidates import CandidateIndex

        src = Path(bundle_dir)
        if not (src / _META).exists():
            raise MissingInputError(f"no serving bundle in {src} ({_META} missing)")
        if not verify_manifest(src):
            log.warning("serving bundle in %s has no manifest (registered before manifests): files not verified", src)
        meta = json.loads((src / _META).read_text())
        if meta.get("format") != BUNDLE_FORMAT:
            written = meta.get("format") or "none recorded (older code)"
            raise InputError(f"serving bundle in {src} has format {written}; this code reads format "
                             f"{BUNDLE_FORMAT}: register the model again with this code (`newsrec register`)")
        embeddings = np.load(src / _EMBEDDINGS, mmap_mode="r")
        index = CandidateIndex.load(src / _BUNDLE_FILES["index"])
        return cls(
            ranker=Ranker.load(src / _BUNDLE_FILES["ranker"]),
            tables=FeatureTables.load(src / _BUNDLE_FILES["features"], embeddings),
            index=index,
            learned=index.learned,
            articles=pd.read_parquet(src / _ARTICLES),
            meta=meta,
            history=load_history(src / _HISTORY) if (src / _HISTORY).exists() else
            pd.read_parquet(src / _LEGACY_HISTORY) if (src / _LEGACY_HISTORY).exists() else None,
        )

    def with_index(self, serving: ServingIndex) -> ServingBundle:
        """This bundle's ranker over an hourly serving index (pipelines.serving_index) instead of the state the
        bundle was fitted with; ValueError when the pair is incompatible (format, features)."""
        check_compatible(self.ranker.features, serving.meta)
        meta = {**self.meta, "cutoff_ms": serving.cutoff_ms, "index_hour": serving.cutoff_hour,
                "feature_params": serving.meta.get("feature_params", self.meta.get("feature_params"))}
        return ServingBundle(ranker=self.ranker, tables=serving.tables, index=serving.index.with_learned(self.learned),
                             articles=serving.articles, meta=meta, history=serving.history, learned=self.learned)

    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        """Scores for a candidate frame; context columns (CONTEXT_FEATURES), when present, are the request's."""
        present = [c for c in CONTEXT_FEATURES if c in candidates.columns]
        context = None
        if present:
            if len(present) != len(CONTEXT_FEATURES):
                missing = sorted(set(CONTEXT_FEATURES) - set(present))
                raise InputError(f"candidate frame has some context columns but lacks {missing}")
            context = candidates[[C.USER_ID, *CONTEXT_FEATURES]].drop_duplicates(C.USER_ID).set_index(C.USER_ID)
        return score_candidates(self.ranker, candidates, self.tables, context)


def build_bundle(
    ranker_dir: str | Path,
    features_dir: str | Path,
    index_dir: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    validated_dir: str | Path | None = None,
    feature_params: dict | None = None,
) -> Path:
    """Assemble the serving bundle folder from the serve snapshot's tables and index and the trained ranker.

    With `validated_dir`, the clicks before the cutoff go in too (HISTORY_COLUMNS), and `feature_params`
    (params.yaml `features`) are kept in the meta: the API refits one user's features from them after a
    click it receives.
    """
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    from pipelines.catalogue import read_catalogue

    ranker = Ranker.load(ranker_dir)
    articles, raw_embeddings = read_catalogue(data_root)  # the serve snapshot is at the end of the data
    embeddings = normalise_embeddings(raw_embeddings)
    tables = FeatureTables.load(features_dir, embeddings)
    if not Path(index_dir).is_dir():
        raise MissingInputError(f"candidate index not found: {index_dir} (run `newsrec candidates`)")
    ranker.save(out / _BUNDLE_FILES["ranker"])
    tables.save(out / _BUNDLE_FILES["features"])
    shutil.copytree(index_dir, out / _BUNDLE_FILES["index"])
    np.save(out / _EMBEDDINGS, embeddings)
    articles.to_parquet(out / _ARTICLES, index=False)
    if validated_dir is not None:
        from pipelines.split import load_clicks

        history = load_clicks(validated_dir, None, tables.cutoff_ms, columns=HISTORY_COLUMNS)
        history = history[HISTORY_COLUMNS].sort_values([C.USER_ID, C.CLICK_TIMESTAMP], kind="mergesort")
        save_history(history, out / _HISTORY)
    meta = {"format": BUNDLE_FORMAT, "cutoff_ms": tables.cutoff_ms, "features": ranker.features, "ranker": ranker.meta,
            "feature_params": dict(feature_params or {})}
    (out / _META).write_text(json.dumps(meta, indent=2) + "\n")
    write_manifest(out)  # last: what ServingBundle.load checks before it parses anything
    return out


def signature():
    """Input: a candidate frame (ids, source scores/ranks, optional request context); output: one score."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from pipelines.sources.base import names, row_columns

    inputs = [ColSpec("long", C.USER_ID), ColSpec("long", C.ARTICLE_ID)]
    # Scores are NaN where a source did not propose the article, ranks are 0 there (pipelines.candidates).
    for source in names():
        inputs += [ColSpec("double", C.score_col(source), required=False),
                   ColSpec("long", C.rank_col(source), required=False)]
    inputs += [ColSpec("double", C.score_col(C.FUSED), required=False)]
    inputs += [ColSpec("double", col, required=False) for col in row_columns()]
    inputs += [ColSpec("long", col, required=False) for col in CONTEXT_FEATURES]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("double")]))


def learned_dir(bundle_dir: str | Path) -> Path:
    """The folder of the learned model inside a bundle (it travels in the candidate index)."""
    return Path(bundle_dir) / _BUNDLE_FILES["index"] / "learned"
