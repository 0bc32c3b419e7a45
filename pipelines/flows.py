"""What the Airflow DAGs need around the steps: which params file, which hour a run is, whether its drop
has landed, and the texts of the alerts they send.

Kept light on purpose (stdlib, yaml): DAG files import it at parse time for the epoch and the params
path; everything heavy is imported inside the functions that the tasks call.

Hour of a run: the run for hour N has logical date `epoch + N h` (UTC), the start of the hour it
processes. Scheduled and backfill runs of an hourly data-interval schedule starting at the epoch get
exactly that (logical date = data interval start), and `dag.test(logical_date=...)` or a manual trigger
with a logical date picks an hour the same way. A logical date that is not the start of an hour after
the epoch is an error, never rounded. A run can also name its hour outright: the DAG param `hour` (the
trigger form, `--conf '{"hour": 5}'`) wins over the logical date, so nobody computes epoch + N h by hand.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipelines import columns as C
from pipelines.config import load_config
from pipelines.errors import ConfigError, InputError

PARAMS_ENV = "NEWSREC_PARAMS"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The Airflow asset train_ranker updates and drift_monitor listens to: the registered ranker (model_asset_uri).
MODEL_ASSET = "newsrec_ranker"


def params_file() -> Path:
    """The params.yaml the DAGs run with: `$NEWSREC_PARAMS`, else the project's own."""
    return Path(os.environ.get(PARAMS_ENV) or PROJECT_ROOT / "params.yaml").resolve()


def project(params_path: str | Path) -> dict[str, Any]:
    """The params a task runs with (pipelines.config.load_config): its paths absolute against the params file's
    folder, so data/, monitoring/reports and sqlite:///mlflow.db mean the same as under DVC, whatever folder the
    Airflow worker was started in. Nothing changes the worker's working folder."""
    return load_config(Path(params_path).resolve())


def model_asset_uri(params: Mapping[str, Any]) -> str:
    """The URI of the Airflow asset MODEL_ASSET: the registered model params `register.model_name` names."""
    return f"models:/{params['register']['model_name']}"


def epoch_datetime(epoch_ms: int) -> datetime:
    """Start of hour 000 as an aware UTC datetime (the hourly DAG's start_date)."""
    return datetime.fromtimestamp(int(epoch_ms) / 1000, tz=UTC)


def hour_start(hour: int, epoch_ms: int) -> datetime:
    """Logical date of the run that processes hour `hour`."""
    return epoch_datetime(epoch_ms) + timedelta(hours=int(hour))


def hour_of(logical_date: datetime | None, epoch_ms: int) -> int:
    """The hour a run processes, from its logical date (see the module docstring)."""
    if logical_date is None:
        raise InputError("this run has no logical date: trigger it with the start of the hour to process")
    if logical_date.tzinfo is None:
        raise InputError(f"logical date {logical_date} has no time zone")
    offset_ms = round(logical_date.timestamp() * 1000) - int(epoch_ms)
    if offset_ms < 0:
        raise InputError(f"logical date {logical_date.isoformat()} is before hour 000 ({epoch_datetime(epoch_ms)})")
    if offset_ms % C.HOUR_MS:
        raise InputError(
            f"logical date {logical_date.isoformat()} is not the start of an hour counted from "
            f"{epoch_datetime(epoch_ms).isoformat()}"
        )
    return offset_ms // C.HOUR_MS


def run_hour(hour: int | None, logical_date: datetime | None, epoch_ms: int) -> int:
    """The hour a run processes: its `hour` param when given, else the hour its logical date starts."""
    if hour is not None:
        if isinstance(hour, bool) or int(hour) != hour or int(hour) < 0:
            raise InputError(f"hour {hour!r} is not an hour number (0, 1, 2, ...)")
        return int(hour)
    if logical_date is None:
        raise InputError("this run has neither an `hour` param nor a logical date: trigger it with "
                         "--conf '{\"hour\": N}' (the Trigger form's `hour` field)")
    return hour_of(logical_date, epoch_ms)


def scheduled(params: Mapping[str, Any], dag_id: str) -> Any:
    """What params.yaml `schedule` says for DAG `dag_id`: None/False when it runs only when triggered."""
    return (params.get("schedule") or {}).get(dag_id) or None


def drop_location(data_root: str | Path, hour: int, raw_uri: str | None = None) -> str:
    """Where the sensor looks for hour `hour`'s click drop, for its log line."""
    from pipelines import storage

    if raw_uri:
        return storage.hour_uri(raw_uri, hour)
    root = Path(data_root).resolve()
    return (f"{root / 'raw' / C.CLICKS_DIR / C.hour_file_name(hour)} (or inside {root / 'raw' / C.CLICKS_ZIP}, "
            f"or back from {root / 'quarantine' / C.CLICKS_DIR / C.partition_name(hour)})")


def drop_available(data_root: str | Path, hour: int, raw_uri: str | None = None) -> bool:
    """Whether hour `hour`'s drop is there: at the raw location (local or S3), or for a local raw folder
    also inside raw/clicks.zip or back from quarantine for a re-run (wherever validation finds it)."""
    from pipelines import storage

    raw = storage.raw_uri(data_root, raw_uri)
    if storage.hour_available(raw, hour):
        return True
    if raw_uri:
        return False
    from pipelines.validate import find_drop

    try:
        find_drop(data_root, hour)
    except FileNotFoundError:
        return False
    return True


def stage_drop(data_root: str | Path, hour: int, raw_uri: str | None = None) -> list[str]:
    """Copy the hour's drops (its clicks, and its article drop when there is one; side files when changed)
    from a remote raw location into `<data_root>/raw/`."""
    from pipelines import storage

    if not raw_uri:
        return []  # validation reads the local raw folder (or its clicks.zip) itself
    return [str(p) for p in storage.stage_raw(raw_uri, data_root, [hour])]


def hour_outcome(results: Sequence[Any]) -> dict[str, Any]:
    """What the hourly DAG's validate task hands on: the click drop's HourResult dict, with the article drop's
    (or None: not every hour has new articles) under `articles`. Raises OSError when a drop was unreadable."""
    unreadable = [r.reason for r in results if r.status == "unreadable"]
    if unreadable:  # nothing was decided: fail the task (it retries; a failed run emails), never skip quietly
        raise OSError("; ".join(unreadable))
    by_kind = {r.kind: r.to_dict() for r in results}
    if C.CLICKS_DIR not in by_kind:
        raise InputError(f"no click drop among the results: {sorted(by_kind)}")
    return {**by_kind[C.CLICKS_DIR], C.ARTICLES_DIR: by_kind.get(C.ARTICLES_DIR)}


def quarantined_drops(outcome: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The quarantined drops of an hour (hour_outcome's dict, or one HourResult dict): its articles, its clicks."""
    drops = [outcome.get(C.ARTICLES_DIR), outcome]
    return [d for d in drops if d and d.get("status") == "quarantined"]


def _hour_span(hour: int, epoch_ms: int) -> str:
    start = hour_start(hour, epoch_ms)
    return f"{start:%Y-%m-%d %H:%M}-{start + timedelta(hours=1):%H:%M} UTC"


def replay_commands(data_root: str | Path, hour: int, params_path: str | Path | None = None) -> list[str]:
    """The commands that re-run hour `hour` whole, as clicks_hourly does: validate, then (if it lands) its
    aggregates and the serving index. Validating alone leaves the hour without aggregates."""
    root = shlex.quote(str(Path(data_root).resolve()))
    extra = f" --params {shlex.quote(str(Path(params_path).resolve()))}" if params_path else ""
    return [f"newsrec {step} --data-root {root} --hour {int(hour)}{extra}"
            for step in ("validate", "aggregates", "refresh")]


def quarantine_alert(data_root: str | Path, result: Mapping[str, Any], epoch_ms: int,
                     params_path: str | Path | None = None) -> tuple[str, str, list[Path]]:
    """(subject, body, attachments) for an hour with quarantined drops, from hour_outcome's dict (or one
    HourResult dict): a section and the reason.txt/result.json of each quarantined drop, and how to re-run
    the hour once the drop is fixed (`params_path`: the params file those commands name)."""
    hour = int(result["hour"])
    bad = quarantined_drops(result)
    if not bad:
        raise InputError(f"hour {hour}: no drop was quarantined")
    body: list[str] = []
    attachments: list[Path] = []
    for drop in bad:
        articles = drop.get("kind") == C.ARTICLES_DIR
        folder = Path(data_root) / str(drop["path"])
        folder = folder if folder.is_dir() else folder.parent
        unit = "articles" if articles else "rows"
        rows = "unreadable" if drop.get("rows") is None else f"{int(drop['rows']):,} {unit}"
        what = "Article drop" if articles else "Hourly drop"
        body += [
            f"{what} {hour:03d} ({_hour_span(hour, epoch_ms)}) failed validation and was quarantined.",
            "",
            f"reason: {drop['reason']}",
            f"failed checks: {', '.join(drop.get('checks') or []) or '-'}",
            f"drop: {drop.get('source', '?')} ({rows})",
            f"now in: {folder.resolve()}",
            *([f"the hour's earlier landed version stays in use: {drop['kept']}"] if drop.get("kept") else []),
            "",
        ]
        attachments += [p for p in (folder / "reason.txt", folder / "result.json") if p.is_file()]
    if any(d.get("kind") == C.ARTICLES_DIR for d in bad):
        body.append("The articles of a quarantined article drop stay out of the catalogue; clicks on them are "
                    "quarantined too.")
    validate, *downstream = replay_commands(data_root, hour, params_path)
    body += [
        "Nothing from a quarantined drop reaches training. Fix the drop (or the metadata), then re-run the hour",
        "whole: in Airflow (validates, aggregates, refreshes the serving index)",
        f"  airflow dags trigger clicks_hourly --conf '{{\"hour\": {hour}}}'",
        "or by hand, all three in this order (validating alone leaves the hour without aggregates):",
        f"  {validate}",
        *(f"  {command}" for command in downstream),
    ]
    kinds = {d.get("kind", C.CLICKS_DIR) for d in bad}
    subject = {
        frozenset({C.CLICKS_DIR}): f"quarantined hourly drop {hour:03d}",
        frozenset({C.ARTICLES_DIR}): f"quarantined article drop {hour:03d}",
    }.get(frozenset(kinds), f"quarantined hourly drop {hour:03d} and its article drop")
    return subject, "\n".join(body), attachments


def drift_alert(summary: Mapping[str, Any], run_dir: str | Path) -> tuple[str, str, list[Path]]:
    """(subject, body, attachments) for a drift run: the summary text, summary.json and the HTML reports."""
    from pipelines.drift import summary_text

    run_dir = Path(run_dir)
    drifted = ", ".join(summary["drifted_columns"]) or "none"
    subject = f"drift detected (current hours {summary['current_hours']}): {drifted}"
    attachments = [run_dir / "summary.json"]
    attachments += [run_dir / r["html"] for r in summary["reports"].values()]
    return subject, summary_text(summary, run_dir), [p for p in attachments if p.is_file()]


def read_json(path: str | Path) -> Any:
    """A JSON file another task wrote (tasks hand each other paths, not payloads)."""
    return json.loads(Path(path).read_text())


def stage_command(stage: str, params: Mapping[str, Any], dvc_yaml: str | Path = PROJECT_ROOT / "dvc.yaml") -> list[str]:
    """The `newsrec` argv of DVC stage `stage`, its `${section.key}` filled from `params`.

    train_ranker's tasks run exactly what `dvc repro` runs: dvc.yaml is the one place a stage's paths live.
    """
    import yaml

    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages", {})
    if stage not in stages:
        raise ConfigError(f"{dvc_yaml} has no stage '{stage}'")

    def value(match: re.Match) -> str:
        node: Any = params
        for key in match.group(1).split("."):
            if not isinstance(node, Mapping) or key not in node:
                raise ConfigError(f"stage '{stage}' uses ${{{match.group(1)}}}, which the params do not have")
            node = node[key]
        return shlex.quote(str(node))

    argv = shlex.split(re.sub(r"\$\{([\w.]+)\}", value, stages[stage]["cmd"]))
    if argv[:1] != ["newsrec"] or {"&&", "||", ";", "|"} & set(argv):
        raise InputError(f"stage '{stage}' is not a single newsrec command: {stages[stage]['cmd']!r}")
    return argv[1:]


def run_stage(stage: str, params: Mapping[str, Any], params_path: str | Path,
              overrides: Mapping[str, Any] | None = None) -> list[str]:
    """Run DVC stage `stage` in this process with `params_path`; a non-zero exit raises.

    `overrides` ({"section.key": value}) go through the NEWSREC__SECTION__KEY environment overrides of
    pipelines.config for this call only.
    """
    from pipelines.cli import main

    argv = [*stage_command(stage, params), "--params", str(params_path)]
    env = {"NEWSREC__" + k.replace(".", "__").upper(): v if isinstance(v, str) else json.dumps(v)
           for k, v in (overrides or {}).items()}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        rc = main(argv)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if rc != 0:
        raise RuntimeError(f"`newsrec {shlex.join(argv)}` exited with {rc}")
    return argv


# The DVC stages train_ranker runs, in order (one task each), and those of them that read the data a model is
# trained and tested on: what record_lineage commits and hashes.
TRAIN_STAGES = ("split", "learned", "candidates", "features", "train", "evaluate", "register")
READ_BY_MODEL = ("train", "evaluate")
LINEAGE_ARTIFACT = "lineage"  # the run's folder for the dvc.lock a DAG run left


def record_lineage(params: Mapping[str, Any], params_path: str | Path, stages: Sequence[str] = TRAIN_STAGES,
                   read_by: Sequence[str] = READ_BY_MODEL) -> dict[str, str]:
    """After train_ranker's stages ran: record their outputs in dvc.lock (`dvc commit` of `stages`, so `dvc status`
    has nothing stale to report for them), push the data to the default DVC remote (when there is one), and tag the
    version `register` wrote with the DVC md5 of each data input of `read_by`, where it was pushed and the hash of
    the dvc.lock it left (logged on its run as lineage/dvc.lock). Returns the tags.

    Only when the params file's folder is the root of a DVC repository (the stages' relative paths are DVC's
    then); elsewhere nothing is committed and the version's TAG_PUSHED says why.
    """
    import logging

    import yaml
    from mlflow import MlflowClient

    from pipelines import model_card as card
    from pipelines.dvc_repo import default_remote, dvc, dvc_repo_root, status
    from pipelines.tracking import use_tracking

    log = logging.getLogger("newsrec.lineage")
    folder = Path(params_path).resolve().parent
    registered = read_json(folder / _options(stage_command("register", params))["out"])
    root = dvc_repo_root(folder)
    in_dvc = root is not None and root.resolve() == folder
    if not in_dvc:
        reason = f"not recorded: {folder} is not the root of a DVC repository"
        log.warning("DVC lineage %s", reason)
        tags = {card.TAG_PUSHED: reason}
    else:
        lock_path = folder / "dvc.lock"
        dvc(folder, "commit", "--force", *stages)
        lock = yaml.safe_load(lock_path.read_text())
        tags = card.data_hashes(lock, read_by)
        remote = default_remote(folder)
        # Stages another process changed since dvc.lock (the hourly DAG's validate and aggregates write
        # hour by hour) name objects the cache may not hold: only what dvc.lock describes truly is pushed.
        stale = sorted(name.split(":")[-1] for name in status(folder))
        current = [s for s in (lock.get("stages") or {}) if s not in stale]
        if remote is None:
            tags[card.TAG_PUSHED] = "not pushed: no default DVC remote"
            log.warning("DVC data not pushed: the repository has no default remote (`dvc remote default`)")
        else:
            dvc(folder, "push", "--remote", remote, *current)
            tags[card.TAG_PUSHED] = (f"remote {remote}: {', '.join(current)}"
                                     + (f"; not pushed, changed since dvc.lock: {', '.join(stale)}" if stale
                                        else ""))
        tags[card.TAG_DVC] = card.sha256(lock_path)
    use_tracking(dict(params["mlflow"]))
    client = MlflowClient()
    name, version = registered["model_name"], str(registered["version"])
    run_id = client.get_model_version(name, version).run_id
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
        if run_id:
            client.set_tag(run_id, key, value)
    if run_id and in_dvc:
        client.log_artifact(run_id, str(lock_path), LINEAGE_ARTIFACT)
    log.info("lineage of %s v%s: %s", name, version, tags)
    return tags


def promotion_gate(params: Mapping[str, Any]) -> dict[str, Any]:
    """Run the registry's promotion gate; the decision (promoted or why not) as a dict. A refusal is an answer,
    not an error."""
    from dataclasses import asdict

    from mlflow import MlflowClient

    from pipelines.registry import promote
    from pipelines.tracking import use_tracking

    gate = params["promote"]
    use_tracking(dict(params["mlflow"]))
    decision = promote(MlflowClient(), params["register"]["model_name"], gate["metric"], float(gate["min_gain"]),
                       float(gate["cold_tolerance"]))
    return asdict(decision)


def promotion_summary(decision: Mapping[str, Any]) -> str:
    """One line for the grid and the log: "promoted v5: ..." or "kept champion v4: ..."."""
    if decision["promoted"]:
        return f"promoted v{decision['challenger']}: {decision['reason']}"
    return f"kept champion v{decision['champion']}: {decision['reason']}"


def champion_test_start(params: Mapping[str, Any]) -> tuple[int, str] | None:
    """(first hour of the champion's test window, its version) from the registry, or None without a champion.

    Everything before that hour is what the champion was trained and early-stopped on: drift_monitor's
    reference window.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines.bundle import CHAMPION
    from pipelines.registry import WINDOW_TAG, window_hours
    from pipelines.tracking import use_tracking

    use_tracking(dict(params["mlflow"]))
    try:
        version = MlflowClient().get_model_version_by_alias(params["register"]["model_name"], CHAMPION)
    except MlflowException:
        return None
    window = version.tags.get(WINDOW_TAG, "")
    hours = window_hours(window)
    if hours is None:
        raise InputError(f"champion v{version.version} has test window tag {window!r}, expected 'hours A-B, ...'")
    return hours[0], str(version.version)


def run_folder(run_id: str) -> str:
    """A file-system-safe folder name for an Airflow run id (`scheduled__2017-10-01T03:00:00+00:00`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_")


def _options(argv: list[str]) -> dict[str, str]:
    return {a[2:]: b for a, b in itertools.pairwise(argv) if a.startswith("--") and not b.startswith("--")}


def training_outputs(params: Mapping[str, Any]) -> dict[str, Path] | None:
    """Where train_ranker's latest outputs are (from the train stage in dvc.yaml): split file, candidate
    lists, feature tables, ranker. None until a training run has written them all."""
    opts = _options(stage_command("train", params))
    paths = {"split": Path(opts["split"]), "candidates": Path(opts["candidates"]),
             "features": Path(opts["features"]), "model": Path(opts["out"])}
    return paths if all(p.exists() for p in paths.values()) else None


def drift_windows(params: Mapping[str, Any]) -> dict[str, str]:
    """drift_monitor's windows as hour specs, and what the reference is based on."""
    from pipelines.drift import format_hours, resolve_windows
    from pipelines.lake import landed_hours, validated_dir

    settings = params["drift"]
    available = landed_hours(validated_dir(params["paths"]["data"]))
    champion = champion_test_start(params)
    if champion is None:
        reference, basis = None, f"no champion yet: the {settings['reference_hours']} hours before the current ones"
    else:
        test_start, version = champion
        reference = [h for h in available if h < test_start]
        basis = f"champion v{version}: the hours before its test window (hour {test_start})"
    ref, cur = resolve_windows(available, None, reference, int(settings["current_hours"]),
                               int(settings["reference_hours"]))
    return {"reference": format_hours(ref), "current": format_hours(cur), "basis": basis}


def drift_run(params: Mapping[str, Any], windows: Mapping[str, str], folder: str) -> Path:
    """Write one drift_monitor report into `<paths.drift_reports>/<folder>/`; its absolute path.

    Scores join in when a training run's outputs are there: the candidate lists of the val snapshot (the
    reference) and of the test snapshot (the latest), with the trained ranker's scores of both. Not the
    train snapshots: the booster was fitted on those, so its scores there are in-sample and would differ
    from any later window's without anything having drifted.
    """
    from pipelines import drift
    from pipelines.split import read_snapshots

    run_dir = Path(params["paths"]["drift_reports"]) / folder
    ref_scores: list[Path] = []
    cur_scores: list[Path] = []
    model_dir = features_dir = None
    trained = training_outputs(params)
    if trained is not None:
        snaps = read_snapshots(trained["split"])
        ref_scores = [trained["candidates"] / f"{s.name}.parquet" for s in snaps if s.role == "val"]
        cur_scores = [trained["candidates"] / f"{s.name}.parquet" for s in snaps if s.role == "test"]
        model_dir, features_dir = trained["model"], trained["features"]
    drift.drift_report(
        params["paths"]["data"], drift.parse_hours(windows["reference"]), drift.parse_hours(windows["current"]),
        run_dir, drift.load_config(params["paths"]["drift_config"]), ref_scores, cur_scores, model_dir, features_dir,
        notes={"reference_basis": windows.get("basis", "")},
    )
    return run_dir.resolve()
