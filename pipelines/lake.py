"""The data root's layout: every path of the lake is built here, and nowhere else.

    <root>/raw/clicks/clicks_hour_NNN.csv              drops as delivered (columns.hour_file_name)
    <root>/raw/articles/articles_hour_NNN.csv (+ embeddings_hour_NNN.pickle)
    <root>/raw/impressions.parquet                     shown articles, clicked or not (imported MIND only)
    <root>/validated/<kind>/hour=NNN/part-0.parquet    landed hours (articles: + embeddings.npy)
    <root>/validated/_summary.json                     the latest outcome of every drop
    <root>/quarantine/<kind>/hour=NNN/                 rejected drops, whole, with result.json and reason.txt
    <root>/archive/<kind>/hour=NNN/                    versions that later deliveries replaced
    <root>/aggregates/<popularity|coclick>/hour=NNN/part-0.parquet
    <root>/erasures.jsonl                              the erasure register (pipelines.erasures)

Partition folders are named `hour=NNN` (columns.partition_name) and read back with `partition_hour`; hour-file
names are written and parsed by columns.hour_file_name / parse_hour_file_name. Stage outputs whose place the
user chooses (features, indexes, the serving index, models) are passed in from params and dvc.yaml.
"""

from __future__ import annotations

from pathlib import Path

from pipelines import columns as C
from pipelines.errors import InputError, MissingInputError

PART_FILE = "part-0.parquet"
SUMMARY_FILE = "_summary.json"
RAW = "raw"
VALIDATED = "validated"
QUARANTINE = "quarantine"
ARCHIVE = "archive"
AGGREGATES = "aggregates"
ERASURE_REGISTER = "erasures.jsonl"
IMPRESSIONS_FILE = "impressions.parquet"


def landing_dir(data_root: str | Path) -> Path:
    """`<root>/raw`: the landing area (metadata, embeddings, clicks.zip, and the drop folders below)."""
    return Path(data_root) / RAW


def raw_dir(data_root: str | Path, kind: str = C.CLICKS_DIR) -> Path:
    """`<root>/raw/clicks` (or `raw/articles`): where hourly drops are delivered."""
    return landing_dir(data_root) / kind


def validated_dir(data_root: str | Path, kind: str = C.CLICKS_DIR) -> Path:
    """`<root>/validated/clicks` (or `validated/articles`): every landed hour of one kind."""
    return Path(data_root) / VALIDATED / kind


def partition_dir(data_root: str | Path, hour: int, kind: str = C.CLICKS_DIR) -> Path:
    """`<root>/validated/clicks/hour=NNN` (or `validated/articles/...`): one landed hour."""
    return validated_dir(data_root, kind) / C.partition_name(hour)


def partition_file(data_root: str | Path, hour: int, kind: str = C.CLICKS_DIR) -> Path:
    """`<root>/validated/clicks/hour=NNN/part-0.parquet`: one landed hour's rows."""
    return partition_dir(data_root, hour, kind) / PART_FILE


def quarantine_dir(data_root: str | Path, hour: int, kind: str = C.CLICKS_DIR) -> Path:
    """`<root>/quarantine/clicks/hour=NNN` (or `quarantine/articles/...`): one rejected hour, whole."""
    return Path(data_root) / QUARANTINE / kind / C.partition_name(hour)


def archive_dir(data_root: str | Path, hour: int, kind: str = C.CLICKS_DIR) -> Path:
    """`<root>/archive/clicks/hour=NNN`: the versions of an hour that later deliveries replaced, one folder
    each (`landed-<time>/` a landed partition, `quarantined-<time>/` a quarantine folder, <time> when it was
    written). Nothing is deleted there: an operator removes what is no longer wanted."""
    return Path(data_root) / ARCHIVE / kind / C.partition_name(hour)


def summary_path(data_root: str | Path) -> Path:
    """`<root>/validated/_summary.json`: the latest outcome of every hour, for DAGs and the dashboard."""
    return Path(data_root) / VALIDATED / SUMMARY_FILE


def aggregates_dir(data_root: str | Path, kind: str) -> Path:
    """`<root>/aggregates/<kind>` (popularity or coclick): one partition per click hour."""
    return Path(data_root) / AGGREGATES / kind


def aggregate_file(data_root: str | Path, kind: str, hour: int) -> Path:
    """`<root>/aggregates/<kind>/hour=NNN/part-0.parquet`."""
    return aggregates_dir(data_root, kind) / C.partition_name(hour) / PART_FILE


def impressions_path(data_root: str | Path) -> Path:
    """`<root>/raw/impressions.parquet`: what an importer kept of its source's impressions (shown, clicked or
    not: MIND), for the evaluation's impression protocol. Most datasets have none."""
    return landing_dir(data_root) / IMPRESSIONS_FILE


def erasure_register(data_root: str | Path) -> Path:
    """`<root>/erasures.jsonl`: the dataset's erasure register (pipelines.erasures), one line per erased user."""
    return Path(data_root) / ERASURE_REGISTER


def partition_hour(name: str) -> int | None:
    """The hour of a partition folder name (`hour=005` -> 5); None for any other name."""
    key, sep, value = name.partition("=")
    return int(value) if sep and key == C.HOUR and value.isascii() and value.isdigit() else None


def landed_hours(folder: str | Path) -> list[int]:
    """Hours with a part file under `folder` (e.g. validated_dir(root)), in order. Raises FileNotFoundError
    when the folder does not exist and ValueError on a partition folder whose name is not `hour=NNN`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"folder not found: {folder}")
    hours = []
    for part in folder.glob(f"{C.HOUR}=*/{PART_FILE}"):
        hour = partition_hour(part.parent.name)
        if hour is None:
            raise InputError(f"unexpected partition name {part.parent.name!r} in {folder}")
        hours.append(hour)
    return sorted(hours)
