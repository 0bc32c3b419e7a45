"""Hourly validation of click drops with Great Expectations: `newsrec validate`.

An hourly drop, `<root>/raw/clicks/clicks_hour_NNN.csv` (or the same file inside `<root>/raw/clicks.zip`),
is checked against `<root>/raw/articles_metadata.csv` and then either landed or quarantined:

- landed: `<root>/validated/clicks/hour=NNN/part-0.parquet`, the 12 click columns as int64 in the file's
  row order (duckdb's `hive_partitioning` adds `hour` when reading);
- quarantined: the drop moved whole (copied when it sits in clicks.zip) to `<root>/quarantine/clicks/hour=NNN/`,
  beside `result.json` (the GX validation result) and `reason.txt` (one line naming the failed checks).

Checks run in two stages. Reading comes first and takes every value as a string, so a file that GX could
never be shown (0 bytes, unparseable or truncated CSV, a required column missing, values that are not
integers) is quarantined with a clear reason instead of crashing; its result.json then lists those parse
checks under `"stage": "parse"`. Everything else is the GX suite `clicks_hour` kept in great_expectations/:
schema, dtypes, nulls, value ranges, session rules, article ids present in the metadata, duplicate rows,
timestamps against the hour and volume against earlier hours. Thresholds come from params.yaml `validate`
and reach the suite as `$PARAMETER`s, so the committed suite is the same for every dataset.

Empty hours, decided: a header-only file is a valid hour in which nobody clicked (the real dataset has one):
it lands an empty partition, so every hour is accounted for downstream, with the note "empty hour". A
0-byte file has no header, so it cannot be told from a drop cut off before its first byte: it is
quarantined as "empty file". Empty hours are left out of the volume history (a zero median bounds nothing).

Volume: an hour fails when its rows exceed `volume_max_ratio` x the smallest of two references, each used
when it exists: the median of the same hour of day on up to `volume_days` previous days (real traffic swings
between night and evening, so this is the fair comparison), and the median of the `volume_window_hours`
trailing landed hours once at least `volume_min_history` of them exist.

Every write goes to a temporary name and is renamed into place, and a drop leaves raw/ only after its
quarantine folder is complete, so a crash loses nothing. Re-running an hour gives the same outcome: it
overwrites its own partition or quarantine folder and clears the other one. A quarantined drop is found
there again when its hour is re-run (after a metadata fix, say); if it then lands, the csv goes back to raw/.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import json
import logging
import os
import re
import shutil
import sys
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines.config import DEFAULT_PARAMS, load_params
from pipelines.fileio import atomic_write_bytes

LANDED = "landed"
QUARANTINED = "quarantined"
PART_FILE = "part-0.parquet"
RESULT_FILE = "result.json"
REASON_FILE = "reason.txt"
SUMMARY_FILE = "_summary.json"
CLICKS_SUITE = "clicks_hour"
METADATA_SUITE = "articles_metadata"
# Where GX keeps its results store and data docs, inside the data root (see great_expectations.yml).
GX_RUNTIME_DIR = "gx"
GX_RUNTIME_VAR = "newsrec_gx_runtime"
# Columns validation adds beside the drop for the suite (see columns.py).
CHECK_COLUMNS = (C.SESSION_ROWS, C.UNKNOWN_ARTICLE_ID)
_HOUR_FILE = re.compile(r"^clicks_hour_(\d+)\.csv$")
_INTEGER = r"^[+-]?[0-9]+$"


class MetadataError(ValueError):
    """articles_metadata.csv is missing or fails its suite: no hour can be judged against it."""


@dataclass(frozen=True)
class Settings:
    """Thresholds of the checks that depend on the dataset (params.yaml `validate`)."""

    min_share_in_hour: float
    click_early_ms: int
    click_late_ms: int
    session_lead_ms: int
    volume_max_ratio: float
    volume_window_hours: int
    volume_min_history: int
    volume_days: int

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> Settings:
        """Pick this class's keys out of the `validate` section; a missing key is an error, not a default."""
        missing = [f.name for f in fields(cls) if f.name not in section]
        if missing:
            raise KeyError(f"params.yaml `validate` lacks {missing}")
        convert = {"float": float, "int": int}
        return cls(**{f.name: convert[f.type](section[f.name]) for f in fields(cls)})


@dataclass(frozen=True)
class HourResult:
    """What happened to one hourly drop. Paths are relative to the data root."""

    hour: int
    status: str
    rows: int | None  # rows in the file; None when it could not be read
    checks: tuple[str, ...]  # failed checks, empty when landed
    reason: str  # the one-line reason when quarantined; a note (or "") when landed
    path: str  # where the drop is now
    source: str  # where it was read from

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = list(self.checks)
        return d


@dataclass(frozen=True)
class Drop:
    """Where an hour's csv lives: a file (raw/clicks or a quarantine folder) or a member of clicks.zip."""

    hour: int
    path: Path
    member: str | None = None

    def read_bytes(self) -> bytes:
        if self.member is None:
            return self.path.read_bytes()
        with zipfile.ZipFile(self.path) as zf:
            return zf.read(self.member)

    def describe(self, root: Path) -> str:
        rel = _rel(self.path, root)
        return f"{rel}:{self.member}" if self.member else rel


@dataclass
class Parsed:
    """A csv read before GX: the typed frame, or the problems that stop it from reaching GX."""

    frame: pd.DataFrame | None
    problems: list[tuple[str, str]]
    rows: int | None = None


@dataclass(frozen=True)
class VolumeReference:
    """The bound on an hour's rows and the history it comes from."""

    max_rows: int
    ratio: float
    median_rows: float
    hours: tuple[int, ...]
    basis: str

    def describe(self) -> str:
        return f"{self.ratio:g} x {self.median_rows:,.0f} rows ({self.basis}: {_hour_list(self.hours)})"


# --------------------------------------------------------------------------------------------- layout


def partition_dir(data_root: str | Path, hour: int) -> Path:
    """`<root>/validated/clicks/hour=NNN`: one landed hour."""
    return Path(data_root) / "validated" / C.CLICKS_DIR / f"hour={hour:03d}"


def quarantine_dir(data_root: str | Path, hour: int) -> Path:
    """`<root>/quarantine/clicks/hour=NNN`: one rejected hour, whole."""
    return Path(data_root) / "quarantine" / C.CLICKS_DIR / f"hour={hour:03d}"


def summary_path(data_root: str | Path) -> Path:
    """`<root>/validated/_summary.json`: the latest outcome of every hour, for DAGs and the dashboard."""
    return Path(data_root) / "validated" / SUMMARY_FILE


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _hour_of(name: str) -> int | None:
    m = _HOUR_FILE.match(name)
    return int(m.group(1)) if m else None


def _zip_members(zip_path: Path) -> dict[int, str]:
    """hour -> member name; Kaggle's archive keeps the files under clicks/, a flat archive works too."""
    if not zip_path.exists():
        return {}
    out: dict[int, str] = {}
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            hour = _hour_of(Path(name).name)
            if hour is not None and not name.endswith("/"):
                out.setdefault(hour, name)
    return out


def list_hours(data_root: str | Path) -> list[int]:
    """Every hour with a drop: raw csv files, clicks.zip members and drops waiting in quarantine."""
    root = Path(data_root)
    hours: set[int] = set()
    clicks_dir = root / "raw" / C.CLICKS_DIR
    if clicks_dir.is_dir():
        hours |= {h for f in clicks_dir.iterdir() if (h := _hour_of(f.name)) is not None}
    hours |= set(_zip_members(root / "raw" / C.CLICKS_ZIP))
    qroot = root / "quarantine" / C.CLICKS_DIR
    if qroot.is_dir():
        for d in qroot.glob("hour=*"):
            key = d.name.split("=", 1)[1]
            if key.isdigit() and (d / C.hour_file_name(int(key))).exists():
                hours.add(int(key))
    return sorted(hours)


def find_drop(data_root: str | Path, hour: int) -> Drop:
    """The csv to validate for `hour`: raw/clicks first, then clicks.zip, then an earlier quarantine."""
    root = Path(data_root)
    csv_path = root / "raw" / C.CLICKS_DIR / C.hour_file_name(hour)
    if csv_path.exists():
        return Drop(hour, csv_path)
    member = _zip_members(root / "raw" / C.CLICKS_ZIP).get(hour)
    if member is not None:
        return Drop(hour, root / "raw" / C.CLICKS_ZIP, member)
    quarantined = quarantine_dir(root, hour) / C.hour_file_name(hour)
    if quarantined.exists():
        return Drop(hour, quarantined)
    raise FileNotFoundError(
        f"no drop for hour {hour}: looked for {csv_path}, {root / 'raw' / C.CLICKS_ZIP} and {quarantined}")


# --------------------------------------------------------------------------------------------- reading


def parse_csv(data: bytes, required: Sequence[str]) -> Parsed:
    """Read a Globo csv with every value as a string, then type the required columns as integers.

    Problems are `(check, detail)` pairs: `empty_file`, `parse` (unparseable or truncated), `schema`
    (required columns missing, a column named twice) and `dtypes` (values that are not int64 integers).
    Columns beyond `required` are kept as strings for the suite's schema check to name. A null (empty
    field) is not a parse problem: the column becomes nullable Int64 and the suite counts the nulls.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    if not data:
        return Parsed(None, [("empty_file", "empty file: 0 bytes, not even a header line")])
    first_line = data.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        names = next(csv.reader([first_line.decode("utf-8-sig")]), [])
    except (UnicodeDecodeError, csv.Error) as e:
        return Parsed(None, [("parse", f"unparseable header line: {e}")])
    names = [n.strip() for n in names]
    problems: list[tuple[str, str]] = []
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        return Parsed(None, [("schema", f"columns named more than once: {dup}")])
    missing = [c for c in required if c not in names]
    if missing:
        problems.append(("schema", f"missing columns {missing}"))
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=True, null_values=[""]),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        msg = " ".join(str(e).split())
        return Parsed(None, [("parse", f"unparseable or truncated CSV: {msg[:200]}")])

    typed: dict[str, Any] = {}
    for name in [c for c in required if c in names]:
        col = table[name]
        try:
            ints = pc.cast(col, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            not_int = pc.invert(pc.match_substring_regex(col, _INTEGER))
            bad = pc.filter(col, pc.fill_null(not_int, False))
            if len(bad) == 0:
                detail = f"{name}: integers outside the int64 range"
            else:
                samples = [str(v) for v in pc.unique(bad).to_pylist()[:3]]
                detail = f"{name}: {len(bad)} values are not integers, e.g. {samples}"
            problems.append(("dtypes", detail))
            continue
        typed[name] = ints.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get) if ints.null_count \
            else ints.to_numpy().astype(np.int64)
    if problems:
        return Parsed(None, problems, table.num_rows)
    frame = pd.DataFrame({c: typed[c] for c in required})
    for name in names:
        if name not in typed:
            frame[name] = table[name].to_pandas()
    return Parsed(frame, [], table.num_rows)


def load_article_ids(metadata_path: str | Path, context: Any) -> np.ndarray:
    """Sorted article ids of a metadata file that passes the `articles_metadata` suite; else MetadataError."""
    path = Path(metadata_path)
    if not path.exists():
        raise MetadataError(f"metadata not found: {path}")
    parsed = parse_csv(path.read_bytes(), C.METADATA_COLUMNS)
    if parsed.frame is None:
        raise MetadataError(f"{path}: " + "; ".join(f"{c}: {d}" for c, d in parsed.problems))
    result = run_checkpoint(context, METADATA_SUITE, parsed.frame, {}, run_name="articles_metadata")
    if not result["success"]:
        raise MetadataError(f"{path} fails suite {METADATA_SUITE}: " + _reason(result, None))
    return np.unique(parsed.frame[C.ARTICLE_ID].to_numpy(dtype=np.int64))


def with_check_columns(frame: pd.DataFrame, article_ids: np.ndarray) -> pd.DataFrame:
    """The frame GX sees: the drop plus the two columns the suite needs context for (see columns.py)."""
    out = frame.copy()
    out[C.SESSION_ROWS] = out.groupby(C.SESSION_ID, dropna=False, sort=False)[C.SESSION_ID] \
        .transform("size").astype(np.int64)
    ids = out[C.CLICK_ARTICLE_ID]
    present = ids.notna().to_numpy()
    values = ids.to_numpy(dtype=np.int64, na_value=0)
    pos = np.searchsorted(article_ids, values).clip(max=max(len(article_ids) - 1, 0))
    known = (article_ids[pos] == values) if len(article_ids) else np.zeros(len(values), dtype=bool)
    unknown = pd.array(np.where(present & ~known, values, 0), dtype="Int64")
    unknown[~(present & ~known)] = pd.NA
    out[C.UNKNOWN_ARTICLE_ID] = unknown
    return out


# --------------------------------------------------------------------------------------------- checks


def volume_reference(landed_rows: Mapping[int, int], hour: int, settings: Settings) -> VolumeReference | None:
    """The tighter of the two volume references for `hour` (module docstring), or None without history.

    `landed_rows` maps earlier landed hours to their row counts; later hours and empty hours are ignored.
    """
    refs: list[tuple[float, tuple[int, ...], str]] = []
    same = tuple(h for d in range(1, settings.volume_days + 1)
                 if (h := hour - 24 * d) >= 0 and landed_rows.get(h, 0) > 0)
    if same:
        refs.append((float(np.median([landed_rows[h] for h in same])), same,
                     f"median of the same hour on {len(same)} previous day(s)"))
    trailing = tuple(h for h in range(max(0, hour - settings.volume_window_hours), hour)
                     if landed_rows.get(h, 0) > 0)
    if len(trailing) >= settings.volume_min_history:
        refs.append((float(np.median([landed_rows[h] for h in trailing])), trailing,
                     f"median of {len(trailing)} trailing landed hours"))
    if not refs:
        return None
    median, hours, basis = min(refs, key=lambda r: r[0])
    return VolumeReference(int(settings.volume_max_ratio * median), settings.volume_max_ratio, median, hours, basis)


def expectation_parameters(hour: int, epoch_ms: int, settings: Settings,
                           volume: VolumeReference | None) -> dict[str, Any]:
    """The `$PARAMETER`s of suite `clicks_hour` for one hour."""
    start = epoch_ms + hour * C.HOUR_MS
    last = start + C.HOUR_MS - 1
    return {
        "hour_start_ms": start,
        "hour_last_ms": last,
        "click_min_ms": start - settings.click_early_ms,
        "click_max_ms": last + settings.click_late_ms,
        "session_start_min_ms": start - settings.session_lead_ms,
        "min_share_in_hour": settings.min_share_in_hour,
        "volume_max_rows": None if volume is None else volume.max_rows,
    }


def open_gx_context(gx_dir: str | Path, runtime_dir: str | Path) -> Any:
    """The committed GX file context, with its results store and data docs under `runtime_dir`."""
    import great_expectations as gx

    gx_dir = Path(gx_dir)
    if not (gx_dir / "great_expectations.yml").exists():
        raise FileNotFoundError(f"no GX project at {gx_dir} (great_expectations.yml missing)")
    Path(runtime_dir).mkdir(parents=True, exist_ok=True)
    return gx.get_context(mode="file", context_root_dir=str(gx_dir.resolve()),
                          runtime_environment={GX_RUNTIME_VAR: str(Path(runtime_dir).resolve())})


def run_checkpoint(context: Any, name: str, frame: pd.DataFrame, parameters: Mapping[str, Any],
                   run_name: str) -> dict[str, Any]:
    """Run checkpoint `name` on an in-memory frame; the GX validation result as a JSON-able dict."""
    from great_expectations.core.run_identifier import RunIdentifier

    checkpoint = context.checkpoints.get(name)
    outcome = checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=dict(parameters),
                             run_id=RunIdentifier(run_name=run_name))
    (result,) = outcome.run_results.values()  # one validation definition per checkpoint
    return result.to_json_dict()


# --------------------------------------------------------------------------------------------- reasons


def _iso(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ms)


def _hour_list(hours: Sequence[int]) -> str:
    hours = list(hours)
    if len(hours) > 3 and hours == list(range(hours[0], hours[-1] + 1)):
        return f"hours {hours[0]:03d}-{hours[-1]:03d}"
    return "hours " + ", ".join(f"{h:03d}" for h in hours)


def _describe_failure(r: Mapping[str, Any], volume: VolumeReference | None) -> str:
    cfg = r["expectation_config"]
    kind, kw, res = cfg["type"], cfg["kwargs"], r.get("result") or {}
    col = kw.get("column")
    n = res.get("unexpected_count")
    sample = res.get("partial_unexpected_list") or []
    if r.get("exception_info", {}).get("raised_exception"):
        msg = str(r["exception_info"].get("exception_message", "")).splitlines()[0][:120]
        return f"{kind} on {col or kw.get('column_list') or 'table'} raised: {msg}"
    if kind == "expect_table_columns_to_match_set":
        mism = (res.get("details") or {}).get("mismatched") or {}
        parts = []
        if mism.get("unexpected"):
            parts.append(f"unexpected columns {sorted(mism['unexpected'])}")
        if mism.get("missing"):
            parts.append(f"missing columns {sorted(mism['missing'])}")
        return ", ".join(parts) or f"columns {res.get('observed_value')}"
    if kind == "expect_column_values_to_be_in_type_list":
        return f"{col} is {res.get('observed_value')}, not an integer type"
    if kind == "expect_column_values_to_not_be_null":
        return f"{col}: {n} nulls"
    if kind == "expect_column_values_to_be_null" and col == C.UNKNOWN_ARTICLE_ID:
        return f"{n} clicks on articles not in the metadata, e.g. {sorted(set(sample))[:5]}"
    if kind == "expect_compound_columns_to_be_unique":
        return f"{n} rows repeated whole"
    if kind == "expect_column_pair_values_to_be_equal":
        eg = ", ".join(f"{a} vs {b}" for a, b in list(dict.fromkeys(tuple(p) for p in sample))[:3])
        return f"{kw['column_A']} differs from the session's rows in this file for {n} clicks (e.g. {eg})"
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        return f"{n} clicks with {kw['column_A']} before their {kw['column_B']}"
    if kind == "expect_table_row_count_to_be_between":
        rows = res.get("observed_value")
        if volume is not None:
            return f"{rows:,} rows > {volume.max_rows:,} allowed = {volume.describe()}"
        return f"{rows:,} rows > {kw.get('max_value')} allowed"
    if kind == "expect_column_values_to_be_between":
        lo, hi = kw.get("min_value"), kw.get("max_value")
        is_time = col in (C.CLICK_TIMESTAMP, C.SESSION_START)
        fmt = _iso if is_time else str
        bounds = f"[{fmt(lo) if lo is not None else '-inf'}, {fmt(hi) if hi is not None else 'inf'}]"
        eg = [fmt(v) for v in list(dict.fromkeys(sample))[:3]]
        if kw.get("mostly") is not None and kw["mostly"] < 1:
            share = 100 - float(res.get("unexpected_percent") or 0)
            return f"{col}: only {share:.1f}% inside {bounds} (at least {100 * kw['mostly']:.0f}% expected)"
        return f"{col}: {n} values outside {bounds}, e.g. {eg}"
    return f"{kind} on {col or 'table'}: {n} unexpected"


def failed_checks(result: Mapping[str, Any], volume: VolumeReference | None = None) -> dict[str, list[str]]:
    """check name -> details of the failed expectations of a GX result (suite meta `check`), in suite order."""
    out: dict[str, list[str]] = {}
    for r in result.get("results", []):
        if r.get("success"):
            continue
        check = (r["expectation_config"].get("meta") or {}).get("check", "other")
        out.setdefault(check, []).append(_describe_failure(r, volume))
    return out


def _reason(result: Mapping[str, Any], volume: VolumeReference | None) -> str:
    return "; ".join(f"{check}: {', '.join(details)}" for check, details in failed_checks(result, volume).items())


def _parse_result(problems: Sequence[tuple[str, str]], rows: int | None) -> dict[str, Any]:
    """result.json for a drop stopped before GX: the same top-level shape, the stage named."""
    return {
        "success": False,
        "stage": "parse",
        "rows": rows,
        "results": [{"success": False, "check": c, "detail": d} for c, d in problems],
        "statistics": {"evaluated_checks": len(problems), "unsuccessful_checks": len(problems)},
    }


# --------------------------------------------------------------------------------------------- writing


def land(frame: pd.DataFrame, data_root: str | Path, hour: int) -> Path:
    """Write the 12 click columns as int64 to the hour's partition (temp file, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = partition_dir(data_root, hour) / PART_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({c: pa.array(frame[c].to_numpy(dtype=np.int64), type=pa.int64()) for c in C.CLICK_COLUMNS})
    tmp = target.with_name(f".{PART_FILE}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _swap_dir(new: Path, target: Path) -> None:
    """Put folder `new` at `target`, replacing an older one; the old one is deleted only once replaced."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def quarantine(drop: Drop, data: bytes, data_root: str | Path, result: Mapping[str, Any], reason: str) -> Path:
    """Move the drop whole into the hour's quarantine folder beside result.json and reason.txt."""
    target = quarantine_dir(data_root, drop.hour)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / C.hour_file_name(drop.hour)).write_bytes(data)
        (tmp / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str) + "\n")
        (tmp / REASON_FILE).write_text(reason.replace("\n", " ") + "\n")
        _swap_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Only now is the drop safe in quarantine; a zip member stays where it is (the archive is the raw record).
    if drop.member is None and drop.path.resolve() != (target / C.hour_file_name(drop.hour)).resolve():
        drop.path.unlink(missing_ok=True)
    return target


def update_summary(data_root: str | Path, results: Sequence[HourResult], epoch_ms: int) -> Path:
    """Merge these hours' outcomes into `_summary.json` (under a lock: hourly tasks may run side by side)."""
    path = summary_path(data_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{SUMMARY_FILE}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = json.loads(path.read_text()) if path.exists() else {}
        hours = summary.get("hours", {})
        for r in results:
            hours[f"{r.hour:03d}"] = r.to_dict()
        hours = dict(sorted(hours.items()))
        statuses = [h["status"] for h in hours.values()]
        summary = {
            "epoch_ms": epoch_ms,
            "hours_total": len(hours),
            LANDED: statuses.count(LANDED),
            QUARANTINED: statuses.count(QUARANTINED),
            "rows_landed": sum(h["rows"] or 0 for h in hours.values() if h["status"] == LANDED),
            "quarantined_hours": [int(k) for k, h in hours.items() if h["status"] == QUARANTINED],
            "hours": hours,
        }
        atomic_write_bytes(path, (json.dumps(summary, indent=2) + "\n").encode())
    return path


def _landed_rows(data_root: Path) -> dict[int, int]:
    import pyarrow.parquet as pq

    out: dict[int, int] = {}
    base = data_root / "validated" / C.CLICKS_DIR
    if base.is_dir():
        for part in base.glob(f"hour=*/{PART_FILE}"):
            key = part.parent.name.split("=", 1)[1]
            if key.isdigit():
                out[int(key)] = pq.ParquetFile(part).metadata.num_rows
    return out


# --------------------------------------------------------------------------------------------- validation


class HourValidator:
    """Everything that is built once per process: the GX context, the metadata's ids, the landed volumes."""

    def __init__(self, data_root: str | Path, *, epoch_ms: int, settings: Settings, gx_dir: str | Path):
        self.root = Path(data_root)
        self.epoch_ms = int(epoch_ms)
        self.settings = settings
        self.context = open_gx_context(gx_dir, self.root / GX_RUNTIME_DIR)
        self.article_ids = load_article_ids(self.root / "raw" / C.METADATA_FILE, self.context)
        self.landed_rows = _landed_rows(self.root)

    def validate(self, hour: int) -> HourResult:
        """Validate one hour's drop, then land or quarantine it."""
        if hour < 0:
            raise ValueError(f"hour must be >= 0, got {hour}")
        drop = find_drop(self.root, hour)
        data = drop.read_bytes()
        source = drop.describe(self.root)
        parsed = parse_csv(data, C.CLICK_COLUMNS)
        clash = [c for c in CHECK_COLUMNS if parsed.frame is not None and c in parsed.frame.columns]
        if clash:
            # The suite's schema check would not see a drop column that validation overwrites.
            parsed = Parsed(None, [("schema", f"unexpected columns {clash} (names validation reserves)")],
                            parsed.rows)
        if parsed.frame is None:
            reason = "; ".join(f"{c}: {d}" for c, d in parsed.problems)
            checks = tuple(dict.fromkeys(c for c, _ in parsed.problems))
            return self._reject(drop, data, source, _parse_result(parsed.problems, parsed.rows), reason,
                                checks, parsed.rows)

        volume = volume_reference(self.landed_rows, hour, self.settings)
        params = expectation_parameters(hour, self.epoch_ms, self.settings, volume)
        frame = with_check_columns(parsed.frame, self.article_ids)
        result = run_checkpoint(self.context, CLICKS_SUITE, frame, params, run_name=f"hour={hour:03d}")
        result.setdefault("meta", {})["newsrec"] = {
            "hour": hour, "source": source, "expectation_parameters": params,
            "volume_reference": None if volume is None else asdict(volume),
        }
        rows = len(frame)
        if not result["success"]:
            failures = failed_checks(result, volume)
            return self._reject(drop, data, source, result, _reason(result, volume), tuple(failures), rows)

        target = land(parsed.frame, self.root, hour)
        self.landed_rows[hour] = rows
        stale = quarantine_dir(self.root, hour)
        if drop.member is None and drop.path.parent.resolve() == stale.resolve():
            # A drop that failed before and now passes goes back to raw/, where every accepted drop lives.
            back = self.root / "raw" / C.CLICKS_DIR / C.hour_file_name(hour)
            atomic_write_bytes(back, data)
            source = _rel(back, self.root)
        shutil.rmtree(stale, ignore_errors=True)
        notes = ["empty hour: header only, no clicks"] if rows == 0 else []
        if volume is None:
            notes.append("volume not judged: no history yet")
        note = "; ".join(notes)
        return HourResult(hour, LANDED, rows, (), note, _rel(target, self.root), source)

    def _reject(self, drop: Drop, data: bytes, source: str, result: Mapping[str, Any], reason: str,
                checks: tuple[str, ...], rows: int | None) -> HourResult:
        target = quarantine(drop, data, self.root, result, reason)
        shutil.rmtree(partition_dir(self.root, drop.hour), ignore_errors=True)
        self.landed_rows.pop(drop.hour, None)
        return HourResult(drop.hour, QUARANTINED, rows, checks, reason, _rel(target, self.root), source)

    def build_docs(self) -> Path:
        """Build the GX data docs of every stored result; the index page's path."""
        self.context.build_data_docs()
        return self.root / GX_RUNTIME_DIR / "docs" / "index.html"


def _resolve(epoch_ms: int | None, settings: Settings | None, gx_dir: str | Path | None,
             params_path: str | Path = DEFAULT_PARAMS) -> tuple[int, Settings, Path]:
    """Fill what the caller left out from params.yaml (`data.epoch_ms`, `validate`)."""
    section = load_params("validate", params_path) if settings is None or gx_dir is None else {}
    epoch = int(load_params("data", params_path)["epoch_ms"]) if epoch_ms is None else int(epoch_ms)
    return (epoch, settings or Settings.from_params(section), Path(gx_dir or section["gx_dir"]))


def validate_hour(data_root: str | Path, hour: int, *, epoch_ms: int | None = None,
                  settings: Settings | None = None, gx_dir: str | Path | None = None,
                  docs: bool = False, raw_uri: str | None = None) -> HourResult:
    """Validate one hourly drop, land or quarantine it and record it in `_summary.json`.

    What is not given comes from params.yaml in the working directory. Raises MetadataError when the
    metadata is missing or invalid and FileNotFoundError when the hour has no drop. With `raw_uri`
    (e.g. `s3://bucket/prefix`, params `storage.raw_uri`) the drop is first staged from there into raw/.
    """
    epoch, settings, gx_dir = _resolve(epoch_ms, settings, gx_dir)
    if raw_uri:
        from pipelines import storage

        storage.stage_raw(raw_uri, data_root, [hour])
    validator = HourValidator(data_root, epoch_ms=epoch, settings=settings, gx_dir=gx_dir)
    result = validator.validate(hour)
    update_summary(data_root, [result], epoch)
    if docs:
        validator.build_docs()
    return result


def validate_all(data_root: str | Path, hours: Sequence[int] | None = None, *, epoch_ms: int | None = None,
                 settings: Settings | None = None, gx_dir: str | Path | None = None, docs: bool = True,
                 on_result: Any = None, raw_uri: str | None = None) -> list[HourResult]:
    """Validate every hour with a drop (or `hours`), in hour order, in one process and one GX context.

    `on_result(HourResult)` is called after each hour (the CLI prints a line). Docs are built at the end.
    With `raw_uri`, the hours that landed there (or `hours`) are first staged into raw/.
    """
    epoch, settings, gx_dir = _resolve(epoch_ms, settings, gx_dir)
    if raw_uri:
        from pipelines import storage

        storage.stage_raw(raw_uri, data_root, storage.hours_available(raw_uri) if hours is None else hours)
    validator = HourValidator(data_root, epoch_ms=epoch, settings=settings, gx_dir=gx_dir)
    todo = list_hours(data_root) if hours is None else sorted(set(hours))
    results = []
    for hour in todo:
        results.append(validator.validate(hour))
        if on_result is not None:
            on_result(results[-1])
    update_summary(data_root, results, epoch)
    if docs and results:
        validator.build_docs()
    return results


# --------------------------------------------------------------------------------------------- CLI


def quiet_gx() -> None:
    """GX logs at INFO and warns about its own internals; a CLI run over hundreds of hours wants neither."""
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"great_expectations(\..*)?")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _line(r: HourResult) -> str:
    rows = "-" if r.rows is None else f"{r.rows:,}"
    return f"{r.hour:03d}  {rows:>8}  {r.status:<11}  {r.reason}".rstrip()


def main(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--params", default=str(DEFAULT_PARAMS))
    known, _ = pre.parse_known_args(argv)
    data_params = load_params("data", known.params)
    cfg = load_params("validate", known.params)

    ap = argparse.ArgumentParser(prog="newsrec validate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(DEFAULT_PARAMS), help="params.yaml to read (sections data, validate)")
    ap.add_argument("--data-root", default=data_params["root"], help="dataset root holding raw/ (default: %(default)s)")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--hour", type=int, metavar="N", help="validate one hour")
    which.add_argument("--all", action="store_true", help="validate every hour with a drop, in order")
    ap.add_argument("--epoch-ms", type=int, default=data_params["epoch_ms"],
                    help="start of hour 000 in ms (default: params data.epoch_ms)")
    ap.add_argument("--gx-dir", default=cfg["gx_dir"], help="the GX project (default: %(default)s)")
    ap.add_argument("--raw-uri", default=load_params("storage", known.params).get("raw_uri"),
                    help="stage drops from here (s3://bucket/prefix) into <data-root>/raw first "
                         "(default: params storage.raw_uri; unset: read <data-root>/raw as is)")
    ap.add_argument("--docs", action=argparse.BooleanOptionalAction, default=cfg["docs"],
                    help="build GX data docs under <root>/gx/docs at the end (default: %(default)s)")
    args = ap.parse_args(argv)

    quiet_gx()
    settings = Settings.from_params(cfg)
    root = Path(args.data_root)
    print(f"{'hour':<4}  {'rows':>8}  {'status':<11}  reason")
    try:
        if args.raw_uri:
            from pipelines import storage

            staged = [args.hour] if not args.all else storage.hours_available(args.raw_uri)
            storage.stage_raw(args.raw_uri, root, staged)
        if args.all:
            if not list_hours(root):
                print(f"newsrec validate: no hourly drops under {root / 'raw'}", file=sys.stderr)
                return 1
            results = validate_all(root, epoch_ms=args.epoch_ms, settings=settings, gx_dir=args.gx_dir,
                                   docs=args.docs, on_result=lambda r: print(_line(r), flush=True))
        else:
            results = [validate_hour(root, args.hour, epoch_ms=args.epoch_ms, settings=settings,
                                     gx_dir=args.gx_dir, docs=args.docs)]
            print(_line(results[0]))
    except (MetadataError, FileNotFoundError) as e:
        print(f"newsrec validate: {e}", file=sys.stderr)
        return 1
    landed = [r for r in results if r.status == LANDED]
    print(f"{len(results)} hours: {len(landed)} landed ({sum(r.rows or 0 for r in landed):,} rows), "
          f"{len(results) - len(landed)} quarantined; summary: {summary_path(root)}"
          + (f"; docs: {root / GX_RUNTIME_DIR / 'docs' / 'index.html'}" if args.docs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
