"""MLflow model registry: register the ranker with its serving bundle, promote behind a gate, roll back.

The registered model `newsrec-ranker` is a pyfunc (pipelines.ranker_pyfunc) whose artifact is the serving bundle
(pipelines.bundle). Aliases: a new version gets `challenger`. `promote` moves `champion` to it only if its test
metric beats the champion's on the same test window by `promote.min_gain` and cold users do not lose more than
`promote.cold_tolerance`. Every champion change is appended to the registered model's `champion_history` tag,
which is what `rollback` walks back.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines import columns as C
from pipelines import lake

# ServingBundle: versions registered before the bundle had its own module carry a ranker_pyfunc.py that imports
# it from here, so they keep loading (mlflow.pyfunc.load_model) after an upgrade.
from pipelines.bundle import CHALLENGER, CHAMPION, ServingBundle, build_bundle, learned_dir, signature  # noqa: F401
from pipelines.config import parse_step, step_parser
from pipelines.errors import InputError
from pipelines.tracking import use_tracking

HISTORY_TAG = "champion_history"
WINDOW_TAG = "test_window"
EXPERIMENTS_SUFFIX = "-experiments"  # where `dvc exp run` registers: apart from the live model's aliases
REFUSED_TAG = "gate_refused"  # on a version the promotion gate refused: why
# Version tags holding the test metrics a promotion compares: test.<segment>.<metric>.
SEGMENTS = ("all", "warm", "cold")


# --------------------------------------------------------------------------------------------- register


def metric_tag(segment: str, metric: str) -> str:
    """Version tag key of a test metric, e.g. `test.cold.ndcg_at_10` for ("cold", "ndcg@10")."""
    return f"test.{segment}.{metric.replace('@', '_at_')}"


def register(
    bundle_dir: str | Path,
    test_metrics: dict[str, dict[str, float]],
    test_window: str,
    model_name: str,
    alias: str | None,
    run_id: str | None = None,
    run_artifacts: list[Path] | None = None,
) -> str:
    """Log the pyfunc with its bundle (in the training run when it still exists), register it, alias it (when
    `alias` is given: an experiment's version gets none).

    `test_metrics` is {segment: {metric: value}} of the reranker on the test window `test_window`;
    both are stored as version tags so a later `promote` compares like with like. Returns the version.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines import ranker_pyfunc

    client = MlflowClient()
    if run_id is not None:
        try:
            client.get_run(run_id)
        except MlflowException:  # the tracking store was reset since training: log into a fresh run
            run_id = None
    with mlflow.start_run(run_id=run_id):
        for path in run_artifacts or []:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        _log_learned(learned_dir(bundle_dir))
        mlflow.log_metrics(
            {metric_tag(seg, m).removeprefix("test.").replace(".", "_"): float(v)
             for seg, values in test_metrics.items() for m, v in values.items()}
        )
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ranker_pyfunc.__file__,
            artifacts={ranker_pyfunc.BUNDLE_ARTIFACT: str(Path(bundle_dir).resolve())},
            signature=signature(),
            # Declared, not inferred: inference re-imports the model in a subprocess and takes minutes. The
            # core package is what scoring needs (no Airflow, Streamlit, GX or DVC: pyproject.toml's extras).
            pip_requirements=["newsrec"],
            registered_model_name=model_name,
        )
    version = str(info.registered_model_version)
    client.set_model_version_tag(model_name, version, WINDOW_TAG, test_window)
    for seg, values in test_metrics.items():
        for metric, value in values.items():
            client.set_model_version_tag(model_name, version, metric_tag(seg, metric), repr(float(value)))
    if alias:
        client.set_registered_model_alias(model_name, alias, version)
    return version


def _log_learned(model_dir: Path) -> None:
    """The bundle's learned model in the run: its params (`learned.*`), what it was fitted on, its files."""
    import mlflow

    meta_path = model_dir / "learned.json"
    if not meta_path.exists():
        return
    meta = json.loads(meta_path.read_text())
    mlflow.log_params({f"learned.{k}": v for k, v in meta["params"].items()})
    mlflow.log_metrics({"learned_examples": float(meta["examples"]), "learned_final_loss": float(meta["losses"][-1])})
    mlflow.log_artifacts(str(model_dir), artifact_path="learned")


@dataclass
class Decision:
    promoted: bool
    reason: str
    challenger: str | None
    champion: str | None


def _alias_version(client, model_name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def _history(client, model_name: str) -> list[str]:
    tags = client.get_registered_model(model_name).tags
    return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]


def _set_champion(client, model_name: str, version: str, history: list[str]) -> None:
    client.set_registered_model_alias(model_name, CHAMPION, version)
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(history))


def _tag_metric(mv, segment: str, metric: str) -> float | None:
    value = mv.tags.get(metric_tag(segment, metric))
    return None if value is None else float(value)


def _unusable_metrics(versions: Sequence[Any], metric: str) -> list[str]:
    """`v3 test_all_ndcg_at_10='nan'` for each metric tag the gate needs that is not a finite number: NaN
    compares False with everything, so `nan < old + gain` would let any challenger through."""
    bad = []
    for mv in versions:
        for seg in ("all", "cold"):
            raw = mv.tags.get(metric_tag(seg, metric))
            try:
                ok = raw is not None and math.isfinite(float(raw))
            except ValueError:
                ok = False
            if raw is not None and not ok:
                bad.append(f"v{mv.version} {metric_tag(seg, metric)}={raw!r}")
    return bad


def promote(client, model_name: str, metric: str, min_gain: float, cold_tolerance: float) -> Decision:
    """Move `champion` to `challenger` if it wins on the same test window; otherwise say why, tag the version
    with the reason (`gate_refused`) and remove its `challenger` alias, so no reader is sent to it."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        raise LookupError(f"no registered model '{model_name}' (run `newsrec register` first)") from exc
    chal = _alias_version(client, model_name, CHALLENGER)
    if chal is None:
        raise LookupError(f"model '{model_name}' has no '{CHALLENGER}' alias: nothing to promote")
    champ = _alias_version(client, model_name, CHAMPION)
    history = _history(client, model_name)

    def decide(ok: bool, reason: str) -> Decision:
        if not ok and (champ is None or str(champ.version) != str(chal.version)):
            # A refused version is no challenger: without the alias the A/B split sends it no reader (it got
            # serve.challenger_share of them until the next registration). The version keeps why.
            client.delete_registered_model_alias(model_name, CHALLENGER)
            client.set_model_version_tag(model_name, str(chal.version), REFUSED_TAG, reason)
        return Decision(ok, reason, str(chal.version), str(champ.version) if champ else None)

    unusable = _unusable_metrics([chal] if champ is None else [chal, champ], metric)
    if unusable:
        return decide(False, f"test metrics are not finite numbers: {', '.join(unusable)}; nothing is promoted "
                             "on them (re-run the evaluation, or move the alias by hand)")
    if champ is None:
        _set_champion(client, model_name, str(chal.version), history + [str(chal.version)])
        return decide(True, f"no champion yet: version {chal.version} becomes champion")
    if str(champ.version) == str(chal.version):
        return decide(False, f"version {chal.version} is already champion")
    if champ.tags.get(WINDOW_TAG) != chal.tags.get(WINDOW_TAG):
        return decide(
            False,
            f"not comparable: champion v{champ.version} was tested on {champ.tags.get(WINDOW_TAG)!r}, "
            f"challenger v{chal.version} on {chal.tags.get(WINDOW_TAG)!r}",
        )
    missing = [
        f"v{mv.version} {metric_tag(seg, metric)}"
        for mv in (chal, champ)
        for seg in ("all", "cold")
        if _tag_metric(mv, seg, metric) is None
    ]
    if missing:
        return decide(False, f"missing test metrics: {', '.join(missing)}")
    new, old = _tag_metric(chal, "all", metric), _tag_metric(champ, "all", metric)
    new_cold, old_cold = _tag_metric(chal, "cold", metric), _tag_metric(champ, "cold", metric)
    if new < old + min_gain:
        return decide(
            False,
            f"challenger v{chal.version} {metric} {new:.4f} does not beat champion v{champ.version} "
            f"{old:.4f} by the required {min_gain} (gain {new - old:+.4f})",
        )
    if new_cold < old_cold - cold_tolerance:
        return decide(
            False,
            f"challenger v{chal.version} regresses on cold users: {metric} {new_cold:.4f} vs champion "
            f"{old_cold:.4f} (tolerance {cold_tolerance})",
        )
    _set_champion(client, model_name, str(chal.version), history + [str(chal.version)])
    return decide(
        True,
        f"challenger v{chal.version} {metric} {new:.4f} beats champion v{champ.version} {old:.4f} "
        f"(gain {new - old:+.4f}; cold {new_cold:.4f} vs {old_cold:.4f})",
    )


def rollback(client, model_name: str) -> Decision:
    """Point `champion` back at the version that was champion before the current one."""
    champ = _alias_version(client, model_name, CHAMPION)
    if champ is None:
        raise LookupError(f"model '{model_name}' has no '{CHAMPION}' alias: nothing to roll back")
    history = _history(client, model_name)
    current = str(champ.version)
    if not history or history[-1] != current:
        # Someone moved the alias by hand: the live champion is what is being rolled back.
        history.append(current)
    if len(history) < 2:
        raise LookupError(f"version {champ.version} is the first champion of '{model_name}': no previous one")
    previous = history[-2]
    _set_champion(client, model_name, previous, history[:-1])
    return Decision(True, f"champion moved back from v{champ.version} to v{previous}", None, previous)


def aliases(client, model_name: str) -> dict[str, str]:
    """alias -> version of a registered model ({} when it is not registered)."""
    from mlflow.exceptions import MlflowException

    try:
        return {alias: str(version) for alias, version in client.get_registered_model(model_name).aliases.items()}
    except MlflowException:
        return {}


# --------------------------------------------------------------------------------------------- stage


def window_id(validated_dir: str | Path, snapshot) -> str:
    """Identity of a test window: its hours and a digest of its clicks, so two evaluations on the same
    window agree and a window over other data (another dataset, re-validated hours) does not. Users in the
    erasure register are not in it (split.load_clicks); `window_without` takes a later erasure out of an
    existing id, so a version registered before it still compares with one registered after."""
    from pipelines.split import load_clicks

    clicks = load_clicks(validated_dir, snapshot.cutoff_ms, snapshot.end_ms, columns=list(_WINDOW_COLUMNS))
    return f"hours {snapshot.cutoff_hour}-{snapshot.end_hour - 1}, {len(clicks)} clicks, {_digest(clicks):012x}"


_WINDOW_COLUMNS = (C.USER_ID, C.CLICK_ARTICLE_ID, C.CLICK_TIMESTAMP)
_DIGEST_MASK = 0xFFFFFFFFFFFF
_WINDOW = re.compile(r"^hours (\d+)-(\d+), (\d+) clicks, ([0-9a-f]{12})(.*)$")


def _digest(clicks: pd.DataFrame) -> int:
    """A sum of per-click hashes (mod 2**48): additive, so one user's clicks can be subtracted from it."""
    frame = clicks[list(_WINDOW_COLUMNS)].astype("int64")
    return int(pd.util.hash_pandas_object(frame, index=False).sum()) & _DIGEST_MASK


def window_hours(window: str) -> tuple[int, int] | None:
    """(first, last) hour of a test-window id `window_id` wrote; None when it is not one."""
    match = _WINDOW.match(window or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def window_without(window: str, clicks: pd.DataFrame, epoch_ms: int) -> str:
    """The test-window id `window` as `window_id` computes it once `clicks` (an erased user's) are gone."""
    match = _WINDOW.match(window or "")
    if match is None:
        return window
    first, last, count, digest, rest = match.groups()
    start, end = int(epoch_ms) + int(first) * C.HOUR_MS, int(epoch_ms) + (int(last) + 1) * C.HOUR_MS
    inside = clicks[(clicks[C.CLICK_TIMESTAMP] >= start) & (clicks[C.CLICK_TIMESTAMP] < end)]
    if inside.empty:
        return window
    left = (int(digest, 16) - _digest(inside)) & _DIGEST_MASK
    return f"hours {first}-{last}, {int(count) - len(inside)} clicks, {left:012x}{rest}"


def forget_in_windows(client, model_name: str, clicks: pd.DataFrame, epoch_ms: int) -> list[str]:
    """Take an erased user's clicks out of the test-window tag of every version of `model_name`, so the gate
    compares a version registered before the erasure with one registered after (same window, same clicks)
    instead of calling them not comparable. The versions whose tag changed."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{model_name}'")
    except MlflowException:
        return []
    changed = []
    for mv in versions:
        old = mv.tags.get(WINDOW_TAG)
        new = window_without(old, clicks, epoch_ms) if old else old
        if new != old:
            client.set_model_version_tag(model_name, mv.version, WINDOW_TAG, new)
            changed.append(str(mv.version))
    return changed


def reranker_metrics(eval_results: dict) -> dict[str, dict[str, float]]:
    """{segment: {metric: value}} of the reranker from `newsrec evaluate`'s eval.json (as served when present)."""
    from pipelines.evaluate import RERANKER

    # The as-served protocol is how the service really runs (index refreshed hourly): it is what the gate
    # compares when the evaluation ran it.
    methods = (eval_results.get("as_served") or eval_results).get("methods", {})
    if RERANKER not in methods:
        raise InputError("eval.json has no reranker results: run `newsrec evaluate` with --model")
    return {seg: {m: float(v) for m, v in methods[RERANKER][seg].items()} for seg in SEGMENTS}


def run_register(args: argparse.Namespace, config: dict) -> dict:
    """The DVC stage: bundle at the serve snapshot, register with the test metrics, optionally promote.
    `config`: the params file as pipelines.config.load_config read it."""
    from mlflow import MlflowClient

    from pipelines.split import get_snapshot, read_snapshots

    params = config["register"]
    mlflow_params = config["mlflow"]
    root = Path(args.data_root)
    validated = lake.validated_dir(root)
    serve = read_snapshots(args.split, roles=["serve"])
    if len(serve) != 1:
        raise InputError(f"{args.split}: expected exactly one serve snapshot, found {len(serve)}")
    results = json.loads(Path(args.eval).read_text())
    metrics = reranker_metrics(results)
    window = window_id(validated, get_snapshot(args.split, results.get("snapshot", "test")))
    if "as_served" in results:
        window += ", as served"  # metrics of another protocol are not comparable
    bundle = build_bundle(
        args.ranker,
        Path(args.features) / serve[0].name,
        Path(args.indexes) / serve[0].name,
        root,
        args.bundle_out,
        validated_dir=validated,
        feature_params=config["features"],
    )
    from pipelines.train import run_id_file

    run_file = run_id_file(args.ranker)
    run_id = json.loads(run_file.read_text())["run_id"] if run_file.exists() else None
    use_tracking(mlflow_params)
    report = Path(args.eval).with_name("eval_report.html")  # written beside eval.json by `newsrec evaluate`
    # An experiment (`dvc exp run` names it in DVC_EXP_NAME) never reaches the live registry's aliases: it is
    # registered under <model_name>-experiments, without an alias, and not gated.
    experiment = os.environ.get("DVC_EXP_NAME")
    name = f"{params['model_name']}{EXPERIMENTS_SUFFIX}" if experiment else params["model_name"]
    version = register(bundle, metrics, window, name, None if experiment else params["alias"], run_id,
                       [Path(args.eval), Path(args.eval_table), *([report] if report.exists() else [])])
    describe(name, version, window, results, Path(args.ranker), args.params, root)
    out = {"model_name": name, "version": version, "test_window": window, "metrics": metrics["all"]}
    if experiment:
        MlflowClient().set_model_version_tag(name, version, "dvc_experiment", experiment)
        out["experiment"] = experiment
    elif params["auto_promote"]:
        gate = config["promote"]
        decision = promote(MlflowClient(), params["model_name"], gate["metric"], float(gate["min_gain"]),
                           float(gate["cold_tolerance"]))
        out["promotion"] = {"promoted": decision.promoted, "reason": decision.reason}
    out["aliases"] = aliases(MlflowClient(), name)
    return out


def describe(name: str, version: str, window: str, eval_results: dict, ranker_dir: Path, params_path: str | Path,
             data_root: Path) -> None:
    """Give a registered version its model card (description, model_card.md on its run), lineage tags (version
    and run) and the dataset it was built from (the run's inputs): pipelines.model_card."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines import model_card as card

    client = MlflowClient()
    validated = lake.validated_dir(data_root)
    tags = card.lineage(params_path, data_root, lake.landed_hours(validated))
    meta = json.loads((ranker_dir / "ranker.json").read_text())
    text = card.model_card(name, version, window, eval_results, meta, meta.get("features", []), tags)
    run_id = client.get_model_version(name, version).run_id
    card.log_card(client, name, version, run_id, text, tags)
    if run_id:
        dataset = mlflow.data.from_pandas(card.hours_frame(validated), source=str(validated.resolve()),
                                          name="validated clicks (bytes per hour)")
        with mlflow.start_run(run_id=run_id):
            mlflow.log_input(dataset, context="training and test")


def main(argv: list[str] | None = None) -> int:
    """`newsrec register`."""
    parser = step_parser("register", "register the trained ranker and its serving bundle in MLflow",
                         data_root="data root with raw/ and validated/")
    parser.add_argument("--split", type=Path, required=True, help="snapshot file written by `newsrec split`")
    parser.add_argument("--ranker", type=Path, required=True, help="trained ranker folder (`newsrec train`)")
    parser.add_argument("--features", type=Path, required=True, help="folder of <snapshot>/ feature tables")
    parser.add_argument("--indexes", type=Path, required=True, help="folder of <snapshot>/ candidate indexes")
    parser.add_argument("--eval", type=Path, required=True, help="eval.json of `newsrec evaluate`")
    parser.add_argument("--eval-table", type=Path, required=True, help="eval_table.md of `newsrec evaluate`")
    parser.add_argument("--bundle-out", type=Path, required=True, help="serving bundle folder to write")
    parser.add_argument("--out", type=Path, required=True, help="registration summary to write (JSON)")
    args, config = parse_step(parser, argv)
    # Logging a model copies the bundle through MLflow's artifact repository: no per-file progress bars in logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    out = run_register(args, config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"registered {out['model_name']} version {out['version']} (test window {out['test_window']})")
    if "promotion" in out:
        print(("promoted: " if out["promotion"]["promoted"] else "not promoted: ") + out["promotion"]["reason"])
    print("aliases: " + ", ".join(f"{a}=v{v}" for a, v in sorted(out["aliases"].items())))
    return 0


def _gate_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = step_parser(prog, description)
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: params mlflow.tracking_uri)")
    return parser


def promote_main(argv: list[str] | None = None) -> int:
    """`newsrec promote`: exit 0 when promoted, 3 when the gate refused (and why), 1 on error."""
    from mlflow import MlflowClient

    parser = _gate_parser("promote", "move alias champion to the challenger if it passes the gate")
    parser.add_argument("--min-gain", type=float, help="override promote.min_gain")
    args, config = parse_step(parser, argv)
    gate, mlflow_params = config["promote"], config["mlflow"]
    if args.tracking_uri:
        mlflow_params["tracking_uri"] = args.tracking_uri
    use_tracking(mlflow_params)
    min_gain = float(gate["min_gain"] if args.min_gain is None else args.min_gain)
    try:
        decision = promote(MlflowClient(), config["register"]["model_name"], gate["metric"], min_gain,
                           float(gate["cold_tolerance"]))
    except LookupError as exc:
        print(f"newsrec promote: {exc}", file=sys.stderr)
        return 1
    print(("promoted: " if decision.promoted else "not promoted: ") + decision.reason)
    return 0 if decision.promoted else 3


def rollback_main(argv: list[str] | None = None) -> int:
    """`newsrec rollback`."""
    from mlflow import MlflowClient

    args, config = parse_step(_gate_parser("rollback", "point alias champion back at the previous champion"), argv)
    mlflow_params = config["mlflow"]
    if args.tracking_uri:
        mlflow_params["tracking_uri"] = args.tracking_uri
    use_tracking(mlflow_params)
    try:
        decision = rollback(MlflowClient(), config["register"]["model_name"])
    except LookupError as exc:
        print(f"newsrec rollback: {exc}", file=sys.stderr)
        return 1
    print(decision.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
