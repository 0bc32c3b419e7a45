"""LightGBM LambdaRank reranker over candidate lists: one query group per (user, snapshot).

Train snapshots give the training groups, the val snapshot early-stops, labels are the target
window's clicks. `score_candidates` is the one way anything (evaluation, the registry's pyfunc,
the API) turns a candidate frame into reranker scores.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines import memory
from pipelines.errors import InputError, MissingInputError
from pipelines.features import CATEGORICAL, FEATURES, FeatureTables, assemble, feature_columns

# A compiled ranker must score these probe rows (drawn around the model's own split thresholds, missing
# values included) as LightGBM does, to this tolerance, before it replaces LightGBM's predict.
COMPILE_PROBE_ROWS = 2000
COMPILE_TOLERANCE = 1e-9

MODEL_FILE = "ranker.txt"
# LightGBM reads |x| <= 1e-35 (its kZeroThreshold) as zero; probes stay out of that band.
_ZERO_BAND = 1e-30
META_FILE = "ranker.json"
SCORE_CHUNK_ROWS = 250_000  # rows scored at a time: their feature matrix and its build space stay ~0.2 GB
BATCH_ROWS = 10_000  # score_candidates over more rows than this predicts on every core (`Ranker.predict`)
# Compiled trees accepted in this process, by the model text's digest: a ranker unpickled again and again (a Dask
# worker's tasks) compiles once.
_COMPILED: dict[str, Any] = {}


@dataclass
class Ranker:
    """A trained booster and the feature names it was trained on, in order; `compile()` for serving."""

    booster: Any  # lightgbm.Booster; imported lazily
    features: list[str]
    meta: dict
    compiled: Any = field(default=None, repr=False)  # lleaves.Model once `compile()` succeeded

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(out / MODEL_FILE), num_iteration=self.booster.best_iteration or None)
        (out / META_FILE).write_text(json.dumps({**self.meta, "features": self.features}, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, in_dir: str | Path) -> Ranker:
        import lightgbm as lgb

        src = Path(in_dir)
        if not (src / MODEL_FILE).exists() or not (src / META_FILE).exists():
            raise MissingInputError(f"no ranker in {src} (need {MODEL_FILE} and {META_FILE}): run `newsrec train`")
        meta = json.loads((src / META_FILE).read_text())
        features = meta.pop("features")
        return cls(booster=lgb.Booster(model_file=str(src / MODEL_FILE)), features=features, meta=meta)

    @property
    def predictor(self) -> str:
        """What scores requests: "compiled" (lleaves) or "lightgbm"."""
        return "compiled" if self.compiled is not None else "lightgbm"

    def compile(self) -> None:
        """Compile the trees to machine code (lleaves/LLVM) for this CPU; `predict` then uses it.

        A request scores a few hundred rows, where LightGBM's per-call and per-row overhead dominates:
        compiled, the same trees score them ~6x faster. Inlining is off: it would add ~4x to the compile
        (3 s -> 11-14 s for 230 trees) for under 10% faster scoring. The compiled model must reproduce
        LightGBM's scores on probe rows around every split threshold (and missing values) or it is refused
        with a ValueError, and LightGBM stays in charge.
        """
        import hashlib

        import lleaves

        text = self.booster.model_to_string()
        key = hashlib.sha256(text.encode()).hexdigest()
        if key in _COMPILED:
            self.compiled = _COMPILED[key]
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_FILE
            path.write_text(text)
            model = lleaves.Model(model_file=str(path))
            model.compile(finline=False)
        probe = self._probe_rows()
        expected = self.booster.predict(probe, num_threads=1)
        got = model.predict(probe.astype(np.float64), n_jobs=1)
        worst = float(np.max(np.abs(got - expected)))
        if not worst <= COMPILE_TOLERANCE:
            raise InputError(f"compiled ranker disagrees with LightGBM by {worst:.3g} on probe rows: not used")
        self.compiled = _COMPILED[key] = model

    def __getstate__(self) -> dict:
        # The compiled trees hold pointers into this process's LLVM code: a copy (a Dask task) carries whether it
        # was compiled and compiles again where it lands (once per process, see _COMPILED).
        return {**self.__dict__, "compiled": self.compiled is not None}

    def __setstate__(self, state: dict) -> None:
        compiled = state.pop("compiled")
        self.__dict__.update(state, compiled=None)
        if compiled:
            self.try_compile()

    def try_compile(self) -> str | None:
        """`compile()`, LightGBM staying in charge where it cannot: None once compiled, else why not (the
        compiled trees refused, or the compiler failing, which must not keep a good model from scoring)."""
        try:
            self.compile()
        except ValueError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - any compiler problem: LightGBM scores instead
            return f"compiler failed: {type(exc).__name__}: {exc}"
        return None

    def _probe_rows(self) -> np.ndarray:
        """Rows around the model's splits: numeric values just below, on and above each threshold; the
        category codes of each categorical split plus one no split names; 5% missing."""
        rng = np.random.default_rng(0)
        n = COMPILE_PROBE_ROWS
        splits = self.booster.trees_to_dataframe()
        splits = splits[splits["split_feature"].notna()]
        values = np.zeros((n, len(self.features)), dtype=np.float32)
        for j, name in enumerate(self.features):
            rows = splits[splits["split_feature"] == name]
            numeric = rows["decision_type"] == "<="
            categories = [int(c) for t in rows.loc[~numeric, "threshold"] for c in str(t).split("||")]
            if categories:
                values[:, j] = rng.choice(np.array([*categories, max(categories) + 1]), n)
            elif numeric.any():
                thresholds = rows.loc[numeric, "threshold"].to_numpy(dtype=np.float64)
                # Values a feature can take (float32): no threshold beyond float32's range is probed.
                thresholds = thresholds[np.abs(thresholds) < np.finfo(np.float32).max / 2]
                if len(thresholds) == 0:
                    continue
                pick = rng.choice(thresholds, n)
                step = rng.choice([-1e-3, 0.0, 1e-3], n)
                # On the threshold itself only where LightGBM is unambiguous: it reads |x| <= 1e-35 as zero
                # (its split between negatives and zero sits at -1e-35), a value no real feature takes.
                step[(step == 0.0) & (np.abs(pick) <= _ZERO_BAND)] = 1e-3
                values[:, j] = pick + step * np.maximum(np.abs(pick), 1)
        values[rng.random(values.shape) < 0.05] = np.nan
        return values

    def predict(self, X: pd.DataFrame | Mapping[str, np.ndarray], threads: int = 1) -> np.ndarray:
        """Scores for a feature frame, or a mapping of feature name -> column (as `feature_columns` gives).

        `threads`: LightGBM's threads over the rows (0: one per core). One for a request, where starting
        threads costs more than its few hundred rows; a batch of millions of rows (the evaluation, the
        registry's pyfunc) uses every core. Each row's score is the same whatever the thread count."""
        columns = X.columns if isinstance(X, pd.DataFrame) else X.keys()
        missing = [f for f in self.features if f not in columns]
        if missing:
            raise InputError(f"feature matrix lacks {missing}")
        # A plain array in the trained column order: LightGBM's DataFrame checks cost more than a small
        # request's prediction (the categorical features are integer codes, not pandas categories).
        # The compiled trees read the same float32-rounded values LightGBM would, widened: identical comparisons.
        wide = np.float64 if self.compiled is not None else np.float32
        if isinstance(X, pd.DataFrame):
            values = (X if list(X.columns) == self.features else X[self.features]).to_numpy(dtype=np.float32)
            values = values.astype(wide, copy=False)
        else:
            # Feature-major first (each column one contiguous row), then one transposing copy: a third of
            # column_stack's time, whose row-major writes stride through the whole matrix once per feature.
            stacked = np.stack([np.asarray(X[f], dtype=np.float32) for f in self.features])
            values = np.ascontiguousarray(stacked.T, dtype=wide)
        if len(values) == 0:
            return np.zeros(0, dtype=np.float64)
        if self.compiled is not None:
            return self.compiled.predict(values, n_jobs=threads or os.cpu_count() or 1)
        return np.asarray(self.booster.predict(values, num_threads=threads), dtype=np.float64)


def score_candidates(
    model: str | Path | Ranker,
    candidates: pd.DataFrame,
    feature_tables: FeatureTables,
    context: pd.DataFrame | None = None,
) -> np.ndarray:
    """Reranker scores for `candidates` (one per row, same order); higher = show first.

    `model` is a folder written by `newsrec train` (or the serving bundle's ranker folder) or a
    loaded `Ranker`; `feature_tables` are the tables fitted at the candidates' cutoff; `context`
    (index user_id) overrides the tables' request context, as the API does for a live request.
    """
    ranker = model if isinstance(model, Ranker) else Ranker.load(model)
    # Slices keep the feature matrix small at Globo scale (rows are independent, see `assemble`).
    step = SCORE_CHUNK_ROWS
    parts = [ranker.predict(feature_columns(candidates.iloc[i : i + step], feature_tables, context),
                            threads=0 if len(candidates) > BATCH_ROWS else 1)
             for i in range(0, len(candidates), step)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


@dataclass
class RankingSet:
    """A feature matrix with labels and LightGBM query groups (rows of a group are contiguous)."""

    X: pd.DataFrame
    y: np.ndarray
    groups: np.ndarray

    @property
    def n_queries(self) -> int:
        return len(self.groups)


def sample_negatives(candidates: pd.DataFrame, max_negatives: int, seed: int) -> pd.DataFrame:
    """Keep every clicked candidate and at most `max_negatives` random unclicked ones per user.

    Training cost grows with rows while most of a long list's negatives teach LambdaRank little;
    sampling them uniformly keeps the list's mix (every source, every depth) in proportion.
    """
    if max_negatives < 1:
        raise InputError(f"max_negatives must be >= 1, got {max_negatives}")
    key = np.random.default_rng(seed).random(len(candidates))
    neg = candidates[C.LABEL].to_numpy() == 0
    order = pd.DataFrame({"u": candidates[C.USER_ID].to_numpy(), "neg": neg, "key": key})
    position = order.groupby(["u", "neg"])["key"].rank(method="first").to_numpy()
    return candidates[~neg | (position <= max_negatives)]


def ranking_set(
    candidates: pd.DataFrame,
    tables: FeatureTables,
    drop_no_positive: bool = True,
    max_negatives: int | None = None,
    seed: int = 0,
    max_queries: int | None = None,
) -> RankingSet:
    """Group one snapshot's labelled candidates by user, assemble features, keep queries with a click.

    A query without any clicked candidate gives LambdaRank no gradient and early stopping a free
    NDCG of 1, so those are dropped unless asked otherwise. `max_negatives` samples each query's
    unclicked candidates down to that many (training only: evaluation needs whole lists);
    `max_queries` keeps that many random queries whole (a bounded early-stopping set).
    """
    if C.LABEL not in candidates.columns:
        raise InputError(f"candidate frame lacks the '{C.LABEL}' column (labelled candidates are needed to train)")
    frame = candidates
    if drop_no_positive:
        positive = frame.groupby(C.USER_ID)[C.LABEL].transform("max") > 0
        frame = frame[positive]
    if max_queries is not None:
        users = frame[C.USER_ID].unique()
        if len(users) > max_queries:
            keep = np.random.default_rng(seed).choice(users, size=int(max_queries), replace=False)
            frame = frame[frame[C.USER_ID].isin(keep)]
    if max_negatives is not None:
        frame = sample_negatives(frame, max_negatives, seed)
    frame = frame.sort_values(C.USER_ID, kind="mergesort").reset_index(drop=True)
    groups = frame.groupby(C.USER_ID, sort=True).size().to_numpy()
    X = assemble(frame, tables)
    return RankingSet(X=X, y=frame[C.LABEL].to_numpy(dtype=np.int32), groups=groups)


def concat_sets(sets: list[RankingSet]) -> RankingSet:
    """Several snapshots' sets as one (groups never straddle snapshots)."""
    if not sets:
        raise InputError("no ranking sets to concatenate")
    return RankingSet(
        X=pd.concat([s.X for s in sets], ignore_index=True),
        y=np.concatenate([s.y for s in sets]),
        groups=np.concatenate([s.groups for s in sets]),
    )


def _dataset(sets: Sequence[RankingSet], features: list[str], categorical: list[str], **kwargs):
    """One LightGBM dataset of `sets`' rows in order (train / valid / refit), read as LightGBM's list of matrices:
    the same dataset as their concatenation without the copy, and each set's own float32 block read in place when
    its columns are `features` (a Globo-scale training set is gigabytes)."""
    import lightgbm as lgb

    if not sets:
        raise InputError("no ranking sets to train on")
    mats = [(s.X if list(s.X.columns) == features else s.X[features]).to_numpy(dtype=np.float32, copy=False)
            for s in sets]
    data = lgb.Dataset(mats, np.concatenate([s.y for s in sets]), group=np.concatenate([s.groups for s in sets]),
                       feature_name=features, categorical_feature=categorical, **kwargs)
    # The sets are frames without pandas category columns: the model records that as the Dask ranker's frames do
    # (its file then reads the same on both paths, and as before the list form).
    data.pandas_categorical = []
    return data


def _check_sets(train_queries: int, train_clicks: int, val_queries: int) -> None:
    if train_queries == 0 or train_clicks == 0:
        raise InputError("training set has no query with a clicked candidate: nothing to learn from")
    if val_queries == 0:
        raise InputError("validation set has no query with a clicked candidate: cannot early-stop")


def _lgb_setup(params: dict) -> tuple[list[str], list[str], int, dict]:
    """(features, categorical features, eval_at, LightGBM params) of the train params."""
    features = [f for f in FEATURES if f not in params.get("exclude_features", [])]
    categorical = [f for f in CATEGORICAL if f in features]
    eval_at = int(params["eval_at"])
    lgb_params = {
        **params["lgb"],
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [eval_at],
        "verbosity": -1,
    }
    return features, categorical, eval_at, lgb_params


def _meta(curve: list[float], best: int, sizes: dict) -> dict:
    best = best or len(curve)
    return {
        "best_iteration": int(best),
        f"val_ndcg_at_{sizes['eval_at']}": float(curve[best - 1]),
        "train_queries": int(sizes["train_queries"]),
        "train_rows": int(sizes["train_rows"]),
        "val_queries": int(sizes["val_queries"]),
        "val_rows": int(sizes["val_rows"]),
        "val_curve": [float(v) for v in curve],  # NDCG@eval_at on the val snapshot after each round
    }


def bin_rows(sets: list[RankingSet], params: dict, consume: bool = False):
    """`sets`' rows as one constructed LightGBM dataset, binned with the train params (`fit_ranker` and
    `refit_ranker` take it in place of the sets). With `consume`, `sets` is emptied once its rows are binned:
    the bins are a byte or less per value where the rows are four (a Globo-scale training set is gigabytes)."""
    features, categorical, _, lgb_params = _lgb_setup(params)
    data = _dataset(sets, features, categorical, params=lgb_params).construct()
    if consume:
        sets.clear()
    memory.release()  # what binning the rows used and freed (and with `consume` the rows)
    return data


def head_rows(data, n: int):
    """The first `n` rows of the constructed dataset `data` (whole queries), binned as they are there: LightGBM's
    own subset, given its row indices as one array (`Dataset.subset` would first sort them as a list of Python
    ints: ~0.7 GB for 20M rows)."""
    if not 0 < n <= data.num_data():
        raise InputError(f"cannot take the first {n} rows of a dataset of {data.num_data()}")
    sub = data.subset([0])
    sub.used_indices = np.arange(n, dtype=np.int32)
    return sub.construct()


def _sizes(data) -> tuple[int, int, int]:
    """(queries, rows, clicks) of a list of ranking sets or of a constructed LightGBM dataset."""
    if isinstance(data, Sequence):
        return (sum(s.n_queries for s in data), sum(len(s.y) for s in data), int(sum(s.y.sum() for s in data)))
    return len(data.get_group()), data.num_data(), int(np.asarray(data.get_label()).sum())


def fit_ranker(train, val: Sequence[RankingSet], params: dict) -> Ranker:
    """Train LambdaRank on the `train` sets (one per snapshot; or their rows already binned: `bin_rows`,
    `head_rows`), early-stopping on NDCG@eval_at of the `val` sets."""
    import lightgbm as lgb

    (train_queries, train_rows, train_clicks), (val_queries, val_rows, _) = _sizes(train), _sizes(val)
    _check_sets(train_queries, train_clicks, val_queries)
    features, categorical, eval_at, lgb_params = _lgb_setup(params)
    dtrain = train if not isinstance(train, Sequence) else _dataset(train, features, categorical, free_raw_data=False)
    dval = _dataset(val, features, categorical, reference=dtrain)
    evals: dict = {}
    booster = lgb.train(
        lgb_params,
        dtrain,
        num_boost_round=int(params["num_boost_round"]),
        valid_sets=[dval],
        valid_names=["val"],
        callbacks=[
            lgb.early_stopping(int(params["early_stopping_rounds"]), verbose=False),
            lgb.record_evaluation(evals),
            # one line every `log_every` rounds ("[50] val's ndcg@10: 0.31"), so a long fit is not silent
            *([lgb.log_evaluation(int(params["log_every"]))] if params.get("log_every") else []),
        ],
    )
    sizes = {"eval_at": eval_at, "train_queries": train_queries, "train_rows": train_rows,
             "val_queries": val_queries, "val_rows": val_rows}
    meta = _meta(evals["val"][f"ndcg@{eval_at}"], booster.best_iteration, sizes)
    return Ranker(booster=booster, features=features, meta=meta)


def refit_ranker(ranker: Ranker, sets, params: dict, consume: bool = False) -> Ranker:
    """`ranker`'s configuration trained again on `sets` (the train and val snapshots together; or their rows
    already binned: `bin_rows`) for the number of rounds early stopping chose: the val window is the newest data
    before the cutoff, and in news the newest hours are the ones most like the next. With `consume`, a list of
    sets is emptied once LightGBM has binned its rows, so the boosting rounds run without them."""
    import lightgbm as lgb

    features, _, _, lgb_params = _lgb_setup(params)
    if features != ranker.features:
        raise InputError(f"refit features {features} differ from the early-stopped ranker's {ranker.features}")
    rounds = int(ranker.meta["best_iteration"])
    queries, rows, _ = _sizes(sets)
    meta = {**ranker.meta, "refit_queries": int(queries), "refit_rows": int(rows)}
    data = bin_rows(sets, params, consume=consume) if isinstance(sets, Sequence) else sets
    booster = lgb.train(lgb_params, data, num_boost_round=rounds)
    return Ranker(booster=booster, features=features, meta=meta)


# LightGBM params -> the scikit-learn estimator's own argument names, so no alias is set twice (the estimator
# passes its defaults, e.g. reg_lambda=0, beside any alias given as a keyword). Others go in as keywords.
_ESTIMATOR_NAMES = {
    "learning_rate": "learning_rate",
    "num_leaves": "num_leaves",
    "max_depth": "max_depth",
    "min_data_in_leaf": "min_child_samples",
    "min_sum_hessian_in_leaf": "min_child_weight",
    "min_gain_to_split": "min_split_gain",
    "feature_fraction": "colsample_bytree",
    "bagging_fraction": "subsample",
    "bagging_freq": "subsample_freq",
    "lambda_l1": "reg_alpha",
    "lambda_l2": "reg_lambda",
    "bin_construct_sample_cnt": "subsample_for_bin",
    "seed": "random_state",
}


def _estimator_args(lgb_params: dict, num_boost_round: int) -> dict:
    """`DaskLGBMRanker(**...)` for these LightGBM params: the same model settings. num_threads goes (each
    worker uses its own threads); eval_at goes to `fit`."""
    args = {"n_estimators": int(num_boost_round)}
    for key, value in lgb_params.items():
        if key in ("num_threads", "eval_at"):
            continue
        args[_ESTIMATOR_NAMES.get(key, key)] = value
    return args


def _part_sizes(part: RankingSet) -> tuple[int, int, int]:
    return len(part.y), part.n_queries, int(part.y.sum())


def _free_port() -> int:
    """A TCP port that is free on this host now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def lightgbm_machines(client, workers: list[str], attempts: int = 5) -> str:
    """LightGBM's `machines` network setting for these Dask workers: `host:port,...`, one port each, found free
    on the worker's own host (`client.run`: no task, no result moves between workers).

    Given explicitly because LightGBM's own search (lightgbm.dask `_assign_open_ports_to_workers`) returns
    (socket, port) from a task pinned to each worker and reads the port with a second, unpinned task; when the
    scheduler places that one on the other worker, the socket cannot be sent there and training waits forever
    (seen on this 2-core machine under load: the test suite hung in `DaskLGBMRanker.fit`)."""
    from urllib.parse import urlparse

    for _ in range(attempts):
        ports = client.run(_free_port, workers=list(workers))
        entries = [f"{urlparse(w).hostname}:{ports[w]}" for w in workers]
        if len(set(entries)) == len(entries):  # two workers of one host were handed the same port: ask again
            return ",".join(entries)
    raise RuntimeError(f"no distinct free ports for LightGBM on workers {workers} after {attempts} attempts")


def fit_ranker_dask(client, train_parts: list, val, params: dict) -> Ranker:
    """`fit_ranker` with LightGBM's Dask ranker: `train_parts` are futures of RankingSets (whole queries each:
    a query never straddles partitions), `val` the future of the early-stopping set.

    LightGBM trains data-parallel: each worker builds histograms of its own rows, the histograms are summed
    over the network, every worker grows the same trees. Its Dask interface evaluates an eval set per worker
    on the parts placed beside that worker's training parts and does not support early stopping (workers
    that stop at different rounds hang: LightGBM issues #3712, #6351). So every training partition gets a
    whole copy of the val set beside it: each worker computes the same global NDCG@eval_at (duplicated queries
    leave a mean unchanged) and all stop at the same round.
    """
    import dask.array as da
    import dask.dataframe as dd
    import lightgbm as lgb

    sizes = client.gather([client.submit(_part_sizes, p, pure=False) for p in train_parts])
    val_rows, val_queries, _ = client.gather(client.submit(_part_sizes, val, pure=False))
    _check_sets(sum(q for _, q, _ in sizes), sum(c for _, _, c in sizes), val_queries)
    features, categorical, eval_at, lgb_params = _lgb_setup(params)

    def frame(part):
        return part.X[features]

    def column(part, name):
        return getattr(part, name)

    def empty(part):
        return frame(part).iloc[:0]

    meta = client.submit(empty, val, pure=False).result()  # the columns and dtypes, not the rows
    # Everything LightGBM gathers for partition k (its rows, labels, groups and the val copy) is made on the
    # worker that holds partition k: LightGBM trains each part where the scheduler gathers it, and it gathers
    # it where most of its bytes are (left alone, beside the one val set: a single machine trains).
    holders = client.who_has(train_parts)
    pieces = []
    for part, (rows, queries, _) in zip(train_parts, sizes, strict=True):
        # Pinned, not preferred: a busy worker would otherwise have its pieces stolen, and one machine would train.
        where = {"workers": sorted(holders[part.key])[:1], "allow_other_workers": False, "pure": False}
        pieces.append({
            "X": client.submit(frame, part, **where),
            "y": da.from_delayed(client.submit(column, part, "y", **where), (rows,), np.int32),
            "groups": da.from_delayed(client.submit(column, part, "groups", **where), (queries,), np.int64),
            "val_X": client.submit(frame, val, **where),
            "val_y": da.from_delayed(client.submit(column, val, "y", **where), (val_rows,), np.int32),
            "val_groups": da.from_delayed(client.submit(column, val, "groups", **where), (val_queries,), np.int64),
        })
    X = dd.from_delayed([p["X"] for p in pieces], meta=meta, verify_meta=False)
    y = da.concatenate([p["y"] for p in pieces])
    groups = da.concatenate([p["groups"] for p in pieces])
    eval_X = dd.from_delayed([p["val_X"] for p in pieces], meta=meta, verify_meta=False)
    eval_y = da.concatenate([p["val_y"] for p in pieces])
    eval_groups = da.concatenate([p["val_groups"] for p in pieces])

    # the workers LightGBM will train on: the ones the pieces are pinned to
    machines = lightgbm_machines(client, sorted({min(holders[part.key]) for part in train_parts}))
    model = lgb.DaskLGBMRanker(client=client, machines=machines,
                               **_estimator_args(lgb_params, params["num_boost_round"]))
    # LightGBM waits on its parts through distributed's current client: ours, for this block only.
    with client.as_current(), warnings.catch_warnings():
        # The estimator's n_jobs=None default, which the Dask interface replaces by each worker's threads.
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        model.fit(X, y, group=groups, eval_X=(eval_X,), eval_y=(eval_y,), eval_group=[eval_groups],
                  eval_names=["val"], eval_at=[eval_at], categorical_feature=categorical,
                  callbacks=[lgb.early_stopping(int(params["early_stopping_rounds"]), verbose=False)])
    booster = model.booster_
    totals = {"eval_at": eval_at, "train_queries": sum(q for _, q, _ in sizes),
              "train_rows": sum(r for r, _, _ in sizes), "val_queries": val_queries, "val_rows": val_rows}
    meta_ = _meta(model.evals_result_["val"][f"ndcg@{eval_at}"], booster.best_iteration, totals)
    return Ranker(booster=booster, features=features, meta=meta_)


def feature_importance(ranker: Ranker) -> pd.DataFrame:
    """Gain and split importance per feature, highest gain first."""
    b = ranker.booster
    frame = pd.DataFrame(
        {
            "feature": b.feature_name(),
            "gain": b.feature_importance("gain", iteration=b.best_iteration or None),
            "split": b.feature_importance("split", iteration=b.best_iteration or None),
        }
    )
    return frame.sort_values("gain", ascending=False).reset_index(drop=True)


def load_ranking_set(
    candidates_dir: Path, features_dir: Path, snapshot: str, embeddings: np.ndarray, **kwargs
) -> RankingSet:
    """The ranking set of one snapshot from the candidates and features stages' outputs."""
    path = candidates_dir / f"{snapshot}.parquet"
    if not path.exists():
        raise MissingInputError(f"candidates of snapshot '{snapshot}' not found: {path} (run `newsrec candidates`)")
    tables = FeatureTables.load(features_dir / snapshot, embeddings)
    return ranking_set(pd.read_parquet(path), tables, **kwargs)


def train(
    split_path: Path, candidates_dir: Path, features_dir: Path, data_root: Path, params: dict,
    client=None, partitions: int | None = None,
) -> Ranker:
    """Fit the ranker on every train snapshot, early-stopping on the val snapshots, then (params
    `refit_on_val`, single process) refit it on train and val together for the chosen rounds (article
    embeddings from `data_root`'s catalogue: the static files and the landed article drops).

    With a Dask `client` the snapshots' ranking sets are built on the workers (`load_ranking_set`, one task
    per snapshot), concatenated into `partitions` training partitions of consecutive snapshots (default: one
    per snapshot) and fitted with LightGBM's Dask ranker (`fit_ranker_dask`); no refit there."""
    from pipelines.catalogue import read_catalogue
    from pipelines.features import normalise_embeddings
    from pipelines.split import read_snapshots

    def catalogue_vectors() -> np.ndarray:
        return normalise_embeddings(read_catalogue(data_root)[1], in_place=True)  # no second 364 MB at Globo

    embeddings = catalogue_vectors()
    train_names = [s.name for s in read_snapshots(split_path, roles=["train"])]
    val_names = [s.name for s in read_snapshots(split_path, roles=["val"])]
    if not train_names or not val_names:
        raise InputError(f"{split_path}: need >= 1 train snapshot and >= 1 val snapshot")
    sampling = {"max_negatives": params.get("max_negatives"), "seed": int(params["lgb"].get("seed", 0))}
    # A bounded early-stopping set: at most val_max_queries whole queries, spread over the val snapshots.
    cap = params.get("val_max_queries")
    val_sampling = {"max_queries": None if cap is None else max(1, int(cap) // len(val_names)),
                    "seed": sampling["seed"]}
    print(f"reading {len(train_names)} train and {len(val_names)} val snapshots ...", file=sys.stderr, flush=True)
    if client is None:
        def sets(names: list[str], **kwargs) -> list[RankingSet]:
            # One set per snapshot, never concatenated: LightGBM reads them as a list (`_dataset`). Each read
            # frees what built it (`memory.release`): 72 Globo snapshots otherwise leave ~1 GB of freed space resident.
            out = []
            for name in names:
                out.append(load_ranking_set(candidates_dir, features_dir, name, embeddings, **kwargs))
                memory.release()
            return out

        # The rows are binned once: the training snapshots', then (with `refit_on_val`) every val query's, sampled
        # like them (early stopping ranks whole lists, a refit does not). Early stopping trains on the bins of the
        # first part, the refit on all of them: no float rows are held while boosting, none binned twice.
        refit = bool(params.get("refit_on_val"))
        rows = sets(train_names, **sampling)
        n_train = sum(len(s.y) for s in rows)
        rows += sets(val_names, **sampling) if refit else []
        del embeddings  # the catalogue's vectors (364 MB at Globo) go while the rows are binned ...
        binned = bin_rows(rows, params, consume=True)
        fit_rows = head_rows(binned, n_train) if refit else binned
        embeddings = catalogue_vectors()  # ... and are read again (seconds) for the early-stopping lists alone
        val_sets = sets(val_names, **val_sampling)
        del embeddings
        memory.release()
        print(f"training on {len(fit_rows.get_group())} queries ({n_train} rows), early stopping on "
              f"{sum(s.n_queries for s in val_sets)} ...", file=sys.stderr, flush=True)
        ranker = fit_ranker(fit_rows, val_sets, params)
        del val_sets, fit_rows  # early stopping is over: its lists and the first part's copy of the bins go
        memory.release()  # and the space LightGBM's fit freed
        if refit:
            ranker = refit_ranker(ranker, binned, params)
    else:
        shared = client.scatter(embeddings, broadcast=True, hash=False)
        # The workers read these folders from their own working folder: absolute, whatever the caller gave.
        candidates_dir, features_dir = Path(candidates_dir).resolve(), Path(features_dir).resolve()

        def built(names: list[str], **kwargs) -> list:
            return [client.submit(load_ranking_set, candidates_dir, features_dir, n, shared, **kwargs, pure=False)
                    for n in names]

        snaps = built(train_names, **sampling)
        # Consecutive snapshots per partition: the rows keep the single process's order, queries stay whole.
        # Partition i is meant for worker i (round robin): LightGBM trains on the workers that hold data.
        batches = np.array_split(np.arange(len(snaps)), min(len(snaps), partitions or len(snaps)))
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        # Pinned (allow_other_workers=False): the scheduler's work stealing must not gather every part on one worker.
        parts = [client.submit(concat_sets, [snaps[i] for i in b], workers=[workers[k % len(workers)]],
                               allow_other_workers=False, pure=False) for k, b in enumerate(batches)]
        val = client.submit(concat_sets, built(val_names, **val_sampling), pure=False)
        ranker = fit_ranker_dask(client, parts, val, params)
    ranker.meta["train_snapshots"] = train_names
    return ranker


def log_run(ranker: Ranker, out_dir: Path, params: dict, mlflow_params: dict, run_name: str = "train") -> str:
    """Log the training run to MLflow (params, validation metrics, the validation curve round by round, the
    gain importance plot, the ranker files); its id."""
    import time

    import matplotlib

    matplotlib.use("Agg")  # no display: the figure goes to a file
    import lightgbm as lgb
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from pipelines.tracking import use_tracking

    use_tracking(mlflow_params)
    flat = {k: v for k, v in params.items() if k != "lgb"} | {f"lgb.{k}": v for k, v in params["lgb"].items()}
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else v for k, v in flat.items()})
        mlflow.log_metrics({k: float(v) for k, v in ranker.meta.items() if isinstance(v, (int, float))})
        now = int(time.time() * 1000)
        key = f"val_ndcg_at_{params['eval_at']}_by_round"
        curve = [Metric(key, v, now, step) for step, v in enumerate(ranker.meta.get("val_curve", []), start=1)]
        for start in range(0, len(curve), 1000):  # MLflow takes at most 1000 metrics per batch
            MlflowClient().log_batch(run.info.run_id, metrics=curve[start:start + 1000])
        ax = lgb.plot_importance(ranker.booster, importance_type="gain", max_num_features=25, figsize=(8, 8),
                                 title="Gain importance (top 25)", precision=0)
        mlflow.log_figure(ax.figure, "importance_gain.png")
        mlflow.log_artifacts(str(out_dir), artifact_path="ranker")
        return run.info.run_id


def run_id_file(ranker_dir: str | Path) -> Path:
    """`<ranker_dir>.run.json`: the MLflow run that logged the ranker, beside the DVC output, not in it (a run id
    is new on every run, so inside `models/ranker` it would change the output's hash on every `dvc repro`)."""
    ranker_dir = Path(ranker_dir)
    return ranker_dir.with_name(ranker_dir.name + ".run.json")


def main(argv: list[str] | None = None) -> int:
    from pipelines.cluster import connect, partition_count
    from pipelines.config import parse_step, step_parser

    parser = step_parser("train", __doc__, data_root="data root (the article catalogue: raw/ files and landed "
                         "article drops)")
    parser.add_argument("--split", type=Path, required=True, help="snapshot file written by `newsrec split`")
    parser.add_argument("--candidates", type=Path, required=True, help="folder of <snapshot>.parquet candidates")
    parser.add_argument("--features", type=Path, required=True, help="folder of <snapshot>/ feature tables")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write (ranker.txt, ranker.json)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    args, config = parse_step(parser, argv)
    params, dask_params = config["train"], config["dask"]
    with connect(dask_params) as client:
        partitions = None if client is None else partition_count(client, dask_params)
        ranker = train(args.split, args.candidates, args.features, args.data_root, params, client=client,
                       partitions=partitions)
    ranker.save(args.out)
    feature_importance(ranker).to_csv(args.out / "importance.csv", index=False)
    run_file = run_id_file(args.out)
    run_file.unlink(missing_ok=True)
    if not args.no_mlflow:
        from pipelines.split import read_snapshots

        serve = read_snapshots(args.split, roles=["serve"])
        name = f"ranker to hour {serve[0].cutoff_hour} ({ranker.meta['train_queries']} queries, " \
               f"{ranker.meta['best_iteration']} trees)" if serve else "ranker"
        run_id = log_run(ranker, args.out, params, config["mlflow"], run_name=name)
        run_file.write_text(json.dumps({"run_id": run_id}) + "\n")
    summary = {k: ranker.meta[k] for k in ranker.meta if k not in ("train_snapshots", "val_curve")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
