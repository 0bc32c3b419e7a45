"""Object storage for raw drops: the same calls for a local folder and for `s3://bucket/prefix`.

A raw location (params `storage.raw_uri`; null means `<paths.data>/raw`) holds the Globo layout:
articles_metadata.csv, articles_embeddings.pickle and clicks/clicks_hour_NNN.csv, plus the hourly article
drops articles/articles_hour_NNN.csv + articles/embeddings_hour_NNN.pickle. Upstream systems land
hourly drops there (`newsrec storage land` plays that part for a local dataset); the hourly DAG's sensor
asks `hour_available`; validation stages what it needs into `<paths.data>/raw/` with `stage_raw` and
validates the local copy, so Great Expectations and duckdb always read local files and a drop is never
read half-uploaded (an S3 object appears whole or not at all).

S3 goes through boto3. The endpoint and credentials come from boto3's own configuration
(AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_* keys, profiles, the task role on AWS), so MinIO, a moto
server and AWS itself need no code change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines import columns as C
from pipelines.config import parse_step, step_parser
from pipelines.errors import InputError, NewsrecError
from pipelines.fileio import atomic_write

RAW_SIDE_FILES = (C.METADATA_FILE, C.EMBEDDINGS_FILE, C.IMPORT_FILE)  # import.json: see validate
# An article drop's files, in the order they are landed: the csv last, since validation takes an hour's
# article drop as there once its csv is (see pipelines.validate.list_hours).
ARTICLE_DROP_FILES = (C.EMBEDDINGS_HOUR, C.ARTICLES_DIR)


class StorageError(NewsrecError, RuntimeError):
    """A location is malformed, missing, or cannot be read or written."""


class NotLandedError(StorageError, FileNotFoundError):
    """The file (an hourly drop, an object) is not there (yet)."""


@dataclass(frozen=True)
class Location:
    """Where a URI points: a bucket and key prefix on S3, or a local path."""

    uri: str
    bucket: str | None
    key: str
    path: Path | None

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None


def parse(uri: str | os.PathLike[str]) -> Location:
    """`s3://bucket/some/key` or a local path (`file://` accepted); a bad S3 URI is an error."""
    text = os.fspath(uri)
    if text.startswith("s3://"):
        bucket, _, key = text[len("s3://") :].partition("/")
        if not bucket or not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
            raise StorageError(f"not a valid S3 bucket name in {text!r}")
        return Location(text, bucket, key.strip("/"), None)
    if "://" in text and not text.startswith("file://"):
        raise StorageError(f"unsupported storage scheme in {text!r} (use s3:// or a local path)")
    path = Path(text.removeprefix("file://"))
    return Location(text, None, "", path)


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """`uri` with path parts appended, keeping its scheme."""
    loc = parse(uri)
    if loc.is_s3:
        key = "/".join(p.strip("/") for p in (loc.key, *parts) if p.strip("/"))
        return f"s3://{loc.bucket}/{key}" if key else f"s3://{loc.bucket}"
    return str(loc.path.joinpath(*parts))


@lru_cache(maxsize=1)
def s3_client() -> Any:
    """The process's boto3 S3 client (imported lazily: the CLI's --help never pays for boto3)."""
    import boto3

    return boto3.client("s3")


def _client(client: Any | None) -> Any:
    return s3_client() if client is None else client


def _is_missing(error: Exception) -> bool:
    code = str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def list_files(uri: str, client: Any | None = None) -> list[str]:
    """Names of every file under `uri`, relative to it, sorted ('' prefix: the whole bucket)."""
    loc = parse(uri)
    if not loc.is_s3:
        if not loc.path.exists():
            return []
        return sorted(p.relative_to(loc.path).as_posix() for p in loc.path.rglob("*") if p.is_file())
    prefix = f"{loc.key}/" if loc.key else ""
    names: list[str] = []
    pages = _client(client).get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix)
    try:
        for page in pages:
            names += [obj["Key"][len(prefix) :] for obj in page.get("Contents", [])]
    except Exception as error:  # botocore's ClientError; boto3 is imported lazily
        if _is_missing(error):
            raise NotLandedError(f"bucket not found: {loc.bucket}") from error
        raise
    return sorted(n for n in names if n and not n.endswith("/"))


def stat(uri: str, client: Any | None = None) -> tuple[int, float] | None:
    """(size in bytes, modification time as epoch seconds) of a file, None when it does not exist."""
    loc = parse(uri)
    if not loc.is_s3:
        if not loc.path.is_file():
            return None
        st = loc.path.stat()
        return st.st_size, st.st_mtime
    try:
        head = _client(client).head_object(Bucket=loc.bucket, Key=loc.key)
    except Exception as error:
        if _is_missing(error):
            return None
        raise
    return int(head["ContentLength"]), head["LastModified"].timestamp()


def exists(uri: str, client: Any | None = None) -> bool:
    """Whether a file exists at `uri`."""
    return stat(uri, client) is not None


def download(uri: str, dest: Path, client: Any | None = None) -> Path:
    """Copy the file at `uri` to the local path `dest` (written under a temporary name, then renamed)."""
    loc = parse(uri)
    if not loc.is_s3:
        if not loc.path.is_file():
            raise NotLandedError(f"no such file: {loc.path}")
        import shutil

        return atomic_write(Path(dest), lambda tmp: shutil.copyfile(loc.path, tmp))
    if not exists(uri, client):
        raise NotLandedError(f"no such object: {uri}")
    return atomic_write(Path(dest), lambda tmp: _client(client).download_file(loc.bucket, loc.key, str(tmp)))


def upload(src: Path, uri: str, client: Any | None = None) -> str:
    """Copy the local file `src` to `uri`; an S3 object appears whole, a local file by rename."""
    src = Path(src)
    if not src.is_file():
        raise StorageError(f"no such file: {src}")
    loc = parse(uri)
    if not loc.is_s3:
        import shutil

        atomic_write(loc.path, lambda tmp: shutil.copyfile(src, tmp))
    else:
        _client(client).upload_file(str(src), loc.bucket, loc.key)
    return uri


def write_bytes(uri: str, data: bytes, client: Any | None = None) -> str:
    """Replace the file at `uri` with `data`."""
    loc = parse(uri)
    if not loc.is_s3:
        atomic_write(loc.path, lambda tmp: Path(tmp).write_bytes(data))
    else:
        _client(client).put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
    return uri


def read_bytes(uri: str, client: Any | None = None) -> bytes:
    """The content of the file at `uri`."""
    loc = parse(uri)
    if not loc.is_s3:
        if not loc.path.is_file():
            raise NotLandedError(f"no such file: {loc.path}")
        return loc.path.read_bytes()
    try:
        return _client(client).get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    except Exception as error:
        if _is_missing(error):
            raise NotLandedError(f"no such object: {uri}") from error
        raise


def delete(uri: str, client: Any | None = None) -> None:
    """Remove the file at `uri` (no error when it is already gone)."""
    loc = parse(uri)
    if not loc.is_s3:
        loc.path.unlink(missing_ok=True)
    else:
        _client(client).delete_object(Bucket=loc.bucket, Key=loc.key)


def make_buckets(names: Iterable[str], client: Any | None = None) -> list[str]:
    """Create the buckets that do not exist yet; returns the ones created."""
    s3 = _client(client)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    created = []
    for name in names:
        parse(f"s3://{name}")  # validates the name
        if name not in existing:
            region = s3.meta.region_name
            extra = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            s3.create_bucket(Bucket=name, **extra)
            created.append(name)
    return created


# --- the raw layout --------------------------------------------------------------------------------------


def raw_uri(data_root: str | Path, params_uri: str | None = None) -> str:
    """Where raw drops are read from: `storage.raw_uri` when set, else `<data_root>/raw`."""
    return params_uri or str(Path(data_root) / "raw")


def hour_uri(raw: str, hour: int, kind: str = C.CLICKS_DIR) -> str:
    """The URI of hour `hour`'s click file under the raw location `raw` (`kind` "articles": its article
    csv, "embeddings": its embeddings pickle)."""
    folder = C.CLICKS_DIR if kind == C.CLICKS_DIR else C.ARTICLES_DIR
    return join(raw, folder, C.hour_file_name(hour, kind))


def hours_available(raw: str, client: Any | None = None, kind: str = C.CLICKS_DIR) -> list[int]:
    """The hours whose click file (`kind` "articles": article csv) is present under the raw location, sorted."""
    names = list_files(join(raw, kind), client)
    return sorted(h for name in names if (h := C.hour_of_file(name, kind)) is not None)


def hour_available(raw: str, hour: int, client: Any | None = None) -> bool:
    """Whether hour `hour`'s drop has landed (what the hourly DAG's sensor waits for)."""
    return exists(hour_uri(raw, hour), client)


def land_drops(
    src_raw: Path, raw: str, hours: Sequence[int] | None = None, client: Any | None = None
) -> list[str]:
    """Copy a local Globo-format raw folder's side files and hourly drops (clicks, article drops) to the raw
    location.

    The side files go first, so a sensor that sees an hour's drop can rely on the metadata being there.
    """
    src_raw = Path(src_raw)
    clicks = src_raw / C.CLICKS_DIR
    if not (src_raw / C.METADATA_FILE).is_file() or not clicks.is_dir():
        raise StorageError(f"{src_raw} is not a Globo-format raw folder ({C.METADATA_FILE} and {C.CLICKS_DIR}/)")
    local_hours = hours_available(str(src_raw))
    article_hours = hours_available(str(src_raw), kind=C.ARTICLES_DIR)
    wanted = sorted(set(local_hours) | set(article_hours)) if hours is None else sorted(set(hours))
    missing = sorted(set(wanted) - set(local_hours) - set(article_hours))
    if missing:
        raise StorageError(f"hours not in {clicks}: {missing}")
    landed = [upload(src_raw / name, join(raw, name), client) for name in RAW_SIDE_FILES if (src_raw / name).is_file()]
    for h in wanted:
        # An hour's new articles before its clicks: a sensor that sees the clicks finds the articles there.
        for kind in ARTICLE_DROP_FILES:
            local = Path(hour_uri(str(src_raw), h, kind))
            if local.is_file():
                landed.append(upload(local, hour_uri(raw, h, kind), client))
        if (clicks / C.hour_file_name(h)).is_file():
            landed.append(upload(clicks / C.hour_file_name(h), hour_uri(raw, h), client))
    return landed


def _fresh(remote: tuple[int, float], local: Path) -> bool:
    if not local.is_file():
        return False
    st = local.stat()
    return st.st_size == remote[0] and st.st_mtime >= remote[1]


def stage_raw(raw: str, data_root: str | Path, hours: Sequence[int], client: Any | None = None) -> list[Path]:
    """Bring the side files and the given hours' drops from the raw location into `<data_root>/raw/`.

    Returns the local files written. A side file already staged and not changed since is kept (the Globo
    embeddings are 364 MB); an hour file is always re-copied, so re-running an hour sees its latest drop.
    An hour's article drop comes along when it is there (not every hour has new articles). An hour with
    neither a click nor an article drop is an error: the caller (the sensor) decides when to wait.
    """
    local_raw = Path(data_root) / "raw"
    source = parse(raw)
    if not source.is_s3 and source.path.resolve() == local_raw.resolve():
        return []  # the raw location is the local raw folder itself
    written = []
    for name in RAW_SIDE_FILES:
        remote = stat(join(raw, name), client)
        if remote is None:
            if name == C.METADATA_FILE:
                raise NotLandedError(f"no {C.METADATA_FILE} under {raw}")
            continue
        if not _fresh(remote, local_raw / name):
            written.append(download(join(raw, name), local_raw / name, client))
    for hour in sorted(set(hours)):
        found = [k for k in (*ARTICLE_DROP_FILES, C.CLICKS_DIR) if exists(hour_uri(raw, hour, k), client)]
        if not found:
            raise NotLandedError(f"hour {hour} has not landed: {hour_uri(raw, hour)}")
        for kind in found:
            local = Path(hour_uri(str(local_raw), hour, kind))
            written.append(download(hour_uri(raw, hour, kind), local, client))
    return written


def parse_hours(spec: str) -> list[int]:
    """'3', '0-23' or '0,5,7-9' -> sorted hour numbers."""
    hours: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not re.fullmatch(r"\d+(-\d+)?", part):
            raise InputError(f"bad hour spec {spec!r}: use N, A-B or a comma-separated list")
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if b < a:
            raise InputError(f"bad hour range {part!r}: end before start")
        hours.update(range(a, b + 1))
    return sorted(hours)


def main(argv: list[str] | None = None) -> int:
    parser = step_parser("storage", __doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("ls", help="list the files under a location")
    ls.add_argument("uri")
    hours = sub.add_parser("hours", help="list the hours whose drop has landed under a raw location")
    hours.add_argument("uri", nargs="?", help="raw location (default: storage.raw_uri, else <paths.data>/raw)")
    land = sub.add_parser("land", help="copy a local raw folder's hourly drops to a raw location")
    land.add_argument("--from", dest="src", required=True, type=Path, help="local Globo-format raw folder")
    land.add_argument("--to", dest="dst", help="raw location (default: storage.raw_uri)")
    land.add_argument("--hours", type=parse_hours, help="e.g. 0-23 (default: every hour in --from)")
    stage = sub.add_parser("stage", help="copy drops from a raw location into <data-root>/raw")
    stage.add_argument("--from", dest="src", help="raw location (default: storage.raw_uri)")
    stage.add_argument("--data-root", type=Path, help="default: params paths.data")
    which = stage.add_mutually_exclusive_group(required=True)
    which.add_argument("--hours", type=parse_hours)
    which.add_argument("--all", action="store_true", help="every hour that has landed")
    mb = sub.add_parser("make-buckets", help="create S3 buckets that do not exist yet")
    mb.add_argument("names", nargs="+")
    args, config = parse_step(parser, argv)

    configured = config["storage"].get("raw_uri")
    data_root = Path(config["paths"]["data"])
    if args.action == "ls":
        print("\n".join(list_files(args.uri)))
    elif args.action == "hours":
        print(" ".join(str(h) for h in hours_available(args.uri or raw_uri(data_root, configured))))
    elif args.action == "land":
        dst = args.dst or configured
        if not dst:
            parser.error("--to is required when params storage.raw_uri is not set")
        landed = land_drops(args.src, dst, args.hours)
        print(f"landed {len(landed)} files under {dst}")
    elif args.action == "stage":
        src = args.src or configured
        if not src:
            parser.error("--from is required when params storage.raw_uri is not set")
        root = args.data_root
        wanted = hours_available(src) if args.all else args.hours
        written = stage_raw(src, root, wanted)
        print(f"staged {len(written)} files into {root / 'raw'}")
    elif args.action == "make-buckets":
        created = make_buckets(args.names)
        print(f"created: {' '.join(created) or 'none (all exist)'}")
    return 0
