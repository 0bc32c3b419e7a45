"""Hourly validation of click and article drops with Great Expectations: `newsrec validate`.

An hourly drop, `<root>/raw/clicks/clicks_hour_NNN.csv` (or the same file inside `<root>/raw/clicks.zip`),
is checked against the article catalogue (`<root>/raw/articles_metadata.csv` plus the article drops landed
for that hour and earlier) and then either landed or quarantined:

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
and reach the suite as `$PARAMETER`s, so the committed suite is the same for every dataset. One comes from the
data: the smallest session, Globo's 2 unless `newsrec import` declared another in raw/import.json (MIND
sittings often hold one click; see declared_min_session_size).

Empty hours, decided: a header-only file is a valid hour in which nobody clicked (the real dataset has one):
it lands an empty partition, so every hour is accounted for downstream, with the note "empty hour". A
0-byte file has no header, so it cannot be told from a drop cut off before its first byte: it is
quarantined as "empty file". Empty hours are left out of the volume history (a zero median bounds nothing).

Volume: an hour fails when its rows exceed `volume_max_ratio` x the smallest of two references (and
`volume_floor_rows`: a small stream's hour-to-hour swings are no spike), each used
when it exists: the median of the same hour of day on up to `volume_days` previous days (real traffic swings
between night and evening, so this is the fair comparison), and the median of the `volume_window_hours`
trailing landed hours once at least `volume_min_history` of them exist. Without either (thin history), the
busiest of the landed hours there are; without any landed hour, `volume_floor_rows`. Only the first hour of a
dataset (no earlier drop at all) is not judged.

Article drops: new articles arrive hourly too, as `<root>/raw/articles/articles_hour_NNN.csv` (the metadata
columns) beside `embeddings_hour_NNN.pickle` (float32 [rows, 250], row j = the csv's j-th row). An hour's
article drop is validated before its clicks, by the same machinery: parse checks, then the embeddings
(present, [rows, 250], finite, one row per csv row), then the GX suite `articles_hour` (nulls, values, ids
unique and new to the catalogue, created_at_ts not after the end of the hour). It lands as
`<root>/validated/articles/hour=NNN/` (`part-0.parquet` + `embeddings.npy`) or goes whole to
`<root>/quarantine/articles/hour=NNN/`. A re-delivery of an hour replaces that hour's rows. The catalogue is
read back with pipelines.catalogue.read_catalogue.

Every write goes to a temporary name and is renamed into place, and a drop leaves raw/ only after its
quarantine folder is complete, so a crash loses nothing; the next run repairs what a killed one left
(recover_interrupted). Re-running an hour gives the same outcome. Nothing received is lost: a landed partition
or quarantine folder that a different delivery replaces moves to `<root>/archive/` (archive_dir), and a bad
re-delivery of a landed hour is quarantined while the landed partition stays. A quarantined drop is found
there again when its hour is re-run (after a metadata fix, say); if it then lands, its files go back to raw/.
Files of the landing area that no hour reads (misnamed, second spellings) are listed in `_summary.json`
(unvalidated_files), and a symlink out of raw/ is quarantined unread. A drop that cannot be read (permissions,
I/O) is reported as UNREADABLE and left where it is; the run goes on and exits non-zero.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import json
import logging
import os
import pickle
import re
import shutil
import sys
import warnings
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines.config import parse_step, step_parser
from pipelines.errors import ConfigError, InputError, MissingInputError
from pipelines.fileio import atomic_write_bytes
from pipelines.lake import (
    PART_FILE,
    QUARANTINE,
    SUMMARY_FILE,
    VALIDATED,
    archive_dir,
    landing_dir,
    partition_dir,
    partition_hour,
    quarantine_dir,
    raw_dir,
    summary_path,
    validated_dir,
)

LANDED = "landed"
QUARANTINED = "quarantined"
# A drop the process cannot read (permissions, an I/O error): nothing is decided or moved, the hour's earlier
# landed version stays, the other hours go on, and the run exits non-zero so a person looks.
UNREADABLE = "unreadable"
RESULT_FILE = "result.json"
REASON_FILE = "reason.txt"
CLICKS_SUITE = "clicks_hour"
ARTICLES_SUITE = "articles_hour"
METADATA_SUITE = "articles_metadata"
# The two kinds of hourly drop (the folder under raw/, validated/ and quarantine/), in the order an hour's
# drops are validated: its new articles first, so that its clicks may read them.
ARTICLES = C.ARTICLES_DIR
CLICKS = C.CLICKS_DIR
KINDS = (ARTICLES, CLICKS)
# The files an article drop is made of: its metadata csv (first: the drop's name), then its embeddings.
ARTICLE_FILES = (C.ARTICLES_DIR, C.EMBEDDINGS_HOUR)
# Where GX keeps its results store and data docs, inside the data root (see great_expectations.yml).
GX_RUNTIME_DIR = "gx"
GX_RUNTIME_VAR = "newsrec_gx_runtime"
# Columns validation adds beside the drop for the suite (see columns.py).
CHECK_COLUMNS = (C.SESSION_ROWS, C.UNKNOWN_ARTICLE_ID)
ARTICLE_CHECK_COLUMNS = (C.CATALOGUED_ARTICLE_ID,)
# The only integer spelling a drop may use: ASCII digits, an optional minus (Arrow alone would also read `0x13`).
_INTEGER = r"^-?[0-9]+$"
# A header with more columns than this beyond the contract's is refused before the body is read: parsing
# 20,000 string columns takes minutes and gigabytes, and no real drop carries more than a few extras.
MAX_EXTRA_COLUMNS = 64
# What an embeddings pickle may name: numpy's own array reconstruction, nothing else. A drop is
# untrusted input, and a plain pickle.load would run whatever callable it names.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
}


class MetadataError(InputError):
    """articles_metadata.csv is missing or fails its suite: no hour can be judged against it."""


@dataclass(frozen=True)
class Settings:
    """Thresholds of the checks that depend on the dataset (params.yaml `validate`)."""

    min_share_in_hour: float
    click_early_ms: int
    click_late_ms: int
    session_lead_ms: int
    volume_max_ratio: float
    volume_floor_rows: int
    volume_window_hours: int
    volume_min_history: int
    volume_days: int

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> Settings:
        """Pick this class's keys out of the `validate` section; a missing key is an error, not a default."""
        missing = [f.name for f in fields(cls) if f.name not in section]
        if missing:
            raise ConfigError(f"params.yaml `validate` lacks {missing}")
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
    kind: str = CLICKS  # which drop: "clicks" or "articles"
    # Quarantined while an earlier version of the hour had landed: that partition, which stays (else "").
    kept: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = list(self.checks)
        return d


@dataclass(frozen=True)
class Drop:
    """Where an hour's drop lives. Clicks: one csv, a file (raw/clicks or a quarantine folder) or a member of
    clicks.zip. Articles: the csv plus its embeddings pickle, each from raw/articles or else from quarantine."""

    hour: int
    path: Path
    member: str | None = None
    kind: str = CLICKS
    embeddings: Path | None = None  # article drops: the pickle, None when it was not delivered

    def read_bytes(self) -> bytes:
        if self.member is None:
            return self.path.read_bytes()
        with zipfile.ZipFile(self.path) as zf:
            return zf.read(self.member)

    def describe(self, root: Path) -> str:
        rel = _rel(self.path, root)
        if self.member:
            return f"{rel}:{self.member}"
        return f"{rel} + {_rel(self.embeddings, root)}" if self.embeddings is not None else rel

    def local_files(self) -> list[Path]:
        """The drop's own files on disk (a zip member is not one: the archive stays the raw record)."""
        if self.member is not None:
            return []
        return [p for p in (self.path, self.embeddings) if p is not None]


class DropUnreadable(OSError):
    """A drop's file could not be read; `path` is the file, relative to the data root."""

    def __init__(self, path: str, error: OSError):
        super().__init__(f"cannot read {path}: {error.strerror or error}; the drop stays where it is and nothing "
                         "was changed: make it readable, then validate the hour again")
        self.path = path


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
    floor_rows: int = 0

    def describe(self) -> str:
        if not self.hours:
            return f"the floor of {self.floor_rows:,} rows ({self.basis})"
        text = f"{self.ratio:g} x {self.median_rows:,.0f} rows ({self.basis}: {_hour_list(self.hours)})"
        return text if self.max_rows > self.floor_rows else f"the floor of {self.floor_rows:,} rows (above {text})"


# --------------------------------------------------------------------------------------------- layout


def _rel(path: Path, root: Path) -> str:
    path = Path(path)
    try:  # the parent resolved, not the name: a symlink is named where it is, not where it points
        return str((path.parent.resolve() / path.name).relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _present(path: Path) -> bool:
    """The name is there, even as a symlink that leads nowhere (validation refuses it, see _refused_link)."""
    return os.path.lexists(path)


def _refused_link(path: Path, landing: Path) -> str | None:
    """Why a symlink may not be read as a drop (it leads out of the landing area `landing`, or nowhere), else
    None. Only the link is looked at, never what it points to."""
    if not path.is_symlink():
        return None
    target = os.readlink(path)
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return f"a symlink to {target} that leads nowhere"
    if real.is_relative_to(landing.resolve()):
        return None
    return f"a symlink to {target}, outside the landing area {landing.name}/"


def _zip_members(zip_path: Path) -> dict[int, str]:
    """hour -> member name; Kaggle's archive keeps the files under clicks/, a flat archive works too. The first
    member of an hour counts; unvalidated_files reports the others. A clicks.zip that is a symlink out of raw/
    is not opened, and one that cannot be read holds no hour (unvalidated_files reports both)."""
    if not zip_path.exists() or _refused_link(zip_path, zip_path.parent) is not None:
        return {}
    out: dict[int, str] = {}
    names = _zip_names(zip_path)
    for name in names if isinstance(names, list) else []:
        hour = C.hour_of_file(Path(name).name)
        if hour is not None and not name.endswith("/"):
            out.setdefault(hour, name)
    return out


def _zip_names(zip_path: Path) -> list[str] | str:
    """The member names of a zip, or why it cannot be read (a corrupt archive must not stop the other hours)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        return f"cannot be read as a zip archive ({' '.join(str(e).split())[:120]}): no hour is read from it"


def list_hours(data_root: str | Path, kind: str = CLICKS) -> list[int]:
    """Every hour with a `kind` drop: raw csv files, clicks.zip members (clicks) and drops waiting in quarantine.

    An article drop counts once its csv is there: the csv is written last (after the embeddings), so an
    hour with only its pickle is still arriving.
    """
    root = Path(data_root)
    hours: set[int] = set()
    landing = raw_dir(root, kind)
    if landing.is_dir():
        hours |= {h for f in landing.iterdir() if (h := C.hour_of_file(f.name, kind)) is not None}
    if kind == CLICKS:
        hours |= set(_zip_members(landing_dir(root) / C.CLICKS_ZIP))
    qroot = root / QUARANTINE / kind
    if qroot.is_dir():
        for d in qroot.glob(f"{C.HOUR}=*"):
            hour = partition_hour(d.name)
            if hour is not None and _present(d / C.hour_file_name(hour, kind)):
                hours.add(hour)
    return sorted(hours)


def unvalidated_files(data_root: str | Path) -> list[dict[str, str]]:
    """Every file of the landing area that no hour reads, each with the reason (`path`, `reason`): misnamed
    hourly files (`clicks_hour_50.csv`, `clicks_hour_0050.csv`, `.CSV`, non-ASCII digits), a second spelling
    beside the canonical name, other files, embeddings waiting for their csv, clicks.zip members that are no
    hourly file or repeat an hour, a clicks.zip that is a symlink out of raw/ (not opened). Only names are
    looked at. The run reports them in `_summary.json` (`unvalidated_files`)."""
    root = Path(data_root)
    raw = landing_dir(root)
    out: list[dict[str, str]] = []
    readable = {CLICKS: (CLICKS,), ARTICLES: ARTICLE_FILES}
    for kind in KINDS:
        folder = raw / kind
        if not folder.is_dir():
            continue
        names = sorted(os.listdir(folder))
        for name in names:
            path = folder / name
            parsed = C.parse_hour_file_name(name)
            if parsed is not None and parsed[0] in readable[kind] and not path.is_dir():
                csv_name = C.hour_file_name(parsed[1], ARTICLES)
                if parsed[0] == C.EMBEDDINGS_HOUR and csv_name not in names:
                    out.append({"path": _rel(path, root), "reason": f"embeddings without {csv_name}: the article "
                                                                   "drop is not complete, not validated yet"})
                continue
            if parsed is not None:
                reason = f"an hourly {parsed[0]} file in raw/{kind}/, not read there"
            elif path.is_dir():
                reason = "a folder, not read"
            elif _TEMP_FILE.match(name):
                reason = "the temporary file of a write in progress (or interrupted)"
            else:
                meant, hour, reason = C.misnamed_hour_file(name)
                if hour is not None and meant is not None and C.hour_file_name(hour, meant) in names:
                    reason += f"; a second spelling beside {C.hour_file_name(hour, meant)}, which is the one read"
            out.append({"path": _rel(path, root), "reason": reason})
    zip_path = raw / C.CLICKS_ZIP
    if _present(zip_path):
        why = _refused_link(zip_path, raw)
        if why is not None:
            out.append({"path": _rel(zip_path, root), "reason": f"{why}: refused, not opened"})
        elif isinstance(names := _zip_names(zip_path), str):
            out.append({"path": _rel(zip_path, root), "reason": names})
        else:
            read = _zip_members(zip_path)
            for name in names:
                hour = C.hour_of_file(Path(name).name)
                if name.endswith("/") or (hour is not None and read.get(hour) == name):
                    continue
                where = f"{_rel(zip_path, root)}:{name}"
                if hour is not None:
                    reason = f"hour {hour} again: only {read[hour]} is read"
                else:
                    reason = C.misnamed_hour_file(Path(name).name)[2]
                out.append({"path": where, "reason": reason})
    return out


def list_all_hours(data_root: str | Path) -> list[int]:
    """Every hour with a drop of either kind."""
    return sorted(set().union(*(list_hours(data_root, kind) for kind in KINDS)))


def find_drop(data_root: str | Path, hour: int, kind: str = CLICKS) -> Drop:
    """The drop to validate for `hour`. Clicks: raw/clicks first, then clicks.zip, then an earlier quarantine.
    Articles: each file from raw/articles, else from the hour's quarantine (the pickle may be missing)."""
    root = Path(data_root)
    if kind == ARTICLES:
        found = []
        for file_kind in ARTICLE_FILES:
            name = C.hour_file_name(hour, file_kind)
            where = [raw_dir(root, ARTICLES) / name, quarantine_dir(root, hour, ARTICLES) / name]
            found.append(next((p for p in where if _present(p)), None))
        csv_path, embeddings = found
        if csv_path is None:
            raise MissingInputError(f"no article drop for hour {hour}: looked for "
                                    f"{root / 'raw' / ARTICLES / C.hour_file_name(hour, ARTICLES)} and "
                                    f"{quarantine_dir(root, hour, ARTICLES)}")
        return Drop(hour, csv_path, kind=ARTICLES, embeddings=embeddings)
    csv_path = raw_dir(root) / C.hour_file_name(hour)
    if _present(csv_path):
        return Drop(hour, csv_path)
    member = _zip_members(landing_dir(root) / C.CLICKS_ZIP).get(hour)
    if member is not None:
        return Drop(hour, landing_dir(root) / C.CLICKS_ZIP, member)
    quarantined = quarantine_dir(root, hour) / C.hour_file_name(hour)
    if _present(quarantined):
        return Drop(hour, quarantined)
    raise MissingInputError(
        f"no drop for hour {hour}: looked for {csv_path}, {root / 'raw' / C.CLICKS_ZIP} and {quarantined}")


# --------------------------------------------------------------------------------------------- reading


def parse_csv(data: bytes, required: Sequence[str]) -> Parsed:
    """Read a Globo csv with every value as a string, then type the required columns as integers.

    Problems are `(check, detail)` pairs: `empty_file`, `parse` (unparseable or truncated), `schema`
    (required columns missing, a column named twice, a header far wider than the contract) and `dtypes`
    (values that are not int64 integers written in plain decimal: `0x13` and `+942` are refused).
    Columns beyond `required` are kept as strings for the suite's schema check to name. A null (empty
    field) is not a parse problem: the column becomes nullable Int64 and the suite counts the nulls.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    if not data:
        return Parsed(None, [("empty_file", "empty file: 0 bytes, not even a header line")])
    first_line = data.split(b"\n", 1)[0].rstrip(b"\r")
    limit = len(required) + MAX_EXTRA_COLUMNS
    if first_line.count(b",") >= limit:
        return Parsed(None, [("schema", (f"header has {first_line.count(b',') + 1:,} columns, far more than the "
                                        f"{len(required)} of the contract (at most {limit} read): not parsed"))])
    try:
        names = next(csv.reader([first_line.decode("utf-8-sig")]), [])
    except (UnicodeDecodeError, csv.Error) as e:
        return Parsed(None, [("parse", f"unparseable header line: {e}")])
    names = [n.strip() for n in names]
    problems: list[tuple[str, str]] = []
    dup = sorted(n for n, count in Counter(names).items() if count > 1)
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
        # Only plain decimal integers: Arrow's cast would read `0x13` as 19 and refuse `+942`.
        not_int = pc.fill_null(pc.invert(pc.match_substring_regex(col, _INTEGER)), False)
        bad = pc.filter(col, not_int)
        if len(bad):
            samples = [str(v) for v in pc.unique(bad).to_pylist()[:3]]
            problems.append(("dtypes", (f"{name}: {len(bad)} values are not integers written in plain decimal "
                                       f"(ASCII digits, an optional leading minus), e.g. {samples}")))
            continue
        try:
            ints = pc.cast(col, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            problems.append(("dtypes", f"{name}: integers outside the int64 range"))
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


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused: the pickle names {module}.{name}, not only a numpy array")
        return super().find_class(module, name)


def load_embeddings(data: bytes) -> np.ndarray:
    """An embeddings pickle (Globo format: a pickled numpy array) read without running foreign code.

    Only numpy's array reconstruction may be named inside; anything else raises pickle.UnpicklingError.
    """
    obj = _ArrayUnpickler(io.BytesIO(data)).load()
    if not isinstance(obj, np.ndarray):
        raise pickle.UnpicklingError(f"the pickle holds a {type(obj).__name__}, not a numpy array")
    return obj


def embedding_problems(data: bytes | None, rows: int | None) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
    """An article drop's embeddings as float32 [rows, 250], or the problems (check `embeddings`) that stop it.

    `data` is the pickle (None: not delivered), `rows` the csv's rows (None when the csv could not be read).
    """
    if data is None:
        return None, [("embeddings", "embeddings missing: no embeddings pickle beside the csv")]
    try:
        matrix = load_embeddings(data)
    except Exception as e:  # noqa: BLE001 - a drop can hold any bytes: every way unpickling fails is one verdict
        msg = " ".join(str(e).split())[:200]
        return None, [("embeddings", f"unreadable embeddings pickle: {type(e).__name__}: {msg}")]
    problems = []
    if not np.issubdtype(matrix.dtype, np.floating):
        problems.append(("embeddings", f"embeddings are {matrix.dtype}, not floats"))
    if matrix.ndim != 2 or matrix.shape[1] != C.EMBEDDING_DIM:
        expected = f"[rows, {C.EMBEDDING_DIM}]"
        problems.append(("embeddings", f"embeddings have shape {list(matrix.shape)}, expected {expected}"))
    elif rows is not None and matrix.shape[0] != rows:
        problems.append(("embeddings", f"{matrix.shape[0]} embedding rows for {rows} csv rows"))
    if problems:
        return None, problems
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        rows_eg = np.flatnonzero(bad)[:3].tolist()
        return None, [("embeddings", f"{int(bad.sum())} embedding rows are not finite (NaN or inf), e.g. rows {rows_eg}")]
    return matrix, []


def _in_sorted(values: np.ndarray, *id_sets: np.ndarray) -> np.ndarray:
    """Which `values` are in any of the sorted id arrays."""
    found = np.zeros(len(values), dtype=bool)
    for ids in id_sets:
        if len(ids):
            pos = np.searchsorted(ids, values).clip(max=len(ids) - 1)
            found |= ids[pos] == values
    return found


def _id_column(ids: pd.Series, flag: np.ndarray) -> pd.arrays.IntegerArray:
    """The id where `flag` holds (and the id is present), null elsewhere: a check column for the suites."""
    values = ids.to_numpy(dtype=np.int64, na_value=0)
    keep = ids.notna().to_numpy() & flag
    out = pd.array(np.where(keep, values, 0), dtype="Int64")
    out[~keep] = pd.NA
    return out


def with_check_columns(frame: pd.DataFrame, article_ids: np.ndarray, *more_ids: np.ndarray) -> pd.DataFrame:
    """The frame GX sees: the drop plus the two columns the suite needs context for (see columns.py).

    The catalogue is `article_ids` and `more_ids` together, each sorted (the metadata, landed article drops).
    """
    out = frame.copy()
    out[C.SESSION_ROWS] = out.groupby(C.SESSION_ID, dropna=False, sort=False)[C.SESSION_ID] \
        .transform("size").astype(np.int64)
    ids = out[C.CLICK_ARTICLE_ID]
    known = _in_sorted(ids.to_numpy(dtype=np.int64, na_value=0), article_ids, *more_ids)
    out[C.UNKNOWN_ARTICLE_ID] = _id_column(ids, ~known)
    return out


def with_article_check_columns(frame: pd.DataFrame, *catalogue_ids: np.ndarray) -> pd.DataFrame:
    """The frame GX sees for an article drop: the drop plus `catalogued_article_id` (see columns.py).

    `catalogue_ids` are sorted arrays of the ids the catalogue already holds without this hour's drop.
    """
    out = frame.copy()
    ids = out[C.ARTICLE_ID]
    out[C.CATALOGUED_ARTICLE_ID] = _id_column(ids, _in_sorted(ids.to_numpy(dtype=np.int64, na_value=0),
                                                              *catalogue_ids))
    return out


# --------------------------------------------------------------------------------------------- checks


def volume_reference(landed_rows: Mapping[int, int], hour: int, settings: Settings,
                     earlier_drops: bool = True) -> VolumeReference | None:
    """The bound on `hour`'s rows (module docstring): the tighter of the two references when either exists,
    else the busiest of the landed hours there are, else the floor; None only for the first hour of a dataset
    (`earlier_drops` False: no earlier hour arrived at all) or with no history and no floor.

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
        # Thin history (the first day, or hours lost to quarantine) still bounds a spike: the busiest recent
        # landed hour, so that a morning ramp measured against the night before it passes.
        recent = tuple(sorted(h for h in landed_rows if h < hour and landed_rows[h] > 0)[-settings.volume_window_hours:])
        if recent:
            refs.append((float(max(landed_rows[h] for h in recent)), recent,
                         (f"the busiest of {len(recent)} landed hours, fewer than the "
                         f"{settings.volume_min_history} a median needs")))
    if not refs:
        if not earlier_drops or settings.volume_floor_rows <= 0:
            return None
        return VolumeReference(settings.volume_floor_rows, settings.volume_max_ratio, 0.0, (),
                               "no landed hour before it to compare with", settings.volume_floor_rows)
    median, hours, basis = min(refs, key=lambda r: r[0])
    # A small stream swings by more than the ratio from one hour to the next (a real morning ramp at 30 -> 160
    # clicks): below the floor no volume is a spike.
    bound = max(int(settings.volume_max_ratio * median), settings.volume_floor_rows)
    return VolumeReference(bound, settings.volume_max_ratio, median, hours, basis, settings.volume_floor_rows)


def expectation_parameters(hour: int, epoch_ms: int, settings: Settings, volume: VolumeReference | None,
                           min_session_size: int = C.GLOBO_MIN_SESSION_SIZE) -> dict[str, Any]:
    """The `$PARAMETER`s of suite `clicks_hour` for one hour (min_session_size: see declared_min_session_size)."""
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
        "min_session_size": int(min_session_size),
    }


def article_parameters(hour: int, epoch_ms: int) -> dict[str, Any]:
    """The `$PARAMETER`s of suite `articles_hour` for one hour."""
    return {"hour_last_ms": epoch_ms + (hour + 1) * C.HOUR_MS - 1}


def declared_min_session_size(raw_dir: str | Path) -> int:
    """The smallest session the dataset's source can have: Globo's 2, unless `newsrec import` wrote another in
    raw/import.json (MIND sittings often hold one click, and an import never invents clicks to reach 2)."""
    path = Path(raw_dir) / C.IMPORT_FILE
    if not path.is_file():
        return C.GLOBO_MIN_SESSION_SIZE
    try:
        value = json.loads(path.read_text()).get(C.MIN_SESSION_SIZE, C.GLOBO_MIN_SESSION_SIZE)
    except (json.JSONDecodeError, AttributeError) as e:
        raise MetadataError(f"{path}: not a JSON object ({e})") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MetadataError(f"{path}: {C.MIN_SESSION_SIZE} must be an integer >= 1, got {value!r}")
    return value


def open_gx_context(gx_dir: str | Path, runtime_dir: str | Path) -> Any:
    """The committed GX file context, with its results store and data docs under `runtime_dir`."""
    import great_expectations as gx

    gx_dir = Path(gx_dir)
    if not (gx_dir / "great_expectations.yml").exists():
        raise MissingInputError(f"no GX project at {gx_dir} (great_expectations.yml missing)")
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
        return (f"{n} clicks on articles not in the metadata nor in an article drop landed for this hour or "
                f"earlier, e.g. {sorted(set(sample))[:5]}")
    if kind == "expect_column_values_to_be_null" and col == C.CATALOGUED_ARTICLE_ID:
        return (f"{n} article ids already in the catalogue (the metadata or another hour's article drop), "
                f"e.g. {sorted(set(sample))[:5]}")
    if kind == "expect_column_values_to_be_unique":
        return f"{col}: {n} rows share their id with another row, e.g. {sorted(set(sample))[:5]}"
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
        is_time = col in (C.CLICK_TIMESTAMP, C.SESSION_START, C.CREATED_AT_TS)
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


def _archive_slot(data_root: str | Path, hour: int, kind: str, status: str, written: Path) -> Path:
    """A fresh folder name in the hour's archive for the version `written` (its time names it)."""
    stamp = datetime.fromtimestamp(written.stat().st_mtime, tz=UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    base = archive_dir(data_root, hour, kind)
    slot, n = base / f"{status}-{stamp}", 1
    while _present(slot):
        slot, n = base / f"{status}-{stamp}-{n}", n + 1
    return slot


def _folder_files(folder: Path, skip: Sequence[str] = ()) -> dict[str, bytes | str]:
    """name -> bytes of a folder's files (a symlink: its target, unread), leaving out `skip` and hidden names."""
    out: dict[str, bytes | str] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.name in skip or p.name.startswith("."):
                continue
            out[p.name] = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else ""
    return out


def land(frame: pd.DataFrame, data_root: str | Path, hour: int) -> tuple[Path, Path | None]:
    """Write the 12 click columns as int64 to the hour's partition (temp file, then rename); the partition
    file and, when an earlier different version was there, the archive folder it was moved to."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = partition_dir(data_root, hour) / PART_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({c: pa.array(frame[c].to_numpy(dtype=np.int64), type=pa.int64()) for c in C.CLICK_COLUMNS})
    tmp = target.with_name(f".{PART_FILE}.{os.getpid()}.tmp")
    archived = None
    try:
        pq.write_table(table, tmp)
        if target.exists() and target.read_bytes() != tmp.read_bytes():
            # A re-delivery that differs: the version it replaces goes to the archive, not away.
            archived = _archive_slot(data_root, hour, CLICKS, LANDED, target)
            archived.mkdir(parents=True)
            os.replace(target, archived / PART_FILE)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target, archived


def land_articles(frame: pd.DataFrame, embeddings: np.ndarray, data_root: str | Path,
                  hour: int) -> tuple[Path, Path | None]:
    """Write an article drop's partition: the 5 metadata columns as int64 and `embeddings.npy` (float32, row j =
    the parquet's row j), built in a temporary folder and swapped in whole, so a reader sees both or neither.
    The partition and, when an earlier different version was there, the archive folder it was moved to."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = partition_dir(data_root, hour, ARTICLES)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    archived = None
    try:
        table = pa.table({c: pa.array(frame[c].to_numpy(dtype=np.int64), type=pa.int64())
                          for c in C.METADATA_COLUMNS})
        pq.write_table(table, tmp / PART_FILE)
        np.save(tmp / C.EMBEDDINGS_PART, np.ascontiguousarray(embeddings, dtype=np.float32), allow_pickle=False)
        if target.exists() and _folder_files(target) != _folder_files(tmp):
            archived = _archive_slot(data_root, hour, ARTICLES, LANDED, target / PART_FILE)
        _swap_dir(tmp, target, archived)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, archived


def _swap_dir(new: Path, target: Path, archive_to: Path | None = None) -> None:
    """Put folder `new` at `target`; the older one goes to `archive_to` (None: deleted, it held the same files)
    only once replaced. A crash between the renames leaves `.hour=NNN.old-PID` beside it, which
    recover_interrupted puts back (or archives) at the next run."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if not old.exists():
        return
    if archive_to is None:
        shutil.rmtree(old, ignore_errors=True)
    else:
        archive_to.parent.mkdir(parents=True, exist_ok=True)
        os.replace(old, archive_to)


def quarantine(drop: Drop, files: Mapping[str, bytes], data_root: str | Path, result: Mapping[str, Any],
               reason: str, links: Mapping[str, str] | None = None) -> Path:
    """Move the drop whole (`files`: its file names and bytes; `links`: names of refused symlinks and where they
    point, recreated unread) into the hour's quarantine folder beside result.json and reason.txt. A different
    drop quarantined there before goes to the archive."""
    target = quarantine_dir(data_root, drop.hour, drop.kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    links = dict(links or {})
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        for name, link in links.items():
            os.symlink(link, tmp / name)
        (tmp / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str) + "\n")
        (tmp / REASON_FILE).write_text(reason.replace("\n", " ") + "\n")
        archived = None
        if target.exists() and _folder_files(target, (RESULT_FILE, REASON_FILE)) != {**files, **links}:
            archived = _archive_slot(data_root, drop.hour, drop.kind, QUARANTINED, target / REASON_FILE)
        _swap_dir(tmp, target, archived)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Only now is the drop safe in quarantine; a zip member stays where it is (the archive is the raw record).
    for path in drop.local_files():
        if path.parent.resolve() != target.resolve():
            path.unlink(missing_ok=True)
    return target


_LEFTOVER = re.compile(r"^\.(hour=[0-9]+)\.(old|tmp)-([0-9]+)$")
_TEMP_FILE = re.compile(r"^\..+\.pid([0-9]+)\.[^.]*\.tmp$")  # pipelines.fileio.atomic_write's temporaries


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers are from a swap that already ended (or failed)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(data_root: str | Path) -> list[str]:
    """Repair what a killed run left behind; one line per repair.

    A crash between the two renames of _swap_dir leaves a partition or quarantine folder only as
    `.hour=NNN.old-PID`: it goes back in place (or, when the new one did arrive, to the archive unless it holds
    the same files). Temporary copies (`.hour=NNN.tmp-PID`, `.part-0.parquet.PID.tmp`, atomic_write's temps)
    are deleted: the drop they copy is still in raw/ or in the folder put back. Leftovers of a process still
    running are not touched.
    """
    root = Path(data_root)
    done: list[str] = []
    for area in (VALIDATED, QUARANTINE):
        for kind in KINDS:
            base = root / area / kind
            if not base.is_dir():
                continue
            for d in sorted(base.iterdir()):
                m = _LEFTOVER.match(d.name)
                if m is None or _pid_alive(int(m.group(3))):
                    continue
                target = base / m.group(1)
                hour = int(m.group(1).split("=", 1)[1])
                try:
                    if m.group(2) == "tmp":
                        shutil.rmtree(d)
                        done.append(f"removed the temporary copy {_rel(d, root)}")
                    elif not target.exists():
                        os.replace(d, target)
                        done.append(f"put {_rel(target, root)} back from {d.name} (a run stopped mid-swap)")
                    elif _folder_files(d, (RESULT_FILE, REASON_FILE)) == _folder_files(target, (RESULT_FILE, REASON_FILE)):
                        shutil.rmtree(d)
                        done.append(f"removed {_rel(d, root)}, the same files as {_rel(target, root)}")
                    else:
                        status = LANDED if area == VALIDATED else QUARANTINED
                        newest = max((p for p in d.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime,
                                     default=d)
                        slot = _archive_slot(root, hour, kind, status, newest)
                        slot.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(d, slot)
                        done.append(f"archived the replaced {_rel(target, root)} as {_rel(slot, root)}")
                except OSError:
                    continue  # another run got there first
            temps = [*base.glob(f"{C.HOUR}=*/.{PART_FILE}.*.tmp")] if area == VALIDATED else []
            for f in temps:
                m = re.match(rf"^\.{re.escape(PART_FILE)}\.([0-9]+)\.tmp$", f.name)
                if m and not _pid_alive(int(m.group(1))):
                    f.unlink(missing_ok=True)
                    done.append(f"removed the temporary file {_rel(f, root)}")
    for folder in (raw_dir(root, CLICKS), raw_dir(root, ARTICLES), root / VALIDATED):
        if folder.is_dir():
            for f in folder.glob(".*.tmp"):
                m = _TEMP_FILE.match(f.name)
                if m and f.is_file() and not _pid_alive(int(m.group(1))):
                    f.unlink(missing_ok=True)
                    done.append(f"removed the temporary file {_rel(f, root)}")
    return done


def _tally(hours: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Totals of one kind's outcomes, followed by the outcomes themselves."""
    hours = dict(sorted(hours.items()))
    statuses = [h["status"] for h in hours.values()]
    return {
        "hours_total": len(hours),
        LANDED: statuses.count(LANDED),
        QUARANTINED: statuses.count(QUARANTINED),
        UNREADABLE: statuses.count(UNREADABLE),
        "rows_landed": sum(h["rows"] or 0 for h in hours.values() if h["status"] == LANDED),
        "quarantined_hours": [int(k) for k, h in hours.items() if h["status"] == QUARANTINED],
        "unreadable_hours": [int(k) for k, h in hours.items() if h["status"] == UNREADABLE],
        "hours": hours,
    }


def update_summary(data_root: str | Path, results: Sequence[HourResult], epoch_ms: int,
                   unvalidated: Sequence[Mapping[str, str]] | None = None) -> Path:
    """Merge these hours' outcomes into `_summary.json` (under a lock: hourly tasks may run side by side).

    Click drops are at the top level (`hours`, totals); article drops under `article_drops`, the same shape;
    `unvalidated_files` (see unvalidated_files) is replaced when given, else kept.
    """
    path = summary_path(data_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{SUMMARY_FILE}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = json.loads(path.read_text()) if path.exists() else {}
        hours = summary.get("hours", {})
        article_hours = summary.get("article_drops", {}).get("hours", {})
        for r in results:
            (article_hours if r.kind == ARTICLES else hours)[f"{r.hour:03d}"] = r.to_dict()
        files = summary.get("unvalidated_files", []) if unvalidated is None else list(unvalidated)
        summary = {"epoch_ms": epoch_ms, **_tally(hours)}
        if article_hours:
            summary["article_drops"] = _tally(article_hours)
        summary["unvalidated_files"] = files
        atomic_write_bytes(path, (json.dumps(summary, indent=2) + "\n").encode())
    return path


def landed_article_ids(data_root: str | Path) -> dict[int, np.ndarray]:
    """hour -> sorted article ids of every landed article drop (`validated/articles/hour=NNN/`)."""
    import pyarrow.parquet as pq

    out: dict[int, np.ndarray] = {}
    base = validated_dir(data_root, ARTICLES)
    if base.is_dir():
        for part in base.glob(f"{C.HOUR}=*/{PART_FILE}"):
            hour = partition_hour(part.parent.name)
            if hour is not None:
                ids = pq.read_table(part, columns=[C.ARTICLE_ID]).column(0).to_numpy()
                out[hour] = np.sort(ids.astype(np.int64, copy=False))
    return out


def _landed_rows(data_root: Path) -> dict[int, int]:
    import pyarrow.parquet as pq

    out: dict[int, int] = {}
    base = validated_dir(data_root)
    if base.is_dir():
        for part in base.glob(f"{C.HOUR}=*/{PART_FILE}"):
            hour = partition_hour(part.parent.name)
            if hour is not None:
                out[hour] = pq.ParquetFile(part).metadata.num_rows
    return out


# --------------------------------------------------------------------------------------------- validation


def _found(data_root: Path, hour: int, kind: str) -> bool:
    try:
        find_drop(data_root, hour, kind)
    except FileNotFoundError:
        return False
    return True


def _refuse_reserved(parsed: Parsed, reserved: Sequence[str]) -> Parsed:
    """A drop column named like a check column is a schema failure: the suite would not see it, overwritten."""
    clash = [c for c in reserved if parsed.frame is not None and c in parsed.frame.columns]
    if not clash:
        return parsed
    return Parsed(None, [("schema", f"unexpected columns {clash} (names validation reserves)")], parsed.rows)


class HourValidator:
    """Everything that is built once per process: the GX context, the catalogue's ids, the landed volumes."""

    def __init__(self, data_root: str | Path, *, epoch_ms: int, settings: Settings, gx_dir: str | Path):
        self.root = Path(data_root)
        self.epoch_ms = int(epoch_ms)
        self.settings = settings
        self.recovered = recover_interrupted(self.root)  # before anything is listed: a killed run's leftovers
        for line in self.recovered:
            logging.getLogger(__name__).warning("recovered: %s", line)
        self.context = open_gx_context(gx_dir, self.root / GX_RUNTIME_DIR)
        self.article_ids = load_article_ids(landing_dir(self.root) / C.METADATA_FILE, self.context)
        self.drop_ids = landed_article_ids(self.root)  # hour -> ids of its landed article drop
        self.landed_rows = _landed_rows(self.root)
        self.min_session_size = declared_min_session_size(landing_dir(self.root))
        # Every hour known to have had a drop (landed, quarantined or waiting): the volume check's "first hour".
        self.seen_hours = set(self.landed_rows) | set(list_all_hours(self.root))

    def _drop_ids(self, keep: Any) -> np.ndarray:
        """Sorted ids of the landed article drops whose hour passes `keep`."""
        parts = [ids for h, ids in self.drop_ids.items() if keep(h)]
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)

    def validate_drops(self, hour: int) -> list[HourResult]:
        """Validate the hour's article drop (when there is one), then its click drop (when there is one).

        Raises FileNotFoundError when the hour has neither.
        """
        kinds = [k for k in KINDS if _found(self.root, hour, k)]
        if not kinds:
            find_drop(self.root, hour)  # raises, naming where it looked
        return [self._validate_kind(hour, k) for k in kinds]

    def _validate_kind(self, hour: int, kind: str) -> HourResult:
        """One drop's outcome; an unreadable drop is reported (UNREADABLE), not raised, so later hours go on."""
        try:
            return self.validate_articles(hour) if kind == ARTICLES else self.validate(hour)
        except DropUnreadable as e:
            return HourResult(hour, UNREADABLE, None, ("read",), str(e), e.path, e.path, kind,
                              self._landed_version(hour, kind))

    def _read(self, drop: Drop, names: Sequence[str]) -> tuple[dict[str, bytes], dict[str, str], list[tuple[str, str]]]:
        """The drop's files (`names`, in Drop order; a pickle may be absent) as name -> bytes, and the symlinks
        refused unread (name -> where they point) with their problems (check `symlink`)."""
        files: dict[str, bytes] = {}
        links: dict[str, str] = {}
        problems: list[tuple[str, str]] = []
        landing = landing_dir(self.root)
        paths = [drop.path, drop.embeddings]
        for name, path in zip(names, paths, strict=False):
            if path is None:
                continue
            why = _refused_link(path, landing) if drop.member is None else None
            try:
                if why is not None:
                    links[name] = os.readlink(path)
                    problems.append(("symlink", f"{path.name} is {why}: refused, not read"))
                elif drop.member is not None or path == drop.path:
                    files[name] = drop.read_bytes()
                else:
                    files[name] = path.read_bytes()
            except OSError as e:
                raise DropUnreadable(_rel(path, self.root), e) from e
        return files, links, problems

    def validate(self, hour: int) -> HourResult:
        """Validate one hour's click drop, then land or quarantine it."""
        if hour < 0:
            raise InputError(f"hour must be >= 0, got {hour}")
        drop = find_drop(self.root, hour)
        source = drop.describe(self.root)
        files, links, refused = self._read(drop, [C.hour_file_name(hour)])
        if refused:
            return self._reject_parse(drop, files, source, refused, None, links)
        data = files[C.hour_file_name(hour)]
        parsed = _refuse_reserved(parse_csv(data, C.CLICK_COLUMNS), CHECK_COLUMNS)
        if parsed.frame is None:
            return self._reject_parse(drop, files, source, parsed.problems, parsed.rows)

        earlier = any(h < hour for h in self.seen_hours)
        volume = volume_reference(self.landed_rows, hour, self.settings, earlier)
        params = expectation_parameters(hour, self.epoch_ms, self.settings, volume, self.min_session_size)
        # Articles of this hour's drop and earlier ones count: an article is clicked after it was dropped.
        frame = with_check_columns(parsed.frame, self.article_ids, self._drop_ids(lambda h: h <= hour))
        result = run_checkpoint(self.context, CLICKS_SUITE, frame, params, run_name=f"hour={hour:03d}")
        result.setdefault("meta", {})["newsrec"] = {
            "hour": hour, "source": source, "expectation_parameters": params,
            "volume_reference": None if volume is None else asdict(volume),
        }
        rows = len(frame)
        if not result["success"]:
            failures = failed_checks(result, volume)
            return self._reject(drop, files, source, result, _reason(result, volume), tuple(failures), rows)

        target, archived = land(parsed.frame, self.root, hour)
        self.landed_rows[hour] = rows
        source = self._back_to_raw(drop, files, source)
        notes = ["empty hour: header only, no clicks"] if rows == 0 else []
        if volume is None:
            notes.append("volume not judged: " + ("the first hour, nothing before it to compare with" if not earlier
                                                  else "no landed hour before it and no volume_floor_rows"))
        if archived is not None:
            notes.append(f"replaced an earlier landed version, kept in {_rel(archived, self.root)}")
        note = "; ".join(notes)
        return HourResult(hour, LANDED, rows, (), note, _rel(target, self.root), source)

    def validate_articles(self, hour: int) -> HourResult:
        """Validate one hour's article drop (csv + embeddings), then land or quarantine it."""
        if hour < 0:
            raise InputError(f"hour must be >= 0, got {hour}")
        drop = find_drop(self.root, hour, ARTICLES)
        source = drop.describe(self.root)
        csv_name, emb_name = C.hour_file_name(hour, ARTICLES), C.hour_file_name(hour, C.EMBEDDINGS_HOUR)
        files, links, refused = self._read(drop, [csv_name, emb_name])
        if refused:
            return self._reject_parse(drop, files, source, refused, None, links)
        data, emb_data = files[csv_name], files.get(emb_name)
        parsed = _refuse_reserved(parse_csv(data, C.METADATA_COLUMNS), ARTICLE_CHECK_COLUMNS)
        embeddings, emb_problems = embedding_problems(emb_data, parsed.rows)
        if parsed.frame is None or emb_problems:
            return self._reject_parse(drop, files, source, parsed.problems + emb_problems, parsed.rows)

        params = article_parameters(hour, self.epoch_ms)
        # A re-delivery replaces its hour: only the static metadata and the other hours' drops are taken.
        frame = with_article_check_columns(parsed.frame, self.article_ids, self._drop_ids(lambda h: h != hour))
        result = run_checkpoint(self.context, ARTICLES_SUITE, frame, params, run_name=f"articles hour={hour:03d}")
        result.setdefault("meta", {})["newsrec"] = {"hour": hour, "source": source,
                                                    "expectation_parameters": params}
        rows = len(frame)
        if not result["success"]:
            return self._reject(drop, files, source, result, _reason(result, None), tuple(failed_checks(result)),
                                rows)

        target, archived = land_articles(parsed.frame, embeddings, self.root, hour)
        self.drop_ids[hour] = np.sort(parsed.frame[C.ARTICLE_ID].to_numpy(dtype=np.int64))
        source = self._back_to_raw(drop, files, source)
        notes = ["no new articles: header only"] if rows == 0 else []
        if archived is not None:
            notes.append(f"replaced an earlier landed version, kept in {_rel(archived, self.root)}")
        return HourResult(hour, LANDED, rows, (), "; ".join(notes), _rel(target, self.root), source, ARTICLES)

    def _back_to_raw(self, drop: Drop, files: Mapping[str, bytes], source: str) -> str:
        """After landing: a drop that failed before and now passes goes back to raw/, where every accepted drop
        lives, and its stale quarantine folder goes (to the archive when it held another drop). The source as
        it reads now."""
        stale = quarantine_dir(self.root, drop.hour, drop.kind)
        from_quarantine = [p for p in drop.local_files() if p.parent.resolve() == stale.resolve()]
        for path in from_quarantine:
            atomic_write_bytes(raw_dir(self.root, drop.kind) / path.name, files[path.name])
        if stale.exists():
            if _folder_files(stale, (RESULT_FILE, REASON_FILE)) == dict(files):
                shutil.rmtree(stale, ignore_errors=True)
            else:
                slot = _archive_slot(self.root, drop.hour, drop.kind, QUARANTINED, stale / REASON_FILE)
                slot.parent.mkdir(parents=True, exist_ok=True)
                os.replace(stale, slot)
        return find_drop(self.root, drop.hour, drop.kind).describe(self.root) if from_quarantine else source

    def _reject_parse(self, drop: Drop, files: Mapping[str, bytes], source: str, problems: list[tuple[str, str]],
                      rows: int | None, links: Mapping[str, str] | None = None) -> HourResult:
        reason = "; ".join(f"{c}: {d}" for c, d in problems)
        checks = tuple(dict.fromkeys(c for c, _ in problems))
        return self._reject(drop, files, source, _parse_result(problems, rows), reason, checks, rows, links)

    def _landed_version(self, hour: int, kind: str) -> str:
        """The hour's landed partition (relative to the root) when one is there, which a failed drop leaves; else ""."""
        landed = partition_dir(self.root, hour, kind)
        return _rel(landed, self.root) if (landed / PART_FILE).exists() else ""

    def _reject(self, drop: Drop, files: Mapping[str, bytes], source: str, result: Mapping[str, Any], reason: str,
                checks: tuple[str, ...], rows: int | None, links: Mapping[str, str] | None = None) -> HourResult:
        """Quarantine the drop. A partition landed from an earlier delivery of the hour stays: a bad re-delivery
        never removes good data (a good one replaces it, archiving it)."""
        target = quarantine(drop, files, self.root, result, reason, links)
        kept = self._landed_version(drop.hour, drop.kind)
        return HourResult(drop.hour, QUARANTINED, rows, checks, reason, _rel(target, self.root), source, drop.kind,
                          kept)

    def build_docs(self) -> Path:
        """Build the GX data docs of every stored result; the index page's path."""
        return build_gx_docs(self.context, self.root / GX_RUNTIME_DIR)


def build_gx_docs(context: Any, runtime_dir: Path) -> Path:
    """Build the data docs of every result in `context`'s store under `runtime_dir`/docs, loading their scripts,
    styles and images from the site itself (pipelines.offline_pages), so they open without internet."""
    from pipelines.offline_pages import localise_site

    context.build_data_docs()
    localise_site(runtime_dir / "docs")
    return runtime_dir / "docs" / "index.html"


def stage(raw_uri: str, data_root: str | Path, hours: Sequence[int] | None = None) -> list[Path]:
    """Copy the side files and the drops of `hours` (None: every hour with a drop there, of either kind) from
    the raw location `raw_uri` into `<data_root>/raw/`."""
    from pipelines import storage

    if hours is None:
        hours = sorted({h for kind in KINDS for h in storage.hours_available(raw_uri, kind=kind)})
    return storage.stage_raw(raw_uri, data_root, hours)


def validate_hour_drops(data_root: str | Path, hour: int, *, epoch_ms: int, settings: Settings, gx_dir: str | Path,
                        docs: bool = False, raw_uri: str | None = None) -> list[HourResult]:
    """Validate every drop of one hour (its article drop first, then its click drop; each when there is one),
    land or quarantine each and record them in `_summary.json`.

    `epoch_ms` (params data.epoch_ms), `settings` (params validate) and `gx_dir` come from the caller's
    configuration. Raises MetadataError when the metadata is missing or invalid and FileNotFoundError when the hour has no drop at all. With `raw_uri`
    (e.g. `s3://bucket/prefix`, params `storage.raw_uri`) the drops are first staged from there into raw/.
    """
    if raw_uri:
        stage(raw_uri, data_root, [hour])
    validator = HourValidator(data_root, epoch_ms=epoch_ms, settings=settings, gx_dir=gx_dir)
    results = validator.validate_drops(hour)
    update_summary(data_root, results, epoch_ms, unvalidated_files(data_root))
    if docs:
        validator.build_docs()
    return results


def validate_hour(data_root: str | Path, hour: int, *, epoch_ms: int, settings: Settings, gx_dir: str | Path,
                  docs: bool = False, raw_uri: str | None = None) -> HourResult:
    """Validate one hourly click drop, land or quarantine it and record it in `_summary.json`; its result.

    The hour's article drop, when there is one, is validated first (see validate_hour_drops; its result is in
    `_summary.json`). Raises FileNotFoundError, before validating anything, when the hour has no click drop.
    """
    if raw_uri:
        stage(raw_uri, data_root, [hour])
    find_drop(data_root, hour)
    results = validate_hour_drops(data_root, hour, epoch_ms=epoch_ms, settings=settings, gx_dir=gx_dir, docs=docs)
    return next(r for r in results if r.kind == CLICKS)


def validate_all(data_root: str | Path, hours: Sequence[int] | None = None, *, epoch_ms: int, settings: Settings,
                 gx_dir: str | Path, docs: bool = True, on_result: Any = None,
                 raw_uri: str | None = None) -> list[HourResult]:
    """Validate every hour with a drop (or `hours`), in hour order, in one process and one GX context.

    Each hour's article drop comes before its click drop; the results are in that order. `on_result(HourResult)`
    is called after each drop (the CLI prints a line). `_summary.json` is updated after each hour, so a run
    killed midway leaves it true for the hours it did; files no hour reads are listed there first. Docs are
    built at the end. With `raw_uri`, the hours that landed there (or `hours`) are first staged into raw/.
    """
    if raw_uri:
        stage(raw_uri, data_root, hours)
    validator = HourValidator(data_root, epoch_ms=epoch_ms, settings=settings, gx_dir=gx_dir)
    todo = list_all_hours(data_root) if hours is None else sorted(set(hours))
    update_summary(data_root, [], epoch_ms, unvalidated_files(data_root))
    results = []
    for hour in todo:
        done = validator.validate_drops(hour)
        update_summary(data_root, done, epoch_ms)
        for result in done:
            results.append(result)
            if on_result is not None:
                on_result(result)
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
    reason = f"[article drop] {r.reason}" if r.kind == ARTICLES else r.reason
    if r.kept:
        reason += f" [the earlier landed version stays: {r.kept}]"
    return f"{r.hour:03d}  {rows:>8}  {r.status:<11}  {reason}".rstrip()


def _totals(results: Sequence[HourResult]) -> str:
    """`24 hours: 23 landed (4,107 rows), 1 quarantined`, then the article drops' counts when there were any."""
    parts = []
    for kind, noun, unit in ((CLICKS, "hours", "rows"), (ARTICLES, "article drops", "articles")):
        mine = [r for r in results if r.kind == kind]
        if kind == ARTICLES and not mine:
            continue
        landed = [r for r in mine if r.status == LANDED]
        unreadable = sum(r.status == UNREADABLE for r in mine)
        parts.append(f"{len(mine)} {noun}: {len(landed)} landed ({sum(r.rows or 0 for r in landed):,} {unit}), "
                     f"{len(mine) - len(landed) - unreadable} quarantined"
                     + (f", {unreadable} UNREADABLE (not validated, see above)" if unreadable else ""))
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = step_parser("validate", __doc__, data_root="dataset root holding raw/")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--hour", type=int, metavar="N", help="validate one hour")
    which.add_argument("--all", action="store_true", help="validate every hour with a drop, in order")
    ap.add_argument("--epoch-ms", type=int, help="start of hour 000 in ms (default: params data.epoch_ms)")
    ap.add_argument("--gx-dir", type=Path, help="the GX project (default: params paths.gx)")
    ap.add_argument("--raw-uri", help="stage drops from here (s3://bucket/prefix) into <data-root>/raw first "
                         "(default: params storage.raw_uri; unset: read <data-root>/raw as is)")
    ap.add_argument("--docs", action=argparse.BooleanOptionalAction,
                    help="build GX data docs under <root>/gx/docs at the end (default: params validate.docs)")
    args, config = parse_step(ap, argv)
    cfg = config["validate"]
    args.epoch_ms = int(config["data"]["epoch_ms"]) if args.epoch_ms is None else args.epoch_ms
    args.gx_dir = args.gx_dir or Path(config["paths"]["gx"])
    args.raw_uri = args.raw_uri or config["storage"].get("raw_uri")
    args.docs = bool(cfg["docs"]) if args.docs is None else args.docs

    quiet_gx()
    settings = Settings.from_params(cfg)
    root = Path(args.data_root)
    # Great Expectations takes 10-16 s to start before the first hour's line: say so instead of going quiet
    print("validating with Great Expectations (its start-up takes 10-16 s) ...", file=sys.stderr, flush=True)
    print(f"{'hour':<4}  {'rows':>8}  {'status':<11}  reason")
    if args.raw_uri:
        stage(args.raw_uri, root, None if args.all else [args.hour])
    if args.all:
        if not list_all_hours(root):
            print(f"newsrec validate: no hourly drops under {root / 'raw'}", file=sys.stderr)
            return 1
        results = validate_all(root, epoch_ms=args.epoch_ms, settings=settings, gx_dir=args.gx_dir,
                               docs=args.docs, on_result=lambda r: print(_line(r), flush=True))
    else:
        results = validate_hour_drops(root, args.hour, epoch_ms=args.epoch_ms, settings=settings,
                                      gx_dir=args.gx_dir, docs=args.docs)
        for r in results:
            print(_line(r))
    stray = json.loads(summary_path(root).read_text()).get("unvalidated_files", [])
    for f in stray:
        print(f"not validated: {f['path']}: {f['reason']}")
    print(f"{_totals(results)}" + (f"; {len(stray)} files not validated" if stray else "")
          + f"; summary: {summary_path(root)}"
          + (f"; docs: {root / GX_RUNTIME_DIR / 'docs' / 'index.html'}" if args.docs else ""))
    # a quarantined drop is a decision (the run did its job); an unreadable one is not: a person must look
    return 1 if any(r.status == UNREADABLE for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
