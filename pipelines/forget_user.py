"""`newsrec forget-user USER_ID`: erase one user everywhere the project keeps them (GDPR art. 17).

Ids match as integers wherever they are read (`0005959`, ` 5959` and 5959 are one user). Where a user lives,
and what happens there:
- every file under the data root, whatever writes it, hidden files and writers' temporary copies left by a
  crash included (`.part-0.parquet.PID.tmp`, `.hour=NNN.tmp-PID/`, atomic_write's `.NAME.pidPID.*.tmp`):
  raw drops (`raw/clicks/*.csv`, members of `raw/clicks.zip`), quarantined and archived drops with their GX
  `result.json` (the id leaves every value list of a user_id check and every listed row of the user), validated
  partitions, the GX results store (`gx/validations`; the data docs are rebuilt from it), and everything derived
  (aggregates, candidates, features, indexes, hourly serving indexes): a parquet file loses the user's rows (a
  features `users.parquet` and its `profiles.npy` the same rows), a `history.npy` the user's clicks, and a
  folder with a `manifest.json` gets it rewritten. The hourly aggregates of the hours the user clicked in are
  rebuilt from the cleaned partitions (they count users);
- the drops under `storage.raw_uri` when that is S3 (older object versions of a rewritten drop are deleted);
- dvc.yaml's outputs outside the data root (`models/bundle`, the serving bundle);
- DVC itself (settle_dvc): the stages whose outputs were rewritten are committed (`dvc commit -f`), so dvc.lock
  records the erased versions and `dvc repro` has nothing to check out of the cache, then every object the
  workspace does not use is deleted from the cache and the default remote (`dvc gc --workspace --cloud`) and the
  erased versions are pushed. This costs other commits and experiments their cached data (the CLI says so);
- the MLflow registry (erase_model_registry): a registered version cannot be rewritten as a new version in
  place, so the rule is: every artifact of the experiment (runs and logged models, the registered serving
  bundles among them) is rewritten without the user, every version is tagged `erasure.last_at`, and the user's
  clicks leave the versions' test-window tags, so the next version, trained by `dvc repro` on the erased data, is
  judged against the champion on the same window and replaces it when it wins;
- the online store (Redis, when `serve.redis_url` is set), the users' state of the hourly index versions in
  Redis (when `serve.user_store_url` is set: pipelines.user_store.forget) and the impression and click logs.

Sessions belong to one user, so dropping a user's rows never breaks another session's `session_size`.

The erasure is recorded in `<root>/erasures.jsonl` (lake.erasure_register) as one JSON line that holds a keyed hash
(HMAC-SHA256) of the id, the time and how many rows went where: never the id or any click. Training reads
clicks through `split.load_clicks`, which drops every user whose hash is in the register, so a drop
restored from a backup or an S3 version cannot bring an erased user back into a model; `newsrec synth` honours
it too, so regenerating the demo dataset does not make an erased user again. The key comes from the
environment variable `NEWSREC_ERASURE_KEY` (erasures.KEY_ENV; a secret: with it, ids could be tested against the register);
without the key the register cannot be written or honoured, which is an error that says how to provide it.

Not reachable from here, and said in the report: what a running API holds in its own memory, the in-process
user state (when no Redis is configured: gone after `serve.state_ttl_seconds`) and the bundle and index it
loaded (gone when it loads the next hourly index or the champion changes, at the latest on restart: restart
the API after an erasure).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd

from pipelines import columns as C
from pipelines import dvc_repo
from pipelines.config import parse_step, step_parser
from pipelines.dvc_repo import dvc_repo_root
from pipelines.erasures import KEY_ENV, ErasureError, erasure_key, user_token
from pipelines.fileio import MANIFEST, atomic_write, atomic_write_bytes, write_manifest
from pipelines.lake import AGGREGATES, erasure_register, partition_file, validated_dir

PLACES = ("raw", "raw_zip", "raw_remote", "quarantine", "validated", "gx_store", "derived", "models", "model_registry",
          "dvc_cache", "online_store", "user_store", "event_logs")


@dataclass
class ErasureReport:
    """Rows removed per place, the files touched and what could not be reached (no user data inside)."""

    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PLACES, 0))
    files: list[str] = field(default_factory=list)
    hours: set[int] = field(default_factory=set)
    not_reached: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the erasure cost (said in the CLI's output)

    def add(self, place: str, rows: int, where: str, hour: int | None = None) -> None:
        if rows:
            self.removed[place] += rows
            self.files.append(where)
            if hour is not None:
                self.hours.add(hour)

    @property
    def total(self) -> int:
        return sum(self.removed.values())


# --- the register (reading it: pipelines.erasures) ---------------------------------------------------------


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
        if C.ARTICLE_ID in frame.columns:
            return data, 0  # the catalogue (articles_metadata.csv, article drops): no users in it
        return _lines_without_user(data, user_id)  # a click drop with a damaged header
    # Ids match as integers: a drop may write `0005959` or ` 5959` for user 5959.
    mine = pd.to_numeric(frame[C.USER_ID].str.strip().str.strip('"'), errors="coerce") == int(user_id)
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
    kept = [ln for ln in lines if not same_id(ln.split(",", 1)[0], user_id)]
    return "".join(kept).encode(), len(lines) - len(kept)


def same_id(value: Any, user_id: int) -> bool:
    """Whether a value read from a file is the user's id, compared as integers (`0005959`, `"5959"`, 5959.0)."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int):
        return value == int(user_id)
    try:
        number = float(str(value).strip().strip('"'))
    except ValueError:
        return False
    return number.is_integer() and int(number) == int(user_id)


def parquet_without_user(path: Path, user_id: int) -> int:
    """Rewrite a parquet file without the user's rows (schema kept); returns rows removed. The users.parquet of
    feature tables loses the same rows of its profiles.npy beside it (row i of one is row i of the other)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException):
        return 0  # not a parquet file (or a truncated one no reader accepts)
    if C.USER_ID not in schema.names:
        return 0
    table = pq.read_table(path)
    column = table[C.USER_ID]
    if pa.types.is_integer(column.type):
        mine = column.to_numpy(zero_copy_only=False) == int(user_id)
    else:  # ids written as text: compared as integers
        mine = np.array([same_id(v, user_id) for v in column.to_pylist()], dtype=bool)
    removed = int(mine.sum())
    if removed:
        keep = ~mine
        atomic_write(path, lambda tmp: pq.write_table(table.filter(pa.array(keep)), tmp))
        profiles = path.with_name("profiles.npy")
        if path.name == "users.parquet" and profiles.exists():
            matrix = np.load(profiles)
            if len(matrix) == len(keep):
                _save_npy(profiles, matrix[keep])
    return removed


def _save_npy(path: Path, array: Any) -> None:
    import numpy as np

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # np.save(path) would add a second .npy suffix to the temp name
            np.save(fh, array)

    atomic_write(path, write)


def history_without_user(path: Path, user_id: int) -> int:
    """A history.npy (serving bundle, hourly index: int64 [HISTORY_COLUMNS, clicks], user ids first) without
    the user's clicks; returns clicks removed."""
    import numpy as np

    from pipelines.serving_index import HISTORY_COLUMNS

    history = np.load(path)
    if history.ndim != 2 or history.shape[0] != len(HISTORY_COLUMNS):
        return 0
    mine = history[HISTORY_COLUMNS.index(C.USER_ID)] == int(user_id)
    if mine.any():
        _save_npy(path, np.ascontiguousarray(history[:, ~mine]))
    return int(mine.sum())


def jsonl_without_user(path: Path, user_id: int) -> int:
    """A JSON-lines file (impression and click logs) without the user's records; returns records removed."""
    kept, removed = [], 0
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            mine = same_id(json.loads(line).get(C.USER_ID), user_id)
        except (ValueError, AttributeError):
            mine = False
        if mine:
            removed += 1
        else:
            kept.append(line)
    if removed:
        atomic_write_bytes(path, "".join(kept).encode())
    return removed


def zip_without_user(path: Path, user_id: int, hours: set[int]) -> int:
    """A clicks.zip whose csv members lose the user's rows (the hours they clicked in are added to `hours`)."""
    with zipfile.ZipFile(path) as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    rewritten, removed_total = [], 0
    for info, data in members:
        if info.filename.endswith(".csv"):
            data, removed = csv_without_user(data, user_id)
            removed_total += removed
            hour = _hour_of(Path(info.filename))
            if removed and hour is not None:
                hours.add(hour)
        rewritten.append((info, data))
    if removed_total:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for info, data in rewritten:
                zf.writestr(info, data)
        atomic_write_bytes(path, buf.getvalue())
    return removed_total


# A writer's temporary copy (pipelines.fileio.atomic_write, validate's partition writes, candidates' lists):
# what it copies is named inside, and a crash can leave it behind.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+?)\.(?:pid\d+\.[^.]*\.tmp|\d+\.tmp|tmp)$")


def logical_name(name: str) -> str:
    """The name a file stands for: `part-0.parquet` for its temporary copy `.part-0.parquet.123.tmp`."""
    match = _TEMP_NAME.match(name)
    return match.group("name") if match else name


def file_without_user(path: Path, user_id: int, hours: set[int]) -> int:
    """Rewrite one file of a store without the user, by what it is; rows (records, ids) removed."""
    name = logical_name(path.name)
    if name.endswith(".csv"):
        data, removed = csv_without_user(path.read_bytes(), user_id)
        if removed:
            atomic_write_bytes(path, data)
            hour = _hour_of(path) or _hour_of(path.parent)
            if hour is not None:
                hours.add(hour)
        return removed
    if name.endswith(".parquet"):
        removed = parquet_without_user(path, user_id)
        hour = _hour_of(path.parent)
        if removed and hour is not None and path.parent.parent.name == C.CLICKS_DIR:
            hours.add(hour)
        return removed
    if name == "history.npy":
        return history_without_user(path, user_id)
    if name.endswith(".zip"):
        return zip_without_user(path, user_id, hours)
    if name.endswith(".jsonl"):
        return jsonl_without_user(path, user_id)
    if name.endswith(".json"):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return 0
        if not (isinstance(result, dict) and isinstance(result.get("results"), list)):
            return 0  # only GX results (quarantine result.json, the GX results store) list rows and ids
        scrubbed, removed = scrub_gx_result(result, user_id)
        if removed:
            atomic_write_bytes(path, json.dumps(scrubbed, indent=2).encode())
        return removed
    return 0


def erase_tree(folder: Path, user_id: int, report: ErasureReport, place: Callable[[Path], str],
               skip: Iterable[Path] = ()) -> list[Path]:
    """Every file under `folder` (hidden ones and writers' temporary copies included) without the user;
    `place(path)` names the report's place of each. A folder with a manifest.json whose files changed gets
    its manifest rewritten (a serving bundle is verified against it). Returns the files rewritten."""
    skip = {Path(p).resolve() for p in skip}
    changed = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.resolve() in skip or path.name == MANIFEST:
            continue
        removed = file_without_user(path, user_id, report.hours)
        where = place(path)
        report.removed[where] = report.removed.get(where, 0) + removed
        if removed:
            report.files.append(str(path))
            changed.append(path)
    manifests = set()
    for path in changed:
        for parent in path.parents:
            if (parent / MANIFEST).exists():
                manifests.add(parent)
                break
            if parent == folder:
                break
    for parent in sorted(manifests):
        write_manifest(parent)
    return changed


def scrub_gx_result(result: Any, user_id: int) -> tuple[Any, int]:
    """A GX result without the user: the id taken out of every value list of a user_id expectation, and every
    listed row (a dict with a user_id, e.g. the whole rows of a duplicate-rows check) of the user dropped."""
    removed = 0

    def mine(item: Any, on_user_column: bool) -> bool:
        if isinstance(item, dict):
            if C.USER_ID in item:
                return same_id(item[C.USER_ID], user_id)
            return on_user_column and "value" in item and same_id(item["value"], user_id)
        return on_user_column and not isinstance(item, list | dict) and same_id(item, user_id)

    def walk(node: Any, on_user_column: bool) -> Any:
        nonlocal removed
        if isinstance(node, dict):
            kwargs = node.get("expectation_config", {}).get("kwargs", {}) if "expectation_config" in node else {}
            here = on_user_column or kwargs.get("column") == C.USER_ID
            return {k: walk(v, here) for k, v in node.items()}
        if isinstance(node, list):
            kept = [x for x in node if not mine(x, on_user_column)]
            removed += len(node) - len(kept)
            return [walk(x, on_user_column) for x in kept]
        return node

    return walk(result, False), removed


# --- the places ------------------------------------------------------------------------------------------------


def _hour_of(path: Path) -> int | None:
    for part in (path.name, path.parent.name):
        digits = "".join(ch for ch in part.split("=")[-1] if ch.isdigit())
        if ("hour" in part) and digits:
            return int(digits)
    return None


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


def erase_data_root(data_root: Path, user_id: int, report: ErasureReport, skip: Iterable[Path] = ()) -> None:
    """Every store under the data root: raw drops (csv and clicks.zip), quarantine and archive (drops and GX
    results), validated partitions, the GX results store, and everything derived (aggregates, candidates,
    features, indexes, hourly serving indexes), temporary copies left by a crash included."""
    from pipelines.validate import GX_RUNTIME_DIR

    places = {"raw": "raw", "quarantine": "quarantine", "archive": "quarantine", "validated": "validated",
              GX_RUNTIME_DIR: "gx_store"}

    def place(path: Path) -> str:
        top = path.relative_to(data_root).parts[0]
        if top == "raw" and path.name.endswith(".zip"):
            return "raw_zip"
        return places.get(top, "derived")

    erase_tree(data_root, user_id, report, place, skip)


def rebuild_gx_docs(data_root: Path, gx_dir: Path) -> bool:
    """Build the GX data docs again from the scrubbed results store (the old pages showed the user's ids)."""
    import shutil

    from pipelines.validate import GX_RUNTIME_DIR, build_gx_docs, open_gx_context

    docs = data_root / GX_RUNTIME_DIR / "docs"
    if not docs.exists():
        return False
    shutil.rmtree(docs)
    build_gx_docs(open_gx_context(gx_dir, data_root / GX_RUNTIME_DIR), data_root / GX_RUNTIME_DIR)
    return True


def rebuild_aggregates(data_root: Path, hours: Iterable[int], epoch_ms: int, coclick_max_distance: int) -> list[int]:
    """Recompute the hourly aggregates of the given hours from the cleaned partitions (when they exist), as
    `newsrec aggregates` does (params data.epoch_ms, aggregates.coclick_max_distance)."""
    from pipelines.aggregates import aggregate_hour

    agg_root = data_root / AGGREGATES
    if not agg_root.exists():
        return []
    distance = int(coclick_max_distance)
    done = []
    for hour in sorted(set(hours)):
        if partition_file(data_root, hour).exists():
            aggregate_hour(data_root, hour, epoch_ms, distance)
            done.append(hour)
    return done


def erase_event_logs(paths: Iterable[Path], user_id: int, report: ErasureReport) -> None:
    """JSON-lines logs (impressions, clicks, and their rotated siblings) without the user's records."""
    for base in paths:
        for path in sorted(base.parent.glob(base.name + "*")) if base.parent.exists() else []:
            report.add("event_logs", jsonl_without_user(path, user_id), str(path))


def erase_online_state(store: Any, user_id: int, report: ErasureReport) -> None:
    """The user's recent clicks in the online store."""
    report.add("online_store", int(store.forget(user_id)), "online user state")


def erase_user_store(client: Any, config: Any, user_id: int, report: ErasureReport) -> None:
    """The user's state in every hourly index version held in Redis (pipelines.user_store)."""
    from pipelines.user_store import forget

    report.add("user_store", forget(client, config, user_id), "users' state of the hourly index in Redis")


def user_clicks(data_root: Path, user_id: int) -> pd.DataFrame:
    """The user's validated clicks (user, article, time), read before they are erased: what the test-window
    ids of registered versions held of them (pipelines.registry.forget_in_windows)."""
    import duckdb

    validated = validated_dir(data_root)
    cols = [C.USER_ID, C.CLICK_ARTICLE_ID, C.CLICK_TIMESTAMP]
    if not any(validated.glob("*/*.parquet")):
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in cols})
    sql = (f"SELECT {', '.join(cols)} FROM read_parquet(?, hive_partitioning=true, hive_types={{'hour': BIGINT}}) "
           f"WHERE {C.USER_ID} = ?")
    with duckdb.connect() as con:
        return con.execute(sql, [str(validated / "*" / "*.parquet"), int(user_id)]).df().astype("int64")


@dataclass
class ModelRegistry:
    """Where registered models live: an MLflow client, the registered model's name, the experiment whose
    artifacts hold its runs and logged models, and the hour arithmetic of its test-window tags."""

    client: Any
    model_name: str
    experiment: str
    epoch_ms: int


def erase_model_registry(registry: ModelRegistry, user_id: int, clicks: pd.DataFrame, report: ErasureReport,
                         when: dt.datetime) -> None:
    """Registered versions cannot be re-registered in place, so the rule is: every artifact of the experiment
    (runs and logged models: the serving bundles' user tables, profiles and histories) is rewritten without the
    user, with the bundles' manifests; every version is tagged with the time of the erasure; and the user's
    clicks leave the versions' test-window tags, so the next version, trained on the erased data, is compared
    with the champion on the same window (and replaces it when it wins)."""
    from pipelines.registry import forget_in_windows

    client = registry.client
    experiment = client.get_experiment_by_name(registry.experiment)
    if experiment is not None:
        location = experiment.artifact_location
        parsed = urlparse(location)
        if parsed.scheme in ("", "file"):
            folder = Path(url2pathname(parsed.path) if parsed.scheme else location)
            if folder.is_dir():
                erase_tree(folder, user_id, report, lambda _path: "model_registry")
        else:
            _erase_remote_artifacts(location, user_id, report)
    windows = forget_in_windows(client, registry.model_name, clicks, registry.epoch_ms)
    if windows:
        report.files.append(f"test-window tags of versions {', '.join(windows)} without the user's clicks")
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{registry.model_name}'")
    except MlflowException:
        versions = []
    stamp = when.astimezone(dt.UTC).isoformat(timespec="seconds")
    for mv in versions:
        client.set_model_version_tag(registry.model_name, mv.version, "erasure.last_at", stamp)


def _erase_remote_artifacts(location: str, user_id: int, report: ErasureReport) -> None:
    """An object-store (or proxied) artifact location: download, rewrite, upload the rewritten files back."""
    from mlflow.artifacts import download_artifacts
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with tempfile.TemporaryDirectory(prefix="newsrec-forget-") as tmp:
        local = Path(download_artifacts(artifact_uri=location, dst_path=tmp))
        changed = erase_tree(local, user_id, report, lambda _path: "model_registry")
        manifests = {p for c in changed for p in c.parents if (p / MANIFEST).exists() and local in p.parents}
        repo = get_artifact_repository(location)
        for path in [*changed, *(m / MANIFEST for m in manifests)]:
            parent = path.parent.relative_to(local).as_posix()
            repo.log_artifact(str(path), artifact_path=None if parent == "." else parent)


def dvc_outputs(repo_root: Path) -> list[Path]:
    """Every output path dvc.yaml declares (the product's stores that DVC versions)."""
    with dvc_repo.open_repo(repo_root) as repo:
        return sorted({Path(out.fs_path) for out in repo.index.outs})


def settle_dvc(repo_root: Path, report: ErasureReport) -> None:
    """Make DVC treat the erased outputs as the truth and drop the versions that hold the user.

    `dvc commit -f` of every stage whose outputs the erasure rewrote (dvc.lock then records the erased
    hashes, so `dvc repro` has nothing to check out of the cache; stages that only depend on them run again
    and retrain, re-register from the erased data), then `dvc gc --workspace` on the cache and, when a
    default remote is configured, `--cloud` on it, then `dvc push` of the erased versions. The cost: every
    cached object the current workspace does not use is deleted, so other commits and experiments can no
    longer `dvc checkout`/`dvc pull` their data (they reproduce it with `dvc repro`)."""
    changed, left = stages_to_commit(dvc_repo.status(repo_root))
    for name in changed:
        dvc_repo.dvc(repo_root, "commit", "--force", name)
    cloud = dvc_repo.default_remote(repo_root) is not None
    before = dvc_repo.cache_objects(repo_root)
    dvc_repo.dvc(repo_root, "gc", "--workspace", "--force", *(["--cloud"] if cloud else []))
    removed = before - dvc_repo.cache_objects(repo_root)
    if cloud:
        dvc_repo.dvc(repo_root, "push")
    report.removed["dvc_cache"] = removed
    report.files.append(f"dvc.lock: committed the erased outputs of {', '.join(changed) or 'no stage'} "
                        "(commit dvc.lock to git)")
    if left:
        report.notes.append(f"DVC: not committed, as they changed for other reasons too (dvc repro rebuilds them): "
                            f"{', '.join(left)}")
    report.notes.append(f"DVC: {removed} cached objects the workspace does not use were deleted"
                        + (" from the cache and the default remote" if cloud else " from the cache")
                        + "; other commits and experiments can no longer check out their data (dvc repro rebuilds it)")


def stages_to_commit(status: Mapping[str, list]) -> tuple[list[str], list[str]]:
    """(stages to `dvc commit -f`, stages with changed outputs left alone) from `dvc status`.

    A stage is committed when its outputs were modified in place (what the erasure does) and nothing else
    about it changed but dependencies that are such outputs of other stages: a stage whose code, params or
    command changed, or whose output is missing, must be reproduced, not declared up to date."""
    def parts(entries: list) -> tuple[dict, dict, bool]:
        outs, deps, other = {}, {}, False
        for entry in entries:
            if isinstance(entry, dict) and set(entry) <= {"changed outs", "changed deps"}:
                outs.update(entry.get("changed outs", {}))
                deps.update(entry.get("changed deps", {}))
            else:
                other = True
        return outs, deps, other

    split = {name.split(":")[-1]: parts(entries) for name, entries in status.items()}
    rewritten = {path for outs, _, _ in split.values() for path, what in outs.items() if what == "modified"}
    commit, left = [], []
    for name, (outs, deps, other) in split.items():
        if not outs:
            continue
        ok = not other and all(what == "modified" for what in outs.values()) and set(deps) <= rewritten
        (commit if ok else left).append(name)
    return commit, left


def forget_user(
    user_id: int,
    data_root: str | Path,
    *,
    key: bytes,
    raw_uri: str | None = None,
    event_logs: Iterable[Path] = (),
    state_store: Any | None = None,
    user_store: tuple[Any, Any] | None = None,
    registry: ModelRegistry | None = None,
    dvc: bool = True,
    gx_dir: str | Path | None = None,
    epoch_ms: int,
    coclick_max_distance: int,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    s3_client: Any | None = None,
) -> tuple[ErasureReport, dict]:
    """Erase one user from every place listed in the module docstring and record it; returns (report, record).

    `user_store`: (a Redis client, its pipelines.user_store.UserStoreConfig) when the index's users are in Redis.
    `dvc`: when the data root is inside a DVC repository, also erase dvc.yaml's outputs outside it (the serving
    bundle) and settle DVC (settle_dvc). `gx_dir`: the GX project, to rebuild the data docs. `epoch_ms` and
    `coclick_max_distance` (params data, aggregates): how the user's hours' aggregates are rebuilt."""
    if int(user_id) < 0:
        raise ErasureError(f"user ids are non-negative integers, got {user_id}")
    root = Path(data_root)
    if not root.is_dir():
        raise ErasureError(f"data root not found: {root}")
    when = now()
    report = ErasureReport()
    clicks = user_clicks(root, user_id)
    register = erasure_register(root)
    erase_data_root(root, user_id, report, skip=[register])
    if raw_uri:
        erase_remote_raw(raw_uri, user_id, report, s3_client)
    rebuilt = rebuild_aggregates(root, report.hours, epoch_ms, coclick_max_distance)
    if rebuilt:
        report.files.append(f"aggregates rebuilt for {len(rebuilt)} hours")
    if report.removed["gx_store"] and gx_dir is not None and rebuild_gx_docs(root, Path(gx_dir)):
        report.files.append("GX data docs rebuilt from the scrubbed results")
    repo_root = dvc_repo_root(root) if dvc else None
    if repo_root is not None:
        inside = root.resolve()
        for out in dvc_outputs(repo_root):
            if out.is_dir() and inside not in [out.resolve(), *out.resolve().parents] \
                    and out.resolve() not in inside.parents:
                erase_tree(out, user_id, report, lambda _path: "models")
    erase_event_logs(event_logs, user_id, report)
    if state_store is not None:
        erase_online_state(state_store, user_id, report)
    else:
        report.not_reached.append("in-process user state of running API replicas (expires after serve.state_ttl_seconds)")
    if user_store is not None:
        erase_user_store(*user_store, user_id, report)
    report.not_reached.append("the bundle and index a running API loaded into memory (restart the API: "
                              "`docker compose restart api`, or a new ECS deployment)")
    # The files are rewritten by now: whatever fails below is said in the record, which is always written (the
    # register is what keeps restored copies out of training).
    if registry is not None:
        try:
            erase_model_registry(registry, user_id, clicks, report, when)
        except Exception as error:  # noqa: BLE001 - any registry failure leaves the record to write
            report.not_reached.append(f"the model registry ({type(error).__name__}: {error}); run the command "
                                      "again once it answers")
    else:
        report.not_reached.append("the model registry (none given, or none exists yet)")
    if repo_root is not None:
        try:
            settle_dvc(repo_root, report)
        except Exception as error:  # noqa: BLE001 - as above
            report.not_reached.append(f"DVC's cache and remote ({type(error).__name__}: {error}); run the "
                                      "command again, or `dvc commit -f` the rewritten stages and "
                                      "`dvc gc --workspace --cloud --force`")
    record = record_erasure(register, user_id, key, report, when)
    return report, record


def main(argv: list[str] | None = None) -> int:
    parser = step_parser("forget-user", __doc__, data_root="the dataset to erase the user from")
    parser.add_argument("user_id", type=int, help="the Globo user id to erase")
    parser.add_argument("--raw-uri", help="also rewrite drops here (default: params storage.raw_uri)")
    parser.add_argument("--yes", action="store_true", help="do it (without it, nothing is changed)")
    args, config = parse_step(parser, argv)

    serve, paths = config["serve"], config["paths"]
    root = args.data_root
    raw_uri = args.raw_uri or config["storage"].get("raw_uri")
    if args.user_id < 0:
        parser.error("user_id must be >= 0")
    if not args.yes:
        print(f"newsrec forget-user: would erase user {args.user_id} under {root}"
              + (f" and {raw_uri}" if raw_uri else "") + "; add --yes to do it", file=sys.stderr)
        return 2
    try:
        key = erasure_key(KEY_ENV)
        store = None
        if serve.get("redis_url"):
            from serving.state import make_state_store

            store = make_state_store(serve["redis_url"], serve["state_prefix"], int(serve["state_max_clicks"]),
                                     int(serve["state_ttl_seconds"]), int(serve["state_max_users"]))
        from pipelines.user_store import UserStoreConfig

        users = UserStoreConfig.from_serve(serve)
        report, _record = forget_user(
            args.user_id, root, key=key, raw_uri=raw_uri,
            event_logs=[Path(paths["impression_log"]), Path(paths["click_log"])], state_store=store,
            user_store=(users.client(), users) if users is not None else None,
            registry=_model_registry(config), gx_dir=Path(paths["gx"]), epoch_ms=int(config["data"]["epoch_ms"]),
            coclick_max_distance=int(config["aggregates"]["coclick_max_distance"]),
        )
    except ErasureError as error:
        print(f"newsrec forget-user: {error}", file=sys.stderr)
        return 1
    rows = {k: v for k, v in report.removed.items() if v and k != "dvc_cache"}
    removed = ", ".join(f"{k} {v}" for k, v in rows.items()) or "nothing (no data held)"
    print(f"erased: {removed}; {len(report.files)} files rewritten; recorded in {erasure_register(root)}")
    for item in report.files:
        if not Path(item).exists():  # the lines that say what was done beside rewriting files
            print(f"  {item}")
    for item in report.notes:
        print(item)
    for item in report.not_reached:
        print(f"not reachable from here: {item}")
    return 0


def _model_registry(config: dict) -> ModelRegistry | None:
    """The MLflow registry the config names (tracking store, experiment, registered model); None when it is a
    SQLite file that does not exist (nothing was ever registered, and none is created here)."""
    import mlflow
    from mlflow import MlflowClient

    tracking = config["mlflow"]
    uri = str(tracking["tracking_uri"])
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    mlflow.set_tracking_uri(tracking["tracking_uri"])
    client = MlflowClient(tracking_uri=tracking["tracking_uri"], registry_uri=tracking["tracking_uri"])
    return ModelRegistry(client, config["register"]["model_name"], tracking["experiment"],
                         int(config["data"]["epoch_ms"]))
