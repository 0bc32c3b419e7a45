"""`newsrec forget-user USER_ID`: erase one user everywhere the project keeps them (GDPR art. 17).

Where a user lives, and what happens there:
- raw drops: `<root>/raw/clicks/*.csv` and members of `raw/clicks.zip`, and the drops under
  `storage.raw_uri` when that is S3 (older object versions of a rewritten drop are deleted too);
- quarantined drops (`<root>/quarantine/clicks/hour=NNN/`): the csv, and the user's id wherever the GX
  result lists it as an unexpected value;
- validated partitions (`<root>/validated/clicks/hour=NNN/part-0.parquet`);
- derived data: every other parquet file under the data root with a `user_id` column (features,
  candidates, indexes...) loses the user's rows, and the hourly aggregates of the hours the user clicked
  in are rebuilt from the cleaned partitions (they count users, so they carry the user's contribution);
- the online store (Redis, when `serve.redis_url` is set) and the impression and click logs.

Sessions belong to one user, so dropping a user's rows never breaks another session's `session_size`.

The erasure is recorded in `<root>/<forget_user.register>` as one JSON line that holds a keyed hash
(HMAC-SHA256) of the id, the time and how many rows went where: never the id or any click. Training reads
clicks through `split.load_clicks`, which drops every user whose hash is in the register, so a drop
restored from a backup, an S3 version or the DVC cache cannot bring an erased user back into a model.
The key comes from the environment variable `forget_user.key_env` (a secret: with it, ids could be tested
against the register); without the key the register cannot be written or honoured, which is an error.

Not reachable from here, and said in the report: registered models whose serving bundle holds the user's
history (they age out when the next training registers a new version) and an API's in-process state
(bounded by `serve.state_ttl_seconds`, gone on restart).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import io
import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines import columns as C
from pipelines.config import DEFAULT_PARAMS, load_params
from pipelines.fileio import atomic_write_bytes

PLACES = ("raw", "raw_zip", "raw_remote", "quarantine", "validated", "derived", "online_store", "event_logs")


class ErasureError(RuntimeError):
    """The erasure cannot be carried out or recorded as asked."""


@dataclass
class ErasureReport:
    """Rows removed per place, the files touched and what could not be reached (no user data inside)."""

    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PLACES, 0))
    files: list[str] = field(default_factory=list)
    hours: set[int] = field(default_factory=set)
    not_reached: list[str] = field(default_factory=list)

    def add(self, place: str, rows: int, where: str, hour: int | None = None) -> None:
        if rows:
            self.removed[place] += rows
            self.files.append(where)
            if hour is not None:
                self.hours.add(hour)

    @property
    def total(self) -> int:
        return sum(self.removed.values())


# --- the register ------------------------------------------------------------------------------------------


def erasure_key(key_env: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The HMAC key from the environment; an unset or short key is an error, never a silent default."""
    value = (os.environ if environ is None else environ).get(key_env, "")
    if len(value) < 16:
        raise ErasureError(f"set {key_env} to a secret of at least 16 characters (the erasure register's key)")
    return value.encode()


def user_token(user_id: int, key: bytes) -> str:
    """The register's pseudonym for a user: HMAC-SHA256 of the decimal id under the secret key."""
    return hmac.new(key, str(int(user_id)).encode(), hashlib.sha256).hexdigest()


def read_register(path: str | Path) -> set[str]:
    """The tokens of every erased user (empty when nothing was ever erased)."""
    path = Path(path)
    if not path.exists():
        return set()
    tokens = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                tokens.add(json.loads(line)["token"])
            except (ValueError, KeyError) as error:
                raise ErasureError(f"{path}:{n}: not an erasure record") from error
    return tokens


@lru_cache(maxsize=4)
def _cached_tokens(path: str, mtime_ns: int) -> frozenset[str]:
    return frozenset(read_register(path))


def drop_erased_users(frame: pd.DataFrame, data_root: str | Path, params_path: str | Path = DEFAULT_PARAMS,
                      environ: Mapping[str, str] | None = None) -> pd.DataFrame:
    """`frame` without the rows of users in the data root's erasure register (unchanged when it is empty)."""
    try:
        params = load_params("forget_user", params_path)
    except (FileNotFoundError, KeyError):
        return frame  # called where no params.yaml configures a register (a library user): none to honour
    path = Path(data_root) / params["register"]
    if not path.exists() or frame.empty or C.USER_ID not in frame.columns:
        return frame
    tokens = _cached_tokens(str(path), path.stat().st_mtime_ns)
    if not tokens:
        return frame
    key = erasure_key(params["key_env"], environ)
    users = frame[C.USER_ID].unique()
    erased = [u for u in users if user_token(int(u), key) in tokens]
    return frame[~frame[C.USER_ID].isin(erased)].reset_index(drop=True) if erased else frame


def record_erasure(register: Path, user_id: int, key: bytes, report: ErasureReport, when: dt.datetime) -> dict:
    """Append the erasure to the register: token, time and counts; no id, no clicks."""
    record = {
        "token": user_token(user_id, key),
        "erased_at": when.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "removed": {k: v for k, v in report.removed.items() if v},
        "hours": len(report.hours),
        "not_reached": report.not_reached,
    }
    register.parent.mkdir(parents=True, exist_ok=True)
    with register.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return record


# --- rewriting one file without the user ---------------------------------------------------------------------


def csv_without_user(data: bytes, user_id: int) -> tuple[bytes, int]:
    """(the csv without the user's rows, rows removed). Other rows keep their exact text."""
    if not data.strip():
        return data, 0
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return _lines_without_user(data, user_id)
    if C.USER_ID not in frame.columns:
        return _lines_without_user(data, user_id)
    mine = frame[C.USER_ID].str.strip() == str(int(user_id))
    if not mine.any():
        return data, 0
    # Rows are dropped as lines, so what is kept stays byte for byte what arrived.
    lines = data.decode().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    if len(body) != len(frame):
        return _lines_without_user(data, user_id)
    kept = [line for line, drop in zip(body, mine.to_numpy(), strict=True) if not drop]
    return (header + "".join(kept)).encode(), int(mine.sum())


def _lines_without_user(data: bytes, user_id: int) -> tuple[bytes, int]:
    """For a malformed csv (quarantined for it): drop every line whose first field is the id."""
    lines = data.decode(errors="replace").splitlines(keepends=True)
    target = str(int(user_id))
    kept = [ln for ln in lines if ln.split(",", 1)[0].strip().strip('"') != target]
    return "".join(kept).encode(), len(lines) - len(kept)


def parquet_without_user(path: Path, user_id: int) -> int:
    """Rewrite a parquet file without the user's rows (schema kept); returns rows removed."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    if C.USER_ID not in schema.names:
        return 0
    table = pq.read_table(path)
    mine = pc.equal(table[C.USER_ID], pc.cast(int(user_id), table.schema.field(C.USER_ID).type))
    removed = pc.sum(pc.cast(pc.fill_null(mine, False), "int64")).as_py() or 0
    if removed:
        kept = table.filter(pc.invert(pc.fill_null(mine, False)))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            pq.write_table(kept, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return int(removed)


def scrub_gx_result(result: Any, user_id: int) -> tuple[Any, int]:
    """A GX result with the id taken out of every unexpected-value list of a user_id expectation."""
    removed = 0

    def walk(node: Any, on_user_column: bool) -> Any:
        nonlocal removed
        if isinstance(node, dict):
            kwargs = node.get("expectation_config", {}).get("kwargs", {}) if "expectation_config" in node else {}
            here = on_user_column or kwargs.get("column") == C.USER_ID
            out = {}
            for k, v in node.items():
                if here and k in {"partial_unexpected_list", "unexpected_list"} and isinstance(v, list):
                    kept = [x for x in v if str(x) != str(int(user_id))]
                    removed += len(v) - len(kept)
                    out[k] = kept
                elif here and k == "partial_unexpected_counts" and isinstance(v, list):
                    kept = [x for x in v if str(x.get("value")) != str(int(user_id))]
                    removed += len(v) - len(kept)
                    out[k] = kept
                else:
                    out[k] = walk(v, here)
            return out
        if isinstance(node, list):
            return [walk(x, on_user_column) for x in node]
        return node

    return walk(result, False), removed


# --- the places ------------------------------------------------------------------------------------------------


def _hour_of(path: Path) -> int | None:
    for part in (path.name, path.parent.name):
        digits = "".join(ch for ch in part.split("=")[-1] if ch.isdigit())
        if ("hour" in part) and digits:
            return int(digits)
    return None


def erase_raw(data_root: Path, user_id: int, report: ErasureReport) -> None:
    """Hourly csv drops under raw/clicks and the members of raw/clicks.zip."""
    raw = data_root / "raw"
    for path in sorted((raw / C.CLICKS_DIR).glob("*.csv")):
        data, removed = csv_without_user(path.read_bytes(), user_id)
        if removed:
            atomic_write_bytes(path, data)
        report.add("raw", removed, str(path), _hour_of(path))
    zip_path = raw / C.CLICKS_ZIP
    if zip_path.exists():
        with zipfile.ZipFile(zip_path) as zf:
            members = [(info, zf.read(info)) for info in zf.infolist()]
        rewritten, removed_total = [], 0
        for info, data in members:
            if info.filename.endswith(".csv"):
                data, removed = csv_without_user(data, user_id)
                removed_total += removed
                hour = _hour_of(Path(info.filename))
                if removed and hour is not None:
                    report.hours.add(hour)
            rewritten.append((info, data))
        if removed_total:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for info, data in rewritten:
                    zf.writestr(info, data)
            atomic_write_bytes(zip_path, buf.getvalue())
        report.add("raw_zip", removed_total, str(zip_path))


def erase_remote_raw(raw_uri: str, user_id: int, report: ErasureReport, client: Any | None = None) -> None:
    """Hourly drops under an S3 raw location: rewrite, then delete the older versions of each rewritten key."""
    from pipelines import storage

    loc = storage.parse(raw_uri)
    if not loc.is_s3:
        return  # a local raw location is the data root's raw/ or another folder erase_raw-like code owns
    s3 = storage._client(client)
    for hour in storage.hours_available(raw_uri, client):
        uri = storage.hour_uri(raw_uri, hour)
        data, removed = csv_without_user(storage.read_bytes(uri, client), user_id)
        if not removed:
            continue
        storage.write_bytes(uri, data, client)
        key = storage.parse(uri).key
        current = s3.head_object(Bucket=loc.bucket, Key=key).get("VersionId")
        if current and current != "null":
            pages = s3.get_paginator("list_object_versions").paginate(Bucket=loc.bucket, Prefix=key)
            for page in pages:
                for version in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                    if version["Key"] == key and version["VersionId"] != current:
                        s3.delete_object(Bucket=loc.bucket, Key=key, VersionId=version["VersionId"])
        report.add("raw_remote", removed, uri, hour)


def erase_quarantine(data_root: Path, user_id: int, report: ErasureReport) -> None:
    """Quarantined drops and the GX results written beside them, also those a later delivery replaced
    (kept under archive/, see pipelines.validate.archive_dir; archived partitions are parquet, erased below)."""
    archived = (data_root / "archive" / C.CLICKS_DIR).glob("hour=*/quarantined-*")
    for folder in sorted([*(data_root / "quarantine" / C.CLICKS_DIR).glob("*"), *archived]):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.csv")):
            data, removed = csv_without_user(path.read_bytes(), user_id)
            if removed:
                atomic_write_bytes(path, data)
            report.add("quarantine", removed, str(path), _hour_of(folder))
        result_path = folder / "result.json"
        if result_path.exists():
            try:
                result = json.loads(result_path.read_text())
            except ValueError:
                continue
            scrubbed, removed = scrub_gx_result(result, user_id)
            if removed:
                atomic_write_bytes(result_path, json.dumps(scrubbed, indent=2).encode())
            report.add("quarantine", removed, str(result_path))


def erase_parquet_tree(data_root: Path, user_id: int, report: ErasureReport) -> None:
    """Validated partitions, then every other parquet file with a user_id column under the data root."""
    validated = data_root / "validated"
    for path in sorted(validated.rglob("*.parquet")):
        report.add("validated", parquet_without_user(path, user_id), str(path), _hour_of(path.parent))
    skip = {data_root / "raw", data_root / "quarantine", validated}
    for path in sorted(data_root.rglob("*.parquet")):
        if any(parent in skip for parent in path.parents):
            continue
        report.add("derived", parquet_without_user(path, user_id), str(path))


def rebuild_aggregates(data_root: Path, hours: Iterable[int], params_path: str | Path) -> list[int]:
    """Recompute the hourly aggregates of the given hours from the cleaned partitions (when they exist)."""
    from pipelines.aggregates import aggregate_hour

    agg_root = data_root / "aggregates"
    if not agg_root.exists():
        return []
    epoch_ms = int(load_params("data", params_path)["epoch_ms"])
    distance = int(load_params("aggregates", params_path)["coclick_max_distance"])
    done = []
    for hour in sorted(set(hours)):
        partition = data_root / "validated" / C.CLICKS_DIR / f"{C.HOUR}={hour:03d}" / "part-0.parquet"
        if partition.exists():
            aggregate_hour(data_root, hour, epoch_ms, distance)
            done.append(hour)
    return done


def erase_event_logs(paths: Iterable[Path], user_id: int, report: ErasureReport) -> None:
    """JSON-lines logs (impressions, clicks, and their rotated siblings) without the user's records."""
    for base in paths:
        for path in sorted(base.parent.glob(base.name + "*")) if base.parent.exists() else []:
            kept, removed = [], 0
            for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
                try:
                    mine = int(json.loads(line).get(C.USER_ID, -1)) == int(user_id)
                except (ValueError, TypeError, AttributeError):
                    mine = False
                if mine:
                    removed += 1
                else:
                    kept.append(line)
            if removed:
                atomic_write_bytes(path, "".join(kept).encode())
            report.add("event_logs", removed, str(path))


def erase_online_state(store: Any, user_id: int, report: ErasureReport) -> None:
    """The user's recent clicks in the online store."""
    report.add("online_store", int(store.forget(user_id)), "online user state")


def forget_user(
    user_id: int,
    data_root: str | Path,
    *,
    key: bytes,
    register: str | Path,
    raw_uri: str | None = None,
    event_logs: Iterable[Path] = (),
    state_store: Any | None = None,
    params_path: str | Path = DEFAULT_PARAMS,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    s3_client: Any | None = None,
) -> tuple[ErasureReport, dict]:
    """Erase one user from every place listed in the module docstring and record it; returns (report, record)."""
    if int(user_id) < 0:
        raise ErasureError(f"user ids are non-negative integers, got {user_id}")
    root = Path(data_root)
    if not root.is_dir():
        raise ErasureError(f"data root not found: {root}")
    report = ErasureReport()
    erase_raw(root, user_id, report)
    if raw_uri:
        erase_remote_raw(raw_uri, user_id, report, s3_client)
    erase_quarantine(root, user_id, report)
    erase_parquet_tree(root, user_id, report)
    rebuilt = rebuild_aggregates(root, report.hours, params_path)
    if rebuilt:
        report.files.append(f"aggregates rebuilt for {len(rebuilt)} hours")
    erase_event_logs(event_logs, user_id, report)
    if state_store is not None:
        erase_online_state(state_store, user_id, report)
    else:
        report.not_reached.append("in-process user state of running API replicas (expires after serve.state_ttl_seconds)")
    report.not_reached.append("serving bundles of registered models (replaced by the next registered version)")
    record = record_erasure(Path(register), user_id, key, report, now())
    return report, record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="newsrec forget-user", description=__doc__.split("\n")[0])
    parser.add_argument("user_id", type=int, help="the Globo user id to erase")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--data-root", type=Path, help="default: params data.root")
    parser.add_argument("--raw-uri", help="also rewrite drops here (default: params storage.raw_uri)")
    parser.add_argument("--yes", action="store_true", help="do it (without it, nothing is changed)")
    args = parser.parse_args(argv)

    params = load_params("forget_user", args.params)
    serve = load_params("serve", args.params)
    root = args.data_root or Path(load_params("data", args.params)["root"])
    raw_uri = args.raw_uri or load_params("storage", args.params).get("raw_uri")
    if args.user_id < 0:
        parser.error("user_id must be >= 0")
    if not args.yes:
        print(f"newsrec forget-user: would erase user {args.user_id} under {root}"
              + (f" and {raw_uri}" if raw_uri else "") + "; add --yes to do it", file=sys.stderr)
        return 2
    try:
        key = erasure_key(params["key_env"])
        store = None
        if serve.get("redis_url"):
            from serving.state import make_state_store

            store = make_state_store(serve["redis_url"], serve["state_prefix"], int(serve["state_max_clicks"]),
                                     int(serve["state_ttl_seconds"]), int(serve["state_max_users"]))
        report, _record = forget_user(
            args.user_id, root, key=key, register=root / params["register"], raw_uri=raw_uri,
            event_logs=[Path(serve["impression_log"]), Path(serve["click_log"])], state_store=store,
            params_path=args.params,
        )
    except ErasureError as error:
        print(f"newsrec forget-user: {error}", file=sys.stderr)
        return 1
    removed = ", ".join(f"{k} {v}" for k, v in report.removed.items() if v) or "nothing (no data held)"
    print(f"erased: {removed}; {len(report.files)} files rewritten; recorded in {root / params['register']}")
    for item in report.not_reached:
        print(f"not reachable from here: {item}")
    return 0
