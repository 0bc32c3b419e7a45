"""Raw drops on local disk and on S3 (a moto server on loopback, reached through real boto3 over HTTP)."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipelines import columns as C
from pipelines import storage

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("uri", "bucket", "key", "path"),
    [
        ("s3://raw-bucket/globo/v1/", "raw-bucket", "globo/v1", None),
        ("s3://raw-bucket", "raw-bucket", "", None),
        ("data/raw", None, "", Path("data/raw")),
        ("file:///srv/raw", None, "", Path("/srv/raw")),
    ],
)
def test_parse(uri, bucket, key, path):
    loc = storage.parse(uri)
    assert (loc.bucket, loc.key, loc.path) == (bucket, key, path)


@pytest.mark.unit
@pytest.mark.parametrize("uri", ["s3://", "s3://UPPER/x", "gs://bucket/x", "s3://a/x"])
def test_parse_rejects_bad_uris(uri):
    with pytest.raises(storage.StorageError):
        storage.parse(uri)


@pytest.mark.unit
def test_join_and_hour_uri():
    assert storage.join("s3://b-1/pre/", "clicks", "x.csv") == "s3://b-1/pre/clicks/x.csv"
    assert storage.join("s3://b-1", "x.csv") == "s3://b-1/x.csv"
    assert storage.hour_uri("s3://b-1/p", 7) == "s3://b-1/p/clicks/clicks_hour_007.csv"
    assert storage.hour_uri("d/raw", 7) == str(Path("d/raw/clicks/clicks_hour_007.csv"))


@pytest.mark.unit
def test_parse_hours():
    assert storage.parse_hours("3") == [3]
    assert storage.parse_hours("0-2,7,1") == [0, 1, 2, 7]
    for bad in ("3-1", "a", "1-", ""):
        with pytest.raises(ValueError):
            storage.parse_hours(bad)


def _check_staged(src_raw: Path, dest_root: Path, hours: list[int]) -> None:
    for name in (C.METADATA_FILE, C.EMBEDDINGS_FILE):
        assert filecmp.cmp(src_raw / name, dest_root / "raw" / name, shallow=False)
    staged = sorted((dest_root / "raw" / C.CLICKS_DIR).iterdir())
    assert [p.name for p in staged] == [C.hour_file_name(h) for h in hours]
    for p in staged:
        assert filecmp.cmp(src_raw / C.CLICKS_DIR / p.name, p, shallow=False)


@pytest.mark.data
def test_local_land_and_stage(tiny_raw, tmp_path):
    src = tiny_raw / "raw"
    landing = tmp_path / "landing"
    storage.land_drops(src, str(landing), hours=[0, 1, 2])
    assert storage.hours_available(str(landing)) == [0, 1, 2]
    assert storage.hour_available(str(landing), 2) and not storage.hour_available(str(landing), 3)
    storage.stage_raw(str(landing), tmp_path / "root", [1, 2])
    _check_staged(src, tmp_path / "root", [1, 2])
    with pytest.raises(storage.StorageError, match="hour 5 has not landed"):
        storage.stage_raw(str(landing), tmp_path / "root", [5])
    with pytest.raises(storage.StorageError, match="hours not in"):
        storage.land_drops(src, str(landing), hours=[999])


@pytest.mark.data
def test_article_drops_are_landed_and_staged_with_their_hour(tiny_drops_raw, tmp_path):
    src = tiny_drops_raw / "raw"
    landing = tmp_path / "landing"
    work = tmp_path / "src"
    shutil.copytree(src, work)
    for kind in storage.ARTICLE_DROP_FILES:  # hour 1 publishes nothing: it has clicks only
        (work / C.ARTICLES_DIR / C.hour_file_name(1, kind)).unlink()
    (work / C.CLICKS_DIR / C.hour_file_name(2)).unlink()  # hour 2: new articles, no clicks yet

    landed = storage.land_drops(work, str(landing), hours=[0, 1, 2])
    names = [Path(p).name for p in landed]
    # an hour's articles before its clicks, and a drop's embeddings before its csv
    assert names[2:] == [C.hour_file_name(0, C.EMBEDDINGS_HOUR), C.hour_file_name(0, C.ARTICLES_DIR),
                         C.hour_file_name(0), C.hour_file_name(1),
                         C.hour_file_name(2, C.EMBEDDINGS_HOUR), C.hour_file_name(2, C.ARTICLES_DIR)]
    assert storage.hours_available(str(landing)) == [0, 1]
    assert storage.hours_available(str(landing), kind=C.ARTICLES_DIR) == [0, 2]

    root = tmp_path / "root"
    storage.stage_raw(str(landing), root, [0, 1, 2])
    staged = sorted(p.name for p in (root / "raw" / C.ARTICLES_DIR).iterdir())
    assert staged == sorted(names[2:4] + names[6:])
    for name in staged:
        assert filecmp.cmp(work / C.ARTICLES_DIR / name, root / "raw" / C.ARTICLES_DIR / name, shallow=False)
    with pytest.raises(storage.StorageError, match="hour 3 has not landed"):
        storage.stage_raw(str(landing), root, [3])


@pytest.mark.integration
def test_s3_land_list_stage(tiny_raw, tmp_path, s3_env):
    bucket = f"raw-{uuid.uuid4().hex[:12]}"
    assert storage.make_buckets([bucket]) == [bucket]
    assert storage.make_buckets([bucket]) == []  # idempotent
    raw = f"s3://{bucket}/globo"
    src = tiny_raw / "raw"
    all_hours = storage.hours_available(str(src))
    assert len(all_hours) >= 20

    assert storage.hours_available(raw) == []
    assert not storage.hour_available(raw, 0)
    storage.land_drops(src, raw, hours=all_hours[:3])
    assert storage.hours_available(raw) == all_hours[:3]
    assert storage.hour_available(raw, all_hours[2])
    assert f"{C.CLICKS_DIR}/{C.hour_file_name(all_hours[0])}" in storage.list_files(raw)

    root = tmp_path / "root"
    written = storage.stage_raw(raw, root, all_hours[:3])
    assert len(written) == 5  # two side files + three hours
    _check_staged(src, root, all_hours[:3])
    # The side files are unchanged on S3, so a second staging copies only the hour asked for.
    assert storage.stage_raw(raw, root, [all_hours[0]]) == [root / "raw" / C.CLICKS_DIR / C.hour_file_name(all_hours[0])]

    with pytest.raises(storage.StorageError, match="has not landed"):
        storage.stage_raw(raw, root, [all_hours[3]])
    with pytest.raises(storage.StorageError, match="bucket not found"):
        storage.list_files(f"s3://missing-{bucket}/x")


@pytest.mark.integration
def test_s3_round_trip_of_bytes(s3_env):
    bucket = f"bytes-{uuid.uuid4().hex[:12]}"
    storage.make_buckets([bucket])
    uri = f"s3://{bucket}/a/b.txt"
    assert storage.stat(uri) is None
    storage.write_bytes(uri, b"hello")
    assert storage.read_bytes(uri) == b"hello"
    assert storage.stat(uri)[0] == 5
    storage.delete(uri)
    assert not storage.exists(uri)
    with pytest.raises(storage.StorageError, match="no such object"):
        storage.read_bytes(uri)


@pytest.mark.integration
def test_cli_lands_and_stages_through_a_separate_process(tiny_raw, tmp_path, s3_env):
    """The CLI in a child process finds the endpoint through boto3's own AWS_ENDPOINT_URL_S3."""
    bucket = f"cli-{uuid.uuid4().hex[:12]}"
    newsrec = [sys.executable, "-m", "pipelines.cli"]
    env = dict(os.environ, NEWSREC__STORAGE__RAW_URI=f"s3://{bucket}/drops")

    def run(*args: str) -> str:
        done = subprocess.run([*newsrec, *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("storage", "make-buckets", bucket)
    assert "landed 4 files" in run("storage", "land", "--from", str(tiny_raw / "raw"), "--hours", "0-1")
    assert run("storage", "hours").split() == ["0", "1"]
    assert "staged 4 files" in run("storage", "stage", "--all", "--data-root", str(tmp_path / "root"))
    _check_staged(tiny_raw / "raw", tmp_path / "root", [0, 1])

    missing = subprocess.run(
        [*newsrec, "storage", "stage", "--hours", "9", "--data-root", str(tmp_path / "root")],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 1 and "hour 9 has not landed" in missing.stderr
