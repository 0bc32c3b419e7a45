"""`newsrec drift`: Evidently data-drift reports, reference window vs the latest hours.

Inputs are the validated clicks of two sets of hourly drops (by file hour): the reference (the
champion's training window) and the current window (the latest hours). Each click becomes one row of
input features: its context fields, the clicked article's category, the article's age at click, the
session size and the user's clicks in that hour (per hour, so windows of different lengths compare).
Optionally, candidate/model score files (one row per user x candidate) for both sides are compared too.

Columns, methods and thresholds live in monitoring/drift.yaml (params `paths.drift_config`). Each run writes
`<out>/<run-id>/`: `features.html` + `features.json` (Evidently), `scores.*` when scores were given,
and `summary.json` (drift detected?, share of drifted columns, which columns, every column's score).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipelines import columns as C
from pipelines.config import parse_step, step_parser
from pipelines.errors import InputError, MissingInputError

VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
DRIFTED_COLUMNS_COUNT = "evidently:metric_v2:DriftedColumnsCount"
OTHER_CATEGORY = -1  # categories outside the reference's top ones, pooled


def parse_hours(spec: str) -> list[int]:
    """`"0-71,80,90-95"` -> sorted unique hour numbers (ranges inclusive)."""
    hours: set[int] = set()
    for part in str(spec).replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise InputError(f"bad hour spec {part!r} in {spec!r}: use N, A-B or a comma list of them")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise InputError(f"bad hour range {part!r}: end before start")
        hours.update(range(lo, hi + 1))
    if not hours:
        raise InputError(f"hour spec {spec!r} names no hours")
    return sorted(hours)


def format_hours(hours: Sequence[int]) -> str:
    """Inverse of parse_hours, compact: [0, 1, 2, 5] -> "0-2,5"."""
    hs = sorted({int(h) for h in hours})
    parts, i = [], 0
    while i < len(hs):
        j = i
        while j + 1 < len(hs) and hs[j + 1] == hs[j] + 1:
            j += 1
        parts.append(f"{hs[i]}" if i == j else f"{hs[i]}-{hs[j]}")
        i = j + 1
    return ",".join(parts)


def load_config(path: str | Path) -> dict[str, Any]:
    """monitoring/drift.yaml, checked for the keys the report needs."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"drift config not found: {path}")
    cfg = yaml.safe_load(path.read_text()) or {}
    for key in ("features", "method", "threshold", "drift_share"):
        if key not in cfg:
            raise InputError(f"drift config {path} lacks '{key}'")
    for kind in ("categorical", "numerical"):
        if kind not in cfg["method"] or kind not in cfg["threshold"]:
            raise InputError(f"drift config {path}: method and threshold need '{kind}'")
    if not 0 < float(cfg["drift_share"]) <= 1:
        raise InputError(f"drift config {path}: drift_share must be in (0, 1]")
    return cfg


def hour_files(data_root: str | Path, hours: Sequence[int]) -> tuple[list[Path], list[int]]:
    """The validated part files of `hours`, and the hours that have none (quarantined or not yet landed)."""
    from pipelines.lake import partition_file

    files, missing = [], []
    for h in hours:
        part = partition_file(data_root, h)
        (files.append(part) if part.exists() else missing.append(h))
    return files, missing


def feature_frame(data_root: str | Path, hours: Sequence[int]) -> pd.DataFrame:
    """One row per validated click of `hours` with the monitored input features (see module docstring)."""
    import duckdb

    files, missing = hour_files(data_root, hours)
    if not files:
        raise MissingInputError(
            f"no validated hours among {format_hours(hours)} under {Path(data_root) / 'validated' / C.CLICKS_DIR}"
        )
    from pipelines.catalogue import catalogue_articles

    # the static file and the landed article drops: clicks on articles a drop delivered keep their features
    meta = catalogue_articles(data_root)[[C.ARTICLE_ID, C.CATEGORY_ID, C.CREATED_AT_TS]]
    context = ", ".join(f"c.{col}" for col in C.CONTEXT_COLUMNS)
    sql = f"""
        SELECT c.{C.HOUR}, {context}, m.{C.CATEGORY_ID},
               (c.{C.CLICK_TIMESTAMP} - m.{C.CREATED_AT_TS}) / {float(C.HOUR_MS)} AS {C.ARTICLE_AGE_H},
               c.{C.SESSION_SIZE},
               count(*) OVER (PARTITION BY c.{C.USER_ID}, c.{C.HOUR}) AS {C.USER_HOUR_CLICKS}
        FROM read_parquet(?, hive_partitioning = true) c
        JOIN meta m ON m.{C.ARTICLE_ID} = c.{C.CLICK_ARTICLE_ID}
        ORDER BY c.{C.HOUR}, c.{C.CLICK_TIMESTAMP}, c.{C.USER_ID}, c.{C.CLICK_ARTICLE_ID}
    """
    with duckdb.connect() as con:
        con.register("meta", meta)
        frame = con.execute(sql, [[str(f) for f in files]]).df()
    frame.attrs["missing_hours"] = missing
    return frame.astype({C.HOUR: "int64", C.USER_HOUR_CLICKS: "int64"})


def pool_categories(reference: pd.DataFrame, current: pd.DataFrame, column: str, top: int) -> None:
    """Keep the reference's `top` most clicked levels of `column`; pool the rest into one level, in place."""
    keep = reference[column].value_counts().nlargest(top).index
    for frame in (reference, current):
        frame[column] = frame[column].where(frame[column].isin(keep), OTHER_CATEGORY)


def _sample(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    if max_rows and len(frame) > max_rows:
        return frame.sample(n=int(max_rows), random_state=seed).sort_index()
    return frame


def run_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    categorical: Sequence[str],
    numerical: Sequence[str],
    cfg: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """Run Evidently's DataDriftPreset on the given columns; returns (snapshot, parsed result).

    The parsed result reads metrics by their type and column name, never by position:
    {"dataset": {"drifted": n, "share": s, "detected": bool}, "columns": {col: {method, threshold, score, drifted}}}.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cat = [c for c in categorical if _usable(reference, current, c)]
    num = [c for c in numerical if _usable(reference, current, c)]
    if not cat and not num:
        raise InputError("no monitored column has values on both sides")
    per_method = {c: cfg["method"]["categorical"] for c in cat} | {c: cfg["method"]["numerical"] for c in num}
    per_threshold = {c: float(cfg["threshold"]["categorical"]) for c in cat}
    per_threshold |= {c: float(cfg["threshold"]["numerical"]) for c in num}
    per_threshold |= {c: float(t) for c, t in (cfg.get("per_column_threshold") or {}).items() if c in per_threshold}
    definition = DataDefinition(categorical_columns=cat, numerical_columns=num)
    cols = cat + num
    report = Report(
        [DataDriftPreset(columns=cols, drift_share=float(cfg["drift_share"]), per_column_method=per_method,
                         per_column_threshold=per_threshold)],
        include_tests=True,
    )
    snapshot = report.run(
        current_data=Dataset.from_pandas(current[cols], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[cols], data_definition=definition),
    )
    return snapshot, parse_snapshot(snapshot.dict())


def _usable(reference: pd.DataFrame, current: pd.DataFrame, column: str) -> bool:
    return all(column in f.columns and f[column].notna().any() for f in (reference, current))


def parse_snapshot(result: dict[str, Any]) -> dict[str, Any]:
    """Column scores and verdicts from an Evidently snapshot's dict, matched by metric type and column."""
    columns: dict[str, dict[str, Any]] = {}
    dataset: dict[str, Any] = {}
    metric_column: dict[str, str] = {}
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"] == VALUE_DRIFT:
            metric_column[metric["id"]] = config["column"]
            columns[config["column"]] = {
                "method": config["method"],
                "threshold": config["threshold"],
                "score": float(metric["value"]),
            }
        elif config["type"] == DRIFTED_COLUMNS_COUNT:
            dataset = {"drifted": int(metric["value"]["count"]), "share": float(metric["value"]["share"]),
                       "drift_share": float(config["drift_share"])}
    # Which side of the threshold counts as drift depends on the method (distance vs p-value):
    # Evidently's own per-column test says it.
    for test in result.get("tests", []):
        column = metric_column.get(test["metric_config"]["metric_id"])
        if column is not None:
            columns[column]["drifted"] = test["status"] == "FAIL"
    if not dataset or any("drifted" not in v for v in columns.values()):
        raise InputError("Evidently result lacks the drift metrics or their tests (was include_tests off?)")
    dataset["detected"] = dataset["share"] >= dataset["drift_share"]
    return {"dataset": dataset, "columns": columns}


def read_scores(
    paths: Sequence[str | Path],
    wanted: Sequence[str],
    model_dir: str | Path | None = None,
    features_dir: str | Path | None = None,
    embeddings: Any = None,
) -> pd.DataFrame:
    """The score columns (of `wanted`) of candidate lists, stacked; with a trained ranker also its score
    (`model_score`) of each list, from the feature tables of the list's snapshot (`<features_dir>/<file stem>`)
    and the catalogue's normalised `embeddings`."""
    import pyarrow.parquet as pq

    frames = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise MissingInputError(f"score file not found: {p}")
        if model_dir is None:
            present = [c for c in wanted if c in pq.read_schema(p).names]
            frames.append(pd.read_parquet(p, columns=present))
            continue
        candidates = pd.read_parquet(p)
        candidates[C.MODEL_SCORE] = _model_scores(candidates, model_dir, Path(features_dir) / p.stem, embeddings)
        frames.append(candidates[[c for c in wanted if c in candidates.columns]])
    if not frames:
        raise InputError("no score files given")
    return pd.concat(frames, ignore_index=True)


def _model_scores(candidates: pd.DataFrame, model_dir: str | Path, tables_dir: Path, embeddings: Any) -> Any:
    from pipelines.features import FeatureTables
    from pipelines.train import score_candidates

    if not tables_dir.is_dir():
        raise MissingInputError(f"feature tables for {tables_dir.name} not found: {tables_dir}")
    tables = FeatureTables.load(tables_dir, embeddings)
    return score_candidates(model_dir, candidates.drop(columns=[C.LABEL], errors="ignore"), tables)


def drift_report(
    data_root: str | Path,
    reference_hours: Sequence[int],
    current_hours: Sequence[int],
    out_dir: str | Path,
    cfg: dict[str, Any],
    reference_scores: Sequence[str | Path] = (),
    current_scores: Sequence[str | Path] = (),
    model_dir: str | Path | None = None,
    features_dir: str | Path | None = None,
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the reports and summary.json into `out_dir` (the run's own folder); returns the summary.

    `reference_scores`/`current_scores` are candidate lists (`<root>/candidates/<snapshot>.parquet`); with
    `model_dir` (a trained ranker) and `features_dir` (its `<snapshot>/` feature tables) the model's scores
    of those lists are compared too. `notes` are copied into the summary (e.g. what the reference is)."""
    reference_hours, current_hours = sorted(set(reference_hours)), sorted(set(current_hours))
    if set(reference_hours) & set(current_hours):
        raise InputError(
            f"reference hours {format_hours(reference_hours)} and current hours {format_hours(current_hours)} overlap"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed, max_rows = int(cfg.get("seed", 0)), cfg.get("max_rows")

    ref = feature_frame(data_root, reference_hours)
    cur = feature_frame(data_root, current_hours)
    feats = cfg["features"]
    if cfg.get("top_categories") and C.CATEGORY_ID in feats.get("categorical", []):
        pool_categories(ref, cur, C.CATEGORY_ID, int(cfg["top_categories"]))
    summary: dict[str, Any] = {
        "reference_hours": format_hours(reference_hours),
        "current_hours": format_hours(current_hours),
        "missing_hours": {"reference": ref.attrs["missing_hours"], "current": cur.attrs["missing_hours"]},
        "rows": {"features": {"reference": len(ref), "current": len(cur)}},
        "reports": {},
        "parts": {},
        **(notes or {}),
    }
    parts = [("features", _sample(ref, max_rows, seed), _sample(cur, max_rows, seed),
              feats.get("categorical", []), feats.get("numerical", []), cfg)]
    if reference_scores or current_scores:
        if not (reference_scores and current_scores):
            raise InputError("score drift needs score files for both the reference and the current side")
        cfg = {**cfg, "scores": cfg.get("scores") or {}}
        wanted = cfg["scores"].get("numerical", [])
        embeddings = None
        if model_dir is not None:
            from pipelines.catalogue import read_catalogue
            from pipelines.features import normalise_embeddings

            if features_dir is None:
                raise InputError("model scores need the snapshots' feature tables (features_dir)")
            embeddings = normalise_embeddings(read_catalogue(data_root)[1])
        ref_s = read_scores(reference_scores, wanted, model_dir, features_dir, embeddings)
        cur_s = read_scores(current_scores, wanted, model_dir, features_dir, embeddings)
        summary["rows"]["scores"] = {"reference": len(ref_s), "current": len(cur_s)}
        scores_cfg = {**cfg, "threshold": {**cfg["threshold"],
                                           "numerical": cfg["scores"].get("threshold", cfg["threshold"]["numerical"])}}
        parts.append(("scores", _sample(ref_s, max_rows, seed), _sample(cur_s, max_rows, seed), [], wanted,
                      scores_cfg))

    all_columns: dict[str, dict[str, Any]] = {}
    for name, r, c, cat, num, part_cfg in parts:
        snapshot, parsed = run_report(r, c, cat, num, part_cfg)
        html, js = out_dir / f"{name}.html", out_dir / f"{name}.json"
        snapshot.save_html(str(html))
        snapshot.save_json(str(js))
        summary["reports"][name] = {"html": html.name, "json": js.name}
        summary["parts"][name] = parsed["dataset"]
        all_columns |= {f"{name}.{col}": v for col, v in parsed["columns"].items()}

    drifted = sorted(col for col, v in all_columns.items() if v["drifted"])
    summary["columns"] = all_columns
    summary["drifted_columns"] = drifted
    summary["share_drifted"] = len(drifted) / len(all_columns)
    summary["drift_detected"] = any(p["detected"] for p in summary["parts"].values())
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    tmp.replace(out_dir / "summary.json")
    return summary


def resolve_windows(
    available_hours: Sequence[int],
    current: Sequence[int] | None,
    reference: Sequence[int] | None,
    current_hours: int,
    reference_hours: int,
) -> tuple[list[int], list[int]]:
    """(reference, current) hour lists. Current defaults to the latest `current_hours` available hours;
    reference to the `reference_hours` available hours before the current window. A given reference
    (e.g. the champion's training window) loses any hours that are also current."""
    hours = sorted({int(h) for h in available_hours})
    if current is None:
        if not hours:
            raise InputError("no validated hours to compare")
        current = hours[-int(current_hours):]
    current = sorted(set(current))
    if reference is None:
        reference = [h for h in hours if h < current[0]][-int(reference_hours):]
    reference = sorted(set(reference) - set(current))
    if not reference:
        raise InputError(f"no reference hours before the current window {format_hours(current)}")
    return reference, current


def summary_text(summary: dict[str, Any], report_dir: str | Path) -> str:
    """The plain-text email body for a drift run."""
    verdict = "DRIFT DETECTED" if summary["drift_detected"] else "no drift"
    drifted, total = len(summary["drifted_columns"]), len(summary["columns"])
    lines = [
        f"{verdict}: {drifted} of {total} monitored columns drifted (share {summary['share_drifted']:.2f}).",
        f"reference hours {summary['reference_hours']} vs current hours {summary['current_hours']}",
    ]
    if summary.get("reference_basis"):
        lines.append(f"reference: {summary['reference_basis']}")
    lines.append("")
    for col, v in sorted(summary["columns"].items(), key=lambda kv: (not kv[1]["drifted"], kv[0])):
        flag = "DRIFT" if v["drifted"] else "ok   "
        lines.append(f"  {flag} {col:<32} {v['method']:<32} score {v['score']:.3f} (threshold {v['threshold']:.3f})")
    lines += ["", f"reports: {Path(report_dir).resolve()}"]
    return "\n".join(lines)


def default_run_id(reference_hours: Sequence[int], current_hours: Sequence[int]) -> str:
    """A run folder name fixed by the windows, so re-running the same comparison overwrites its own report."""
    return f"ref{format_hours(reference_hours)}_cur{format_hours(current_hours)}".replace(",", "+")


def main(argv: list[str] | None = None) -> int:
    parser = step_parser("drift", __doc__, data_root="data root with validated/ and raw/")
    parser.add_argument("--reference", help="reference hours, e.g. 0-71 (default: the hours before --current)")
    parser.add_argument("--current", help="current hours, e.g. 90-95 (default: the latest drift.current_hours)")
    parser.add_argument("--out", type=Path, help="reports folder; the run writes <out>/<run-id>/ (default: paths.drift_reports)")
    parser.add_argument("--run-id", help="run folder name (default: from the windows)")
    parser.add_argument("--reference-scores", type=Path, nargs="*", default=[],
                        help="candidate lists (<root>/candidates/<snapshot>.parquet) of the reference side")
    parser.add_argument("--current-scores", type=Path, nargs="*", default=[],
                        help="candidate lists of the current side")
    parser.add_argument("--model", type=Path, help="trained ranker folder: compare its scores of the candidate lists")
    parser.add_argument("--features", type=Path, help="folder of <snapshot>/ feature tables (with --model)")
    parser.add_argument("--config", type=Path, help="drift config (default: paths.drift_config)")
    parser.add_argument("--fail-on-drift", action="store_true", help="exit 3 when drift is detected")
    args, config = parse_step(parser, argv)

    params, paths = config["drift"], config["paths"]
    data_root = args.data_root
    from pipelines.lake import landed_hours, validated_dir

    available = landed_hours(validated_dir(data_root))
    reference, current = resolve_windows(
        available,
        parse_hours(args.current) if args.current else None,
        parse_hours(args.reference) if args.reference else None,
        int(params["current_hours"]),
        int(params["reference_hours"]),
    )
    cfg = load_config(args.config or paths["drift_config"])
    run_dir = Path(args.out or paths["drift_reports"]) / (args.run_id or default_run_id(reference, current))
    summary = drift_report(data_root, reference, current, run_dir, cfg, args.reference_scores,
                           args.current_scores, args.model, args.features)
    print(summary_text(summary, run_dir))
    return 3 if args.fail_on_drift and summary["drift_detected"] else 0


if __name__ == "__main__":
    sys.exit(main())
