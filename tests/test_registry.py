"""The MLflow registry against a real SQLite backend: load by alias and score, the promotion gate, rollback.

The bundle is the real one the tiny pipeline produces (conftest `serving_bundle`); versions differ
only in the test metrics and window they are registered with, which is all the gate looks at.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import bundle as B
from pipelines import columns as C
from pipelines import registry as R
from pipelines.tracking import use_tracking

pytestmark = pytest.mark.model

NAME = "newsrec-ranker"
WINDOW = "hours 18-20, 500 clicks, 0123456789ab"


def _metrics(all_: float, cold: float) -> dict[str, dict[str, float]]:
    return {"all": {"ndcg@10": all_, "recall@10": all_}, "warm": {"ndcg@10": all_}, "cold": {"ndcg@10": cold}}


# version -> (metrics, window) registered once for the module; tests pick which one is challenger.
VERSIONS = {
    "1": (_metrics(0.30, 0.20), WINDOW),
    "2": (_metrics(0.29, 0.25), WINDOW),  # worse overall
    "3": (_metrics(0.40, 0.10), WINDOW),  # better overall, worse on cold users
    "4": (_metrics(0.45, 0.30), "hours 30-40, 900 clicks, ba9876543210"),  # another window
    "5": (_metrics(0.35, 0.21), WINDOW),  # better on both
}


@pytest.fixture(scope="module")
def registry(serving_bundle, tmp_path_factory):
    from mlflow import MlflowClient

    where = tmp_path_factory.mktemp("registry")
    params = {"tracking_uri": f"sqlite:///{where / 'mlflow.db'}", "artifact_root": str(where / "mlartifacts"),
              "experiment": "registry-tests"}
    use_tracking(params)
    for version, (metrics, window) in VERSIONS.items():
        assert R.register(serving_bundle, metrics, window, NAME, R.CHALLENGER) == version
    return params, MlflowClient(params["tracking_uri"])


@pytest.fixture
def client(registry):
    """The module's registry with no champion, no challenger and no champion history."""
    import mlflow

    params, client = registry
    mlflow.set_tracking_uri(params["tracking_uri"])
    for alias in (R.CHAMPION, R.CHALLENGER):
        client.delete_registered_model_alias(NAME, alias) if alias in R.aliases(client, NAME) else None
    client.delete_registered_model_tag(NAME, R.HISTORY_TAG)
    return client


def _challenge(client, version: str):
    client.set_registered_model_alias(NAME, R.CHALLENGER, version)
    return R.promote(client, NAME, "ndcg@10", min_gain=0.001, cold_tolerance=0.0)


def _champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, R.CHAMPION).version)


@pytest.fixture(scope="module")
def candidate_frame(serving_bundle) -> pd.DataFrame:
    """Candidates for a few known users and one unknown (cold) user, from the bundle's own index."""
    bundle = B.ServingBundle.load(serving_bundle)
    history = bundle.history
    users = history[C.USER_ID].drop_duplicates().to_numpy()[:5]
    clicks = history[history[C.USER_ID].isin(users)][[C.USER_ID, C.CLICK_ARTICLE_ID, C.CLICK_TIMESTAMP]]
    cold_user = int(history[C.USER_ID].max()) + 1
    frame = bundle.index.candidates(clicks, users=[*users, cold_user])
    assert frame[C.USER_ID].nunique() == 6 and cold_user in set(frame[C.USER_ID])
    return frame


def test_registered_model_loads_by_alias_and_scores_a_candidate_frame_consistently(client, candidate_frame,
                                                                                    serving_bundle):
    import mlflow

    assert _challenge(client, "1").promoted
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{R.CHAMPION}")
    scores = np.asarray(model.predict(candidate_frame))
    assert scores.shape == (len(candidate_frame),) and np.isfinite(scores).all()
    np.testing.assert_allclose(scores, np.asarray(model.predict(candidate_frame)))
    # The same bundle scored directly: the pyfunc adds nothing and drops nothing.
    np.testing.assert_allclose(scores, B.ServingBundle.load(serving_bundle).score(candidate_frame))
    # Scores depend on the row, not on where the row sits in the frame.
    shuffled = candidate_frame.sample(frac=1.0, random_state=0)
    np.testing.assert_allclose(np.asarray(model.predict(shuffled)), scores[shuffled.index.to_numpy()])
    names = [c.name for c in model.metadata.signature.inputs.inputs]
    assert names[:2] == [C.USER_ID, C.ARTICLE_ID] and C.score_col("emb") in names


_SCORE_WITHOUT_EXTRAS = """
import importlib.abc, sys
BLOCKED = set(sys.argv[4].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"scoring imported {name}, which is not in newsrec's core dependencies")
sys.meta_path.insert(0, Block())
import mlflow, numpy as np, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
np.save(sys.argv[3], np.asarray(model.predict(pd.read_parquet(sys.argv[3] + ".parquet"))))
"""


def _dist(requirement: str) -> str:
    import re

    return re.split(r"[<>=!~\[;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _closure(requirements) -> set[str]:
    """Distributions installed by `requirements`, transitively (extras of dependencies left out)."""
    import importlib.metadata as md

    seen: set[str] = set()
    todo = [_dist(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [_dist(r) for r in md.requires(name) or [] if "extra ==" not in r]
        except md.PackageNotFoundError:
            continue
    return seen


def extras_only_modules() -> set[str]:
    """Top-level modules of the packages pyproject.toml's extras name that the core's dependency closure does
    not bring (their own dependencies are left alone: a core package may import one of those when present)."""
    import importlib.metadata as md
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    extras = [r for name in ("pipeline", "airflow", "serve", "dashboard")
              for r in project["optional-dependencies"][name] if not r.startswith("newsrec")]
    only = {_dist(r) for r in extras} - _closure(project["dependencies"])
    return {module for module, dists in md.packages_distributions().items()
            if module.isidentifier() and any(_dist(d) in only for d in dists)}


def test_a_registered_model_scores_with_the_core_package_alone(client, registry, candidate_frame, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import mlflow

    assert _challenge(client, "1").promoted
    uri = f"models:/{NAME}@{R.CHAMPION}"
    requirements = Path(mlflow.artifacts.download_artifacts(f"{uri}/requirements.txt", dst_path=str(tmp_path)))
    declared = [line.split("==")[0] for line in requirements.read_text().split() if line]
    assert sorted(declared) == ["mlflow", "newsrec"]
    blocked = extras_only_modules()
    assert {"airflow", "streamlit", "great_expectations", "evidently", "dvc", "dask", "lleaves"} <= blocked
    out = tmp_path / "scores.npy"
    candidate_frame.to_parquet(f"{out}.parquet")
    proc = subprocess.run([sys.executable, "-c", _SCORE_WITHOUT_EXTRAS, registry[0]["tracking_uri"], uri, str(out),
                           ",".join(sorted(blocked))], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = mlflow.pyfunc.load_model(uri)
    np.testing.assert_allclose(np.load(out), np.asarray(model.predict(candidate_frame)))


def test_request_context_columns_reach_the_features(client, candidate_frame):
    import mlflow

    from pipelines.features import CONTEXT_FEATURES
    from pipelines.train import score_candidates

    assert _challenge(client, "1").promoted
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{R.CHAMPION}")
    bundle = model.unwrap_python_model().bundle
    values = {"c_hour_of_day": 9, "c_device": 1, "c_os": 2, "c_referrer": 1, "c_region": 5, "c_environment": 4}
    with_context = candidate_frame.assign(**values)
    context = pd.DataFrame(values, index=pd.Index(candidate_frame[C.USER_ID].unique(), name=C.USER_ID))
    np.testing.assert_allclose(
        np.asarray(model.predict(with_context)),
        score_candidates(bundle.ranker, candidate_frame, bundle.tables, context[CONTEXT_FEATURES]),
    )
    with pytest.raises(ValueError, match="lacks"):
        bundle.score(candidate_frame.assign(c_device=1))


def test_model_rejects_a_frame_without_article_ids(client, candidate_frame):
    import mlflow
    from mlflow.exceptions import MlflowException

    assert _challenge(client, "1").promoted
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{R.CHAMPION}")
    with pytest.raises(MlflowException, match=C.ARTICLE_ID):
        model.predict(candidate_frame.drop(columns=[C.ARTICLE_ID]))


def test_first_promotion_needs_no_comparison(client):
    decision = _challenge(client, "2")
    assert decision.promoted and "no champion yet" in decision.reason
    assert _champion(client) == "2"


def test_promote_refuses_a_worse_challenger_and_says_why(client):
    assert _challenge(client, "1").promoted
    decision = _challenge(client, "2")
    assert not decision.promoted
    assert "does not beat champion v1" in decision.reason and "0.2900" in decision.reason
    assert _champion(client) == "1"
    # a refused version gets no A/B readers: its challenger alias is gone, the reason stays on it
    assert R.aliases(client, NAME).get("challenger") is None
    assert "does not beat" in client.get_model_version(NAME, "2").tags[R.REFUSED_TAG]


def test_promote_refuses_a_cold_user_regression(client):
    assert _challenge(client, "1").promoted
    decision = _challenge(client, "3")
    assert not decision.promoted and "regresses on cold users" in decision.reason
    assert _champion(client) == "1"


def test_promote_refuses_metrics_from_another_test_window(client):
    assert _challenge(client, "1").promoted
    decision = _challenge(client, "4")
    assert not decision.promoted and "not comparable" in decision.reason
    assert _champion(client) == "1"


@pytest.mark.parametrize("bad", ["nan", "inf", "n/a"])
@pytest.mark.parametrize("with_champion", [True, False], ids=["over_a_champion", "first"])
def test_promote_refuses_metrics_that_are_not_finite_numbers(client, bad, with_champion):
    if with_champion:
        assert _challenge(client, "1").promoted
    tag = R.metric_tag("all", "ndcg@10")
    kept = client.get_model_version(NAME, "5").tags[tag]
    client.set_model_version_tag(NAME, "5", tag, bad)
    try:
        decision = _challenge(client, "5")  # was promoted: "nan beats 0.3000"
    finally:
        client.set_model_version_tag(NAME, "5", tag, kept)
    assert not decision.promoted and "not finite numbers" in decision.reason and f"{tag}={bad!r}" in decision.reason
    assert R.aliases(client, NAME).get(R.CHAMPION) == ("1" if with_champion else None)


def test_promote_moves_champion_to_a_better_challenger(client):
    assert _challenge(client, "1").promoted
    decision = _challenge(client, "5")
    assert decision.promoted and "beats champion v1" in decision.reason
    assert _champion(client) == "5"
    assert not _challenge(client, "5").promoted  # already champion: nothing to do


def test_rollback_restores_the_previous_champion(client):
    assert _challenge(client, "1").promoted
    assert _challenge(client, "5").promoted
    decision = R.rollback(client, NAME)
    assert "v5 to v1" in decision.reason
    assert _champion(client) == "1"
    with pytest.raises(LookupError, match="no previous"):
        R.rollback(client, NAME)
    assert _challenge(client, "5").promoted  # history stays consistent after a rollback


def test_gate_errors_name_what_is_missing(client):
    with pytest.raises(LookupError, match="challenger"):
        R.promote(client, NAME, "ndcg@10", 0.0, 0.0)
    with pytest.raises(LookupError, match="champion"):
        R.rollback(client, NAME)
    with pytest.raises(LookupError, match="newsrec register"):
        R.promote(client, "no-such-model", "ndcg@10", 0.0, 0.0)


def test_report_prints_the_table_and_the_live_aliases(client, registry, tmp_path, monkeypatch, capsys):
    import json

    from pipelines import report

    params, _ = registry
    assert _challenge(client, "1").promoted
    assert _challenge(client, "5").promoted
    monkeypatch.setenv("NEWSREC__MLFLOW__TRACKING_URI", params["tracking_uri"])
    table = tmp_path / "eval_table.md"
    table.write_text("| method | users | ndcg@10 |\n|---|---|---:|\n| reranker | all | 0.3500 |\n")
    registered = tmp_path / "registered.json"
    registered.write_text(json.dumps({"model_name": NAME, "version": "5", "test_window": WINDOW,
                                      "promotion": {"promoted": True, "reason": "beats champion v1"}}))
    assert report.main(["--eval-table", str(table), "--registered", str(registered)]) == 0
    out = capsys.readouterr().out
    assert "| reranker | all | 0.3500 |" in out
    assert "@champion   -> version 5  test ndcg@10 0.3500" in out
    assert f"models:/{NAME}@champion" in out
    assert report.main(["--eval-table", str(tmp_path / "missing.md"), "--registered", str(registered)]) == 1


@pytest.mark.integration
def test_a_bundle_from_other_code_is_refused_with_a_clear_message(serving_bundle, tmp_path):
    import json
    import shutil

    from pipelines.fileio import write_manifest

    assert B.ServingBundle.load(serving_bundle).meta["format"] == B.BUNDLE_FORMAT
    old = shutil.copytree(serving_bundle, tmp_path / "old")
    meta = json.loads((old / B._META).read_text())
    del meta["format"]
    (old / B._META).write_text(json.dumps(meta))
    write_manifest(old)  # whole as that code wrote it
    with pytest.raises(ValueError, match="format none recorded.*newsrec register"):
        B.ServingBundle.load(old)


@pytest.mark.integration
def test_a_damaged_bundle_is_refused_before_anything_parses_it_and_the_service_keeps_serving(serving_bundle,
                                                                                            tmp_path):
    """A truncated ranker.txt behind the champion alias used to abort the API process inside LightGBM."""
    import shutil
    import time

    from pipelines.fileio import verify_manifest
    from serving.models import ModelHolder, ServedModel, VersionRef
    from serving.recommend import prepare

    assert verify_manifest(serving_bundle)
    bad = shutil.copytree(serving_bundle, tmp_path / "bad")
    model = bad / "ranker" / "ranker.txt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"ranker/ranker.txt has \d+ bytes"):
        B.ServingBundle.load(bad)

    class Folders:  # v1 = the good bundle, v2 = the damaged one, behind `champion` in turn
        def __init__(self):
            self.version = "1"

        def resolve(self, alias):
            return VersionRef("m", self.version, "", str(bad if self.version == "2" else serving_bundle)) \
                if alias == "champion" else None

        def load(self, ref):
            bundle = B.ServingBundle.load(ref.source)
            return ServedModel(ref=ref, bundle=prepare(bundle, False), loaded_at=time.time(), base=bundle)

    source = Folders()
    holder = ModelHolder(source, "champion", "challenger")
    holder.refresh()
    good = holder.slots.champion
    source.version = "2"
    assert holder.refresh() is False
    assert holder.slots.champion is good
    assert "load models:/m/2" in holder.last_error and "ranker.txt" in holder.last_error


def test_after_an_erasure_the_gate_compares_versions_on_the_same_window(client, tiny_validated, tmp_path):
    """A champion registered before an erasure, a challenger trained on the erased data: the same test window
    once the erased user's clicks leave the champion's tag, so the gate judges them (and the champion that
    held the user is replaced when the challenger wins) instead of calling them not comparable."""
    import shutil

    from pipelines import forget_user as F
    from pipelines.config import load_params
    from pipelines.split import load_clicks, make_snapshot

    root = tmp_path / "root"
    shutil.copytree(tiny_validated, root)
    validated = root / "validated" / C.CLICKS_DIR
    epoch = int(load_params("data")["epoch_ms"])
    last = max(int(p.name.split("=")[1]) for p in validated.glob("hour=*"))
    snapshot = make_snapshot("test", "test", last - 2, last + 1, epoch)
    target = load_clicks(validated, snapshot.cutoff_ms, snapshot.end_ms)
    user = int(target[C.USER_ID].value_counts().index[0])
    before = R.window_id(validated, snapshot) + ", as served"
    clicks = F.user_clicks(root, user)
    for part in validated.glob("*/part-0.parquet"):
        F.parquet_without_user(part, user)
    after = R.window_id(validated, snapshot) + ", as served"
    assert after != before

    kept = {v: client.get_model_version(NAME, v).tags[R.WINDOW_TAG] for v in VERSIONS}
    try:
        client.set_model_version_tag(NAME, "1", R.WINDOW_TAG, before)
        assert _challenge(client, "1").promoted
        client.set_model_version_tag(NAME, "5", R.WINDOW_TAG, after)  # registered after the erasure
        refused = _challenge(client, "5")
        assert not refused.promoted and "not comparable" in refused.reason  # what happened before the fix
        # The order of the real flow: the erasure, then `dvc repro` registers the challenger.
        client.delete_model_version_tag(NAME, "5", R.WINDOW_TAG)
        assert "1" in R.forget_in_windows(client, NAME, clicks, epoch)
        assert client.get_model_version(NAME, "1").tags[R.WINDOW_TAG] == after
        client.set_model_version_tag(NAME, "5", R.WINDOW_TAG, after)
        decision = _challenge(client, "5")
        assert decision.promoted and "beats champion v1" in decision.reason
    finally:
        for version, window in kept.items():
            client.set_model_version_tag(NAME, version, R.WINDOW_TAG, window)


@pytest.mark.unit
def test_a_window_id_loses_exactly_the_erased_clicks():
    rng = np.random.default_rng(0)
    epoch, n = 1_506_826_800_000, 400
    frame = pd.DataFrame({C.USER_ID: rng.integers(0, 40, n), C.CLICK_ARTICLE_ID: rng.integers(0, 900, n),
                          C.CLICK_TIMESTAMP: epoch + rng.integers(0, 5 * C.HOUR_MS, n)}).astype("int64")

    def window(clicks: pd.DataFrame) -> str:
        inside = clicks[clicks[C.CLICK_TIMESTAMP] >= epoch + 2 * C.HOUR_MS]
        return f"hours 2-4, {len(inside)} clicks, {R._digest(inside):012x}, as served"

    mine = frame[C.USER_ID] == 7
    assert R.window_without(window(frame), frame[mine], epoch) == window(frame[~mine])
    assert R.window_without(window(frame), frame[mine].iloc[0:0], epoch) == window(frame)
    assert R.window_without("another id format", frame[mine], epoch) == "another id format"


@pytest.mark.unit
def test_a_window_ids_hours_are_read_back_by_the_module_that_writes_it():
    assert R.window_hours("hours 21-23, 1200 clicks, 00ab12cd34ef, as served") == (21, 23)
    assert R.window_hours("another id format") is None


@pytest.mark.unit
def test_versions_registered_before_the_bundle_module_still_find_their_bundle_class():
    from pipelines.bundle import ServingBundle

    assert R.ServingBundle is ServingBundle  # their ranker_pyfunc.py does `from pipelines.registry import ...`
