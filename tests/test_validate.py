"""Hourly validation: good hours land, every bad-drop kind is quarantined with its reason, re-runs are stable,
and the real Globo hour passes."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines import columns as C
from pipelines.baddrops import BAD_DROP_KINDS, inject_bad_drop
from pipelines.cli import main as cli
from pipelines.config import load_params
from pipelines.flows import quarantine_alert
from pipelines.offline_pages import remote_assets
from pipelines.validate import (
    LANDED,
    QUARANTINED,
    UNREADABLE,
    MetadataError,
    Settings,
    archive_dir,
    embedding_problems,
    list_hours,
    load_embeddings,
    main,
    parse_csv,
    partition_dir,
    quarantine_dir,
    summary_path,
    unvalidated_files,
    validate_all,
    validate_hour,
    validate_hour_drops,
    volume_reference,
)

ROOT = Path(__file__).resolve().parents[1]
GX_DIR = ROOT / "great_expectations"
EPOCH_MS = load_params("data", ROOT / "params.yaml")["epoch_ms"]
# No volume floor: tiny's hours are a few hundred rows, and the spike tests must see the ratio at work.
SETTINGS = dataclasses.replace(Settings.from_params(load_params("validate", ROOT / "params.yaml")),
                               volume_floor_rows=0)
# tiny has 24 hours, fewer than the day of history the default asks before it judges volume.
SHORT_HISTORY = dataclasses.replace(SETTINGS, volume_min_history=8)
# Bad kinds go to hours 1..10 of tiny; the spike goes to a busy afternoon hour with landed hours before it.
BAD_HOURS = {kind: (20 if kind == "volume_spike" else i + 1) for i, kind in enumerate(BAD_DROP_KINDS)}


def _copy_raw(src_root: Path, dst_root: Path) -> Path:
    shutil.copytree(src_root / "raw", dst_root / "raw")
    return dst_root


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(root: Path, hours=None, settings: Settings = SETTINGS, docs: bool = False):
    return validate_all(root, hours, epoch_ms=EPOCH_MS, settings=settings, gx_dir=GX_DIR, docs=docs)


# --------------------------------------------------------------------------------------------- reading


@pytest.mark.unit
def test_parse_types_required_columns_and_keeps_extras_as_strings():
    head = ",".join(C.CLICK_COLUMNS)
    data = f"{head},note\n" + ",".join(["1"] * 12) + ",x\n" + ",".join(["2"] * 12) + ",\n"
    parsed = parse_csv(data.encode(), C.CLICK_COLUMNS)
    assert parsed.problems == []
    assert list(parsed.frame.columns) == [*C.CLICK_COLUMNS, "note"]
    assert all(parsed.frame[c].dtype == np.int64 for c in C.CLICK_COLUMNS)
    assert parsed.frame["note"].tolist() == ["x", None]


@pytest.mark.unit
def test_parse_nulls_become_nullable_ints_for_the_suite_to_count():
    head = ",".join(C.CLICK_COLUMNS)
    data = f"{head}\n" + ",".join([""] + ["1"] * 11) + "\n" + ",".join(["2"] * 12) + "\n"
    parsed = parse_csv(data.encode(), C.CLICK_COLUMNS)
    assert parsed.problems == []
    assert str(parsed.frame[C.USER_ID].dtype) == "Int64"
    assert parsed.frame[C.USER_ID].isna().tolist() == [True, False]


@pytest.mark.unit
@pytest.mark.parametrize(
    "data, check, words",
    [
        (b"", "empty_file", "0 bytes"),
        (",".join(C.CLICK_COLUMNS[:-1]).encode() + b"\n" + b"1," * 10 + b"1\n", "schema", C.CLICK_COLUMNS[-1]),
        (",".join(C.CLICK_COLUMNS).encode() + b"\n" + b"1," * 11 + b"1.5\n", "dtypes", "1.5"),
        (",".join(C.CLICK_COLUMNS).encode() + b"\n" + b"1," * 11 + b"99999999999999999999\n", "dtypes", "int64"),
        (",".join(C.CLICK_COLUMNS).encode() + b"\n" + b"1," * 11 + b"1\n1,2,3", "parse", "Expected 12 columns"),
        (",".join(C.CLICK_COLUMNS).encode() + b"," + C.USER_ID.encode() + b"\n", "schema", "more than once"),
        (",".join(C.CLICK_COLUMNS).encode() + b"\n" + b"1," * 11 + b"0x13\n", "dtypes", "plain decimal"),
        (",".join(C.CLICK_COLUMNS).encode() + b"\n" + b"1," * 11 + b"+942\n", "dtypes", "['+942']"),
        (",".join(C.CLICK_COLUMNS).encode() + b"\n" + b"1," * 11 + "\u0663\n".encode(), "dtypes", "plain decimal"),
    ],
    ids=["zero_bytes", "missing_column", "float", "overflow", "truncated", "duplicate_header", "hex", "plus_sign",
         "non_ascii_digit"],
)
def test_parse_stops_what_gx_cannot_be_shown(data, check, words):
    parsed = parse_csv(data, C.CLICK_COLUMNS)
    assert parsed.frame is None
    assert [c for c, _ in parsed.problems] == [check]
    assert words in parsed.problems[0][1]


@pytest.mark.unit
def test_a_header_far_wider_than_the_contract_is_refused_before_the_body_is_read():
    head = ",".join([*C.CLICK_COLUMNS, *(f"extra_{i:05d}" for i in range(20_000))]).encode()
    row = b"1," * 20_011 + b"1\n"
    start = time.perf_counter()
    parsed = parse_csv(head + b"\n" + row * 20, C.CLICK_COLUMNS)
    assert time.perf_counter() - start < 1.0  # was ~35 s for these 600 kB (75 s and 1.2 GB for 12 MB)
    assert parsed.frame is None and [c for c, _ in parsed.problems] == ["schema"]
    assert "20,012 columns" in parsed.problems[0][1]


@pytest.mark.unit
def test_header_only_file_is_an_empty_hour_not_a_problem():
    parsed = parse_csv((",".join(C.CLICK_COLUMNS) + "\n").encode(), C.CLICK_COLUMNS)
    assert parsed.problems == [] and len(parsed.frame) == 0 and parsed.rows == 0


# --------------------------------------------------------------------------------------------- volume


@pytest.mark.unit
def test_volume_reference_prefers_the_tighter_reference():
    s = dataclasses.replace(SETTINGS, volume_max_ratio=5.0, volume_days=7, volume_window_hours=24,
                            volume_min_history=24)
    # Two days: nights of 100 rows, days of 1,000.
    rows = {h: (100 if h % 24 < 8 else 1000) for h in range(48)}
    night = volume_reference(rows, 50, s)  # same hour yesterday (hour 26: 100) beats the trailing median
    assert (night.median_rows, night.max_rows, night.hours) == (100, 500, (26, 2))
    day = volume_reference(rows, 60, s)  # hour 36 and hour 12 are 1,000; trailing 24 h median is 1,000 too
    assert day.max_rows == 5000


@pytest.mark.unit
def test_volume_floor_keeps_a_small_streams_swings_from_being_spikes():
    s = dataclasses.replace(SETTINGS, volume_max_ratio=5.0, volume_window_hours=24, volume_min_history=3,
                            volume_floor_rows=1000)
    small = volume_reference({0: 30, 1: 25, 2: 31}, 3, s)
    assert small.max_rows == 1000 and "floor of 1,000 rows" in small.describe()
    big = volume_reference({0: 3000, 1: 2500, 2: 3100}, 3, s)
    assert big.max_rows == 15000 and "floor" not in big.describe()


@pytest.mark.unit
def test_volume_reference_ignores_empty_and_later_hours():
    s = dataclasses.replace(SETTINGS, volume_max_ratio=5.0, volume_window_hours=24, volume_min_history=3)
    assert volume_reference({0: 10, 1: 0, 2: 10, 3: 30}, 4, s).median_rows == 10  # hour 1 (empty) left out
    later_only = {h: 10 for h in range(5, 30)}
    assert volume_reference(later_only, 3, s) is None  # later hours never count (and no floor here)
    assert volume_reference({0: 4, 1: 6, 2: 8}, 3, s).max_rows == 30


@pytest.mark.unit
def test_volume_is_judged_on_thin_history_and_never_waved_through():
    # Used to be None ("volume not judged: no history yet") until volume_min_history landed hours existed, so a
    # 10x spike after a few quarantined hours landed.
    s = dataclasses.replace(SETTINGS, volume_max_ratio=5.0, volume_window_hours=24, volume_min_history=24,
                            volume_floor_rows=100)
    thin = volume_reference({0: 10, 1: 30, 2: 20}, 3, s)  # the busiest landed hour: a morning ramp passes
    assert (thin.max_rows, thin.hours) == (150, (0, 1, 2)) and "busiest of 3 landed hours" in thin.describe()
    # Every hour of the last day quarantined: the landed hours before them still bound it.
    far = volume_reference({0: 40, 1: 50}, 40, s)
    assert far.max_rows == 250 and far.hours == (0, 1)
    # Nothing landed before it, but earlier hours arrived (and were quarantined): the floor bounds it.
    floor = volume_reference({}, 5, s)
    assert floor.max_rows == 100 and "no landed hour before it" in floor.describe()
    # Only the first hour of a dataset (nothing arrived before it) has nothing to be judged against.
    assert volume_reference({}, 0, s, earlier_drops=False) is None


@pytest.mark.data
def test_a_spike_after_quarantined_hours_is_quarantined(tiny_raw, tmp_path):
    root = _copy_raw(tiny_raw, tmp_path)
    clicks = root / "raw" / C.CLICKS_DIR
    for hour in (0, 1, 2):
        inject_bad_drop(clicks, hour, "null_ids")
    inject_bad_drop(clicks, 3, "volume_spike")
    settings = dataclasses.replace(SETTINGS, volume_floor_rows=500)  # tiny's hour 3: ~90 rows, ~900 spiked
    results = _run(root, hours=[0, 1, 2, 3], settings=settings)
    assert [r.status for r in results] == [QUARANTINED] * 4  # the spike used to land: "volume not judged"
    assert results[3].checks == ("volume",) and "floor of 500 rows" in results[3].reason


# --------------------------------------------------------------------------------------------- good data


@pytest.mark.data
def test_every_good_tiny_hour_lands_as_int64_parquet(tiny_raw, tiny_validated):
    raw_files = sorted((tiny_raw / "raw" / C.CLICKS_DIR).glob("clicks_hour_*.csv"))
    assert len(raw_files) == len(list_hours(tiny_validated)) > 0
    for f in raw_files:
        hour = int(f.stem.rsplit("_", 1)[1])
        table = pq.read_table(partition_dir(tiny_validated, hour) / "part-0.parquet")
        assert table.column_names == C.CLICK_COLUMNS
        assert all(str(t) == "int64" for t in table.schema.types)
        pd.testing.assert_frame_equal(table.to_pandas(), pd.read_csv(f).astype(C.CLICK_DTYPES))
    assert not (tiny_validated / "quarantine").exists()
    summary = json.loads(summary_path(tiny_validated).read_text())
    assert summary[LANDED] == len(raw_files) and summary[QUARANTINED] == 0
    total = duckdb.sql(
        f"select count(*) from read_parquet('{tiny_validated}/validated/clicks/*/*.parquet', hive_partitioning=true)"
    ).fetchall()[0][0]
    assert total == summary["rows_landed"] == sum(len(pd.read_csv(f)) for f in raw_files)


@pytest.fixture(scope="module")
def bad_root(tiny_raw, tmp_path_factory):
    """tiny with one bad drop of every kind, validated once: (root, {hour: result}, {hour: bad bytes})."""
    root = _copy_raw(tiny_raw, tmp_path_factory.mktemp("bad_root"))
    clicks = root / "raw" / C.CLICKS_DIR
    bad_bytes = {}
    for kind, hour in BAD_HOURS.items():
        bad_bytes[hour] = inject_bad_drop(clicks, hour, kind, seed=3).read_bytes()
    results = {r.hour: r for r in _run(root, settings=SHORT_HISTORY, docs=True)}
    return root, results, bad_bytes


@pytest.mark.data
@pytest.mark.parametrize("kind", list(BAD_DROP_KINDS))
def test_bad_drop_is_quarantined_whole_with_its_reason(bad_root, kind):
    root, results, bad_bytes = bad_root
    hour = BAD_HOURS[kind]
    r = results[hour]
    check = BAD_DROP_KINDS[kind]
    assert r.status == QUARANTINED, r
    assert r.checks[0] == check or check in r.checks, r
    qdir = quarantine_dir(root, hour)
    assert r.path == str(qdir.relative_to(root))
    kept = qdir / C.hour_file_name(hour)
    assert kept.read_bytes() == bad_bytes[hour]  # moved whole, byte for byte
    assert not (root / "raw" / C.CLICKS_DIR / C.hour_file_name(hour)).exists()
    reason = (qdir / "reason.txt").read_text()
    assert reason.count("\n") == 1 and reason.startswith(r.checks[0] + ":") and f"{check}:" in reason
    result = json.loads((qdir / "result.json").read_text())
    assert result["success"] is False
    assert not partition_dir(root, hour).exists()
    assert sorted(p.name for p in qdir.iterdir()) == sorted([C.hour_file_name(hour), "reason.txt", "result.json"])


@pytest.mark.data
def test_bad_drop_reasons_say_what_is_wrong(bad_root):
    _, results, _ = bad_root
    reason = {kind: results[hour].reason for kind, hour in BAD_HOURS.items()}
    assert "missing columns" in reason["missing_column"]
    assert "unexpected columns ['click_browser']" in reason["extra_column"]
    assert "click_timestamp" in reason["wrong_dtype"] and "not integers" in reason["wrong_dtype"]
    assert "user_id" in reason["null_ids"] and "click_article_id" in reason["null_ids"]
    assert "not in the metadata" in reason["unknown_article"]
    assert "before their session_start" in reason["click_before_session"]
    assert "2017-10-1" in reason["timestamps_outside_hour"]  # the shifted clicks, as dates
    assert "rows repeated whole" in reason["duplicated_rows"]
    assert "truncated" in reason["truncated"] and "Expected 12 columns" in reason["truncated"]
    assert reason["empty"].startswith("empty_file: empty file")
    spike = results[BAD_HOURS["volume_spike"]]
    assert f"{spike.rows:,} rows >" in reason["volume_spike"] and "median of" in reason["volume_spike"]


@pytest.mark.data
def test_gx_failures_keep_the_gx_result_and_parse_failures_name_their_stage(bad_root):
    root, _, _ = bad_root
    gx = json.loads((quarantine_dir(root, BAD_HOURS["unknown_article"]) / "result.json").read_text())
    failed = [r for r in gx["results"] if not r["success"]]
    assert [r["expectation_config"]["type"] for r in failed] == ["expect_column_values_to_be_null"]
    assert gx["meta"]["newsrec"]["expectation_parameters"]["hour_start_ms"] == EPOCH_MS + 5 * C.HOUR_MS
    parse = json.loads((quarantine_dir(root, BAD_HOURS["truncated"]) / "result.json").read_text())
    assert parse["stage"] == "parse" and parse["results"][0]["check"] == "parse"


@pytest.mark.data
def test_good_hours_beside_bad_ones_land_and_summary_and_docs_tell(bad_root):
    root, results, _ = bad_root
    bad = set(BAD_HOURS.values())
    assert {h for h, r in results.items() if r.status == LANDED} == set(results) - bad
    summary = json.loads(summary_path(root).read_text())
    assert summary["quarantined_hours"] == sorted(bad)
    assert summary["hours"]["005"]["checks"] == ["articles"]
    assert (root / "gx" / "docs" / "index.html").exists()
    assert list((root / "gx" / "validations").rglob("*.json"))
    # the pages load every script, style and image from the site itself (no internet on private deployments)
    pages = list((root / "gx" / "docs").rglob("*.html"))
    assert len(pages) > 1
    for page in pages:
        text = page.read_text()
        assert remote_assets(text) == [], page
        for ref in re.findall(r'(?:src|href)="([^"#?:]+\.(?:js|css|png))', text):
            assert (page.parent / ref).is_file(), (page, ref)


# --------------------------------------------------------------------------------------------- re-runs


@pytest.mark.data
def test_rerun_is_idempotent_and_nothing_received_is_lost(tiny_raw, tmp_path):
    root = _copy_raw(tiny_raw, tmp_path)
    raw_file = root / "raw" / C.CLICKS_DIR / C.hour_file_name(3)
    good = raw_file.read_bytes()
    _run(root, hours=[2, 3])
    part = partition_dir(root, 3) / "part-0.parquet"
    first = _sha(part)

    again = _run(root, hours=[3])[0]
    assert again.status == LANDED and _sha(part) == first and again.reason == ""
    assert not (root / "archive").exists()  # the same drop again replaces nothing

    # The hour is dropped again, broken: quarantined with its reason, the landed hour stays (it used to be deleted).
    inject_bad_drop(root / "raw" / C.CLICKS_DIR, 3, "duplicated_rows")
    bad_bytes = raw_file.read_bytes()
    bad = _run(root, hours=[3])[0]
    assert bad.status == QUARANTINED and bad.kept == str(partition_dir(root, 3).relative_to(root))
    assert _sha(part) == first
    reason = (quarantine_dir(root, 3) / "reason.txt").read_text()
    summary = json.loads(summary_path(root).read_text())
    assert summary["hours"]["003"]["kept"] == bad.kept

    # Re-run with the drop only in quarantine: the same verdict, the drop still kept whole.
    assert list_hours(root) == list(range(24))
    rerun = _run(root, hours=[3])[0]
    assert (rerun.status, rerun.checks, rerun.reason, rerun.kept) == (bad.status, bad.checks, bad.reason, bad.kept)
    assert (quarantine_dir(root, 3) / "reason.txt").read_text() == reason

    # A fixed drop arrives: it lands with the same bytes as before; the bad drop it replaces goes to the archive.
    raw_file.write_bytes(good)
    fixed = _run(root, hours=[3])[0]
    assert fixed.status == LANDED and _sha(part) == first
    assert not quarantine_dir(root, 3).exists()
    (kept_bad,) = archive_dir(root, 3).glob("quarantined-*")
    assert (kept_bad / C.hour_file_name(3)).read_bytes() == bad_bytes and (kept_bad / "reason.txt").exists()

    # A second, different good delivery replaces the landed hour; the first version is archived, not lost.
    frame = pd.read_csv(io.BytesIO(good))
    frame.iloc[::-1].to_csv(raw_file, index=False)
    second = _run(root, hours=[3])[0]
    assert second.status == LANDED and _sha(part) != first and "replaced an earlier landed version" in second.reason
    (kept_first,) = archive_dir(root, 3).glob("landed-*")
    assert _sha(kept_first / "part-0.parquet") == first and str(kept_first.relative_to(root)) in second.reason

    assert not [p for p in root.rglob("*.tmp")] and not [p for p in root.rglob(".hour=*")]
    summary = json.loads(summary_path(root).read_text())
    assert summary["hours"]["003"]["status"] == LANDED and summary["hours"]["002"]["status"] == LANDED


@pytest.mark.data
def test_an_article_redelivery_keeps_every_version(tiny_drops_raw, tmp_path):
    root = _copy_raw(tiny_drops_raw, tmp_path)
    hour = 2
    _run(root, hours=[hour])
    landed = partition_dir(root, hour, C.ARTICLES_DIR)
    first = _sha(landed / "part-0.parquet")
    frame, matrix = _read_drop(root, hour)
    _write_drop(root, hour, matrix=b"not a pickle")
    bad = next(r for r in _run(root, hours=[hour]) if r.kind == C.ARTICLES_DIR)
    assert bad.status == QUARANTINED and bad.kept and _sha(landed / "part-0.parquet") == first
    _write_drop(root, hour, frame.iloc[::-1], matrix[::-1].copy())
    good = next(r for r in _run(root, hours=[hour]) if r.kind == C.ARTICLES_DIR)
    assert good.status == LANDED and "replaced an earlier landed version" in good.reason
    (kept,) = archive_dir(root, hour, C.ARTICLES_DIR).glob("landed-*")
    assert _sha(kept / "part-0.parquet") == first and (kept / C.EMBEDDINGS_PART).exists()
    assert len(list(archive_dir(root, hour, C.ARTICLES_DIR).glob("quarantined-*"))) == 1


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.data
def test_every_file_in_the_landing_area_lands_is_quarantined_or_is_reported(tiny_raw, tmp_path, capsys):
    root = _copy_raw(tiny_raw, tmp_path)
    clicks = root / "raw" / C.CLICKS_DIR
    strays = {
        "clicks_hour_50.csv": "not read as hour 50",
        "clicks_hour_0006.csv": "second spelling beside clicks_hour_006.csv",
        "clicks_hour_\u0665\u0660.csv": "not read as hour 50",
        "clicks_hour_052.CSV": "not read as hour 52",
        "notes.txt": "not an hourly file name",
    }
    for name in strays:
        shutil.copy(clicks / C.hour_file_name(5), clicks / name)
    assert main(["--data-root", str(root), "--all", "--no-docs"]) == 0
    out = capsys.readouterr().out
    assert "24 hours: 24 landed" in out and "5 files not validated" in out
    reported = {Path(f["path"]).name: f["reason"] for f in json.loads(summary_path(root).read_text())["unvalidated_files"]}
    assert set(reported) == set(strays)
    for name, words in strays.items():
        assert words in reported[name], (name, reported[name])
        assert f"not validated: raw/clicks/{name}" in out


@pytest.mark.unit
def test_clicks_zip_members_no_hour_reads_are_reported(tmp_path):
    raw = tmp_path / "raw"
    (raw / C.ARTICLES_DIR).mkdir(parents=True)
    head = ",".join(C.CLICK_COLUMNS) + "\n"
    with zipfile.ZipFile(raw / C.CLICKS_ZIP, "w") as zf:
        for name in ("clicks/clicks_hour_000.csv", "clicks_hour_000.csv", "clicks/clicks_hour_1.csv", "clicks/"):
            zf.writestr(name, head)
    (raw / C.ARTICLES_DIR / C.hour_file_name(4, C.EMBEDDINGS_HOUR)).write_bytes(b"")
    reported = {f["path"]: f["reason"] for f in unvalidated_files(tmp_path)}
    assert reported == {
        "raw/clicks.zip:clicks_hour_000.csv": "hour 0 again: only clicks/clicks_hour_000.csv is read",
        "raw/clicks.zip:clicks/clicks_hour_1.csv": reported["raw/clicks.zip:clicks/clicks_hour_1.csv"],
        "raw/articles/embeddings_hour_004.pickle": reported["raw/articles/embeddings_hour_004.pickle"],
    }
    assert "clicks_hour_001.csv" in reported["raw/clicks.zip:clicks/clicks_hour_1.csv"]
    assert "articles_hour_004.csv" in reported["raw/articles/embeddings_hour_004.pickle"]
    outside = tmp_path / "elsewhere.zip"
    (raw / C.CLICKS_ZIP).rename(outside)
    (raw / C.CLICKS_ZIP).symlink_to(outside)
    assert list_hours(tmp_path) == []  # not opened
    assert "outside the landing area" in {f["path"]: f["reason"] for f in unvalidated_files(tmp_path)}["raw/clicks.zip"]
    (raw / C.CLICKS_ZIP).unlink()
    (raw / C.CLICKS_ZIP).write_bytes(b"PK\x03\x04 cut short")  # a corrupt archive stops nothing
    assert list_hours(tmp_path) == []
    assert "cannot be read as a zip" in {f["path"]: f["reason"] for f in unvalidated_files(tmp_path)}["raw/clicks.zip"]


@pytest.mark.data
def test_a_run_killed_mid_swap_is_recovered_at_the_next_run(tiny_raw, tmp_path):
    root = _copy_raw(tiny_raw, tmp_path)
    inject_bad_drop(root / "raw" / C.CLICKS_DIR, 4, "null_ids")
    first = _run(root, hours=[4])[0]
    assert first.status == QUARANTINED
    # Killed between the two renames of a re-check: only the old folder (and the new copy) are left.
    qdir, pid = quarantine_dir(root, 4), _dead_pid()
    qdir.rename(qdir.with_name(f".hour=004.old-{pid}"))
    shutil.copytree(qdir.with_name(f".hour=004.old-{pid}"), qdir.with_name(f".hour=004.tmp-{pid}"))
    (root / "raw" / C.CLICKS_DIR / f".{C.hour_file_name(7)}.pid{pid}.x1y2.tmp").write_text("half a copy")
    assert 4 not in list_hours(root)  # hidden: the drop used to stay there forever

    results = {r.hour: r for r in _run(root)}
    assert results[4].status == QUARANTINED and results[4].reason == first.reason
    assert (qdir / C.hour_file_name(4)).exists()
    assert not list(root.rglob(".hour=*")) and not list(root.rglob("*.tmp"))
    assert json.loads(summary_path(root).read_text())["unvalidated_files"] == []


@pytest.mark.data
def test_the_summary_is_written_as_the_run_goes(tiny_raw, tmp_path):
    root = _copy_raw(tiny_raw, tmp_path)

    def killed_at_hour_2(result):
        if result.hour == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        validate_all(root, epoch_ms=EPOCH_MS, settings=SETTINGS, gx_dir=GX_DIR, docs=False, on_result=killed_at_hour_2)
    summary = json.loads(summary_path(root).read_text())
    assert sorted(summary["hours"]) == ["000", "001", "002"] and summary[LANDED] == 3


@pytest.mark.data
def test_an_unreadable_drop_is_reported_and_the_other_hours_go_on(tiny_raw, tmp_path, monkeypatch, capsys):
    root = _copy_raw(tiny_raw, tmp_path)
    assert _run(root, hours=[2])[0].status == LANDED
    landed = partition_dir(root, 2) / "part-0.parquet"
    before = _sha(landed)
    raw = root / "raw" / C.CLICKS_DIR / C.hour_file_name(2)
    real_read = Path.read_bytes

    def read_bytes(path):  # as a file without read permission does for a process that is not root
        if path == raw:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    results = {r.hour: r for r in _run(root, hours=[1, 2, 3])}
    r = results[2]
    assert r.status == UNREADABLE and r.rows is None and r.checks == ("read",)
    assert "cannot read raw/clicks/" in r.reason and "Permission denied" in r.reason
    assert r.kept == "validated/clicks/hour=002"  # the earlier landed version stays, untouched
    assert results[1].status == results[3].status == LANDED  # later hours were validated
    assert raw.exists() and not quarantine_dir(root, 2).exists() and _sha(landed) == before
    summary = json.loads(summary_path(root).read_text())
    assert summary["unreadable_hours"] == [2] and summary[UNREADABLE] == 1
    capsys.readouterr()
    assert main(["--data-root", str(root), "--all", "--no-docs"]) == 1  # a person must look
    out = capsys.readouterr().out
    assert "002         -  unreadable" in out and "1 UNREADABLE" in out


@pytest.mark.data
def test_a_symlink_out_of_the_landing_area_is_refused_unread(tiny_raw, tmp_path):
    root = _copy_raw(tiny_raw, tmp_path / "root")
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:SECRET-CONTENT:/root:/bin/bash\n")
    link = root / "raw" / C.CLICKS_DIR / C.hour_file_name(5)
    link.unlink()
    link.symlink_to(secret)
    r = _run(root, hours=[5])[0]
    assert r.status == QUARANTINED and r.checks == ("symlink",) and "outside the landing area" in r.reason
    qdir = quarantine_dir(root, 5)
    kept = qdir / C.hour_file_name(5)
    assert kept.is_symlink() and os.readlink(kept) == str(secret) and not link.is_symlink()
    texts = [(qdir / "reason.txt").read_text(), (qdir / "result.json").read_text(), summary_path(root).read_text()]
    subject, body, attachments = quarantine_alert(root, r.to_dict(), EPOCH_MS)
    texts += [subject, body, *(p.read_text() for p in attachments)]
    assert not any("SECRET" in t for t in texts)
    assert _run(root, hours=[5])[0].reason == r.reason  # re-checked from quarantine, still unread
    assert secret.read_text().startswith("root:x")


@pytest.mark.data
def test_quarantined_drop_lands_after_a_metadata_fix_and_returns_to_raw(tiny_raw, tmp_path):
    root = _copy_raw(tiny_raw, tmp_path)
    meta_path = root / "raw" / C.METADATA_FILE
    meta = pd.read_csv(meta_path)
    hour_file = root / "raw" / C.CLICKS_DIR / C.hour_file_name(4)
    clicked = pd.read_csv(hour_file)[C.CLICK_ARTICLE_ID].unique()
    meta[~meta[C.ARTICLE_ID].isin(clicked[:1])].to_csv(meta_path, index=False)  # one clicked article missing
    r = validate_hour(root, 4, epoch_ms=EPOCH_MS, settings=SETTINGS, gx_dir=GX_DIR)
    assert r.status == QUARANTINED and r.checks == ("articles",) and str(clicked[0]) in r.reason
    assert not hour_file.exists()

    meta.to_csv(meta_path, index=False)
    r = validate_hour(root, 4, epoch_ms=EPOCH_MS, settings=SETTINGS, gx_dir=GX_DIR)
    assert r.status == LANDED and hour_file.exists() and not quarantine_dir(root, 4).exists()
    assert r.source == str(hour_file.relative_to(root))


# --------------------------------------------------------------------------------------------- sources and edges


@pytest.mark.data
def test_drops_inside_clicks_zip_are_validated_and_copied_to_quarantine(tiny_raw, tmp_path):
    root = tmp_path
    (root / "raw").mkdir()
    shutil.copy(tiny_raw / "raw" / C.METADATA_FILE, root / "raw")
    work = tmp_path / "work"
    shutil.copytree(tiny_raw / "raw" / C.CLICKS_DIR, work)
    inject_bad_drop(work, 1, "null_ids")
    (work / C.hour_file_name(2)).write_text(",".join(C.CLICK_COLUMNS) + "\n")  # header only: an empty hour
    with zipfile.ZipFile(root / "raw" / C.CLICKS_ZIP, "w") as zf:
        for f in sorted(work.glob("clicks_hour_00[0-3].csv")):
            zf.write(f, f"{C.CLICKS_DIR}/{f.name}")
    zip_sha = _sha(root / "raw" / C.CLICKS_ZIP)

    results = {r.hour: r for r in _run(root)}
    assert sorted(results) == [0, 1, 2, 3]
    assert results[1].status == QUARANTINED and results[1].checks == ("nulls",)
    assert results[1].source == f"raw/{C.CLICKS_ZIP}:{C.CLICKS_DIR}/{C.hour_file_name(1)}"
    assert (quarantine_dir(root, 1) / C.hour_file_name(1)).read_bytes() == (work / C.hour_file_name(1)).read_bytes()
    assert _sha(root / "raw" / C.CLICKS_ZIP) == zip_sha  # the archive stays the raw record

    empty = results[2]
    assert empty.status == LANDED and empty.rows == 0 and "empty hour" in empty.reason
    table = pq.read_table(partition_dir(root, 2) / "part-0.parquet")
    assert table.num_rows == 0 and table.column_names == C.CLICK_COLUMNS
    assert results[0].status == results[3].status == LANDED


@pytest.mark.data
def test_bad_metadata_stops_the_run_before_any_hour(tiny_raw, tmp_path):
    root = _copy_raw(tiny_raw, tmp_path)
    meta_path = root / "raw" / C.METADATA_FILE
    meta = pd.read_csv(meta_path)
    pd.concat([meta, meta.head(3)]).to_csv(meta_path, index=False)
    with pytest.raises(MetadataError, match="duplicates"):
        _run(root)
    meta_path.unlink()
    with pytest.raises(MetadataError, match="not found"):
        _run(root)
    assert not (root / "validated").exists() and not (root / "quarantine").exists()


@pytest.mark.data
def test_cli_prints_a_line_per_hour_and_a_total(tiny_raw, tmp_path, capsys):
    root = _copy_raw(tiny_raw, tmp_path)
    inject_bad_drop(root / "raw" / C.CLICKS_DIR, 6, "empty")
    assert main(["--data-root", str(root), "--all", "--no-docs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["hour", "rows", "status", "reason"]
    assert out[7].split()[:3] == ["006", "-", "quarantined"]
    assert out[-1].startswith("24 hours: 23 landed") and "1 quarantined" in out[-1]
    assert cli(["validate", "--data-root", str(root), "--hour", "99", "--no-docs"]) == 1
    assert "no drop for hour 99" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- real data


@pytest.mark.data
def test_real_partial_metadata_passes_the_metadata_suite(realdata_dir, tmp_path):
    from pipelines.validate import load_article_ids, open_gx_context

    context = open_gx_context(GX_DIR, tmp_path / "gx")
    ids = load_article_ids(realdata_dir / "articles_metadata.partial.csv", context)
    assert ids.tolist() == list(range(112))


@pytest.mark.data
def test_real_globo_hour_validates(realdata_dir, tmp_path):
    clicks = pd.read_csv(realdata_dir / "clicks_hour_000.partial.csv")
    partial_meta = pd.read_csv(realdata_dir / "articles_metadata.partial.csv")
    # Its articles are not in the partial metadata: give each clicked id a row shaped like the real ones.
    clicked = np.sort(clicks[C.CLICK_ARTICLE_ID].unique())
    donors = partial_meta.iloc[np.arange(len(clicked)) % len(partial_meta)].reset_index(drop=True)
    meta = pd.concat([partial_meta, donors.assign(**{C.ARTICLE_ID: clicked})], ignore_index=True)
    assert (meta.dtypes == partial_meta.dtypes).all()
    (tmp_path / "raw" / C.CLICKS_DIR).mkdir(parents=True)
    meta.to_csv(tmp_path / "raw" / C.METADATA_FILE, index=False)
    shutil.copy(realdata_dir / "clicks_hour_000.partial.csv", tmp_path / "raw" / C.CLICKS_DIR / C.hour_file_name(0))

    r = validate_hour(tmp_path, 0, epoch_ms=EPOCH_MS, settings=SETTINGS, gx_dir=GX_DIR)
    assert r.status == LANDED, r.reason
    landed = pd.read_parquet(partition_dir(tmp_path, 0) / "part-0.parquet")
    pd.testing.assert_frame_equal(landed, clicks[C.CLICK_COLUMNS])

    # The same hour judged against the wrong epoch (a day later) is quarantined on its timestamps.
    shifted = validate_hour(tmp_path, 0, epoch_ms=EPOCH_MS + 24 * C.HOUR_MS, settings=SETTINGS, gx_dir=GX_DIR)
    assert shifted.status == QUARANTINED and "timestamps" in shifted.checks


@pytest.mark.data
def test_a_drop_column_named_like_a_check_column_is_a_schema_failure(tiny_raw, tmp_path):
    root = _copy_raw(tiny_raw, tmp_path)
    f = root / "raw" / C.CLICKS_DIR / C.hour_file_name(0)
    pd.read_csv(f).assign(**{C.SESSION_ROWS: 1}).to_csv(f, index=False)
    r = validate_hour(root, 0, epoch_ms=EPOCH_MS, settings=SETTINGS, gx_dir=GX_DIR)
    assert r.status == QUARANTINED and r.checks == ("schema",) and C.SESSION_ROWS in r.reason


# --------------------------------------------------------------------------------------------- article drops


def _article_files(root: Path, hour: int) -> tuple[Path, Path]:
    folder = root / "raw" / C.ARTICLES_DIR
    return folder / C.hour_file_name(hour, C.ARTICLES_DIR), folder / C.hour_file_name(hour, C.EMBEDDINGS_HOUR)


def _read_drop(root: Path, hour: int) -> tuple[pd.DataFrame, np.ndarray]:
    csv_path, pickle_path = _article_files(root, hour)
    with pickle_path.open("rb") as fh:
        return pd.read_csv(csv_path), pickle.load(fh)


def _write_drop(root: Path, hour: int, frame: pd.DataFrame | None = None, matrix=None) -> None:
    """Rewrite an hour's article drop: the csv from `frame`, the pickle from `matrix` (each when given)."""
    csv_path, pickle_path = _article_files(root, hour)
    if frame is not None:
        frame.to_csv(csv_path, index=False)
    if matrix is not None:
        pickle_path.write_bytes(matrix if isinstance(matrix, bytes) else pickle.dumps(matrix, protocol=5))


@pytest.mark.unit
def test_one_parser_for_hour_file_names():
    assert C.parse_hour_file_name(C.hour_file_name(7)) == (C.CLICKS_DIR, 7)
    assert C.parse_hour_file_name(C.hour_file_name(12, C.ARTICLES_DIR)) == (C.ARTICLES_DIR, 12)
    assert C.parse_hour_file_name(C.hour_file_name(1000, C.EMBEDDINGS_HOUR)) == (C.EMBEDDINGS_HOUR, 1000)
    # Only the names hour_file_name writes: what is listed by hour is found again by name.
    for name in ("clicks_hour_7.csv", "clicks_hour_0007.csv", "clicks_hour_007.pickle", "articles_hour_007.txt",
                 "clicks_hour_007.csv.tmp", "x_clicks_hour_007.csv"):
        assert C.parse_hour_file_name(name) is None, name
    assert C.hour_of_file("articles_hour_003.csv", C.ARTICLES_DIR) == 3
    assert C.hour_of_file("articles_hour_003.csv") is None  # not a click file


@pytest.mark.unit
def test_embeddings_pickles_load_without_running_foreign_code():
    matrix = np.arange(2 * C.EMBEDDING_DIM, dtype=np.float32).reshape(2, C.EMBEDDING_DIM)
    for protocol in (2, 4, 5):
        assert np.array_equal(load_embeddings(pickle.dumps(matrix, protocol=protocol)), matrix)
    # numpy 1.x wrote its module as numpy.core: the real Globo pickle names it so.
    old = pickle.dumps(matrix, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert np.array_equal(load_embeddings(old), matrix)

    class Boom:
        def __reduce__(self):
            return (print, ("ran foreign code",))

    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        load_embeddings(pickle.dumps(Boom()))
    with pytest.raises(pickle.UnpicklingError, match="not a numpy array"):
        load_embeddings(pickle.dumps([1.0, 2.0]))


@pytest.mark.unit
@pytest.mark.parametrize(
    "matrix, rows, words",
    [
        (None, 2, "embeddings missing"),
        (b"\x80\x05garbage", 2, "unreadable embeddings pickle"),
        (np.zeros((2, 10), dtype=np.float32), 2, "shape [2, 10]"),
        (np.zeros((3, C.EMBEDDING_DIM), dtype=np.float32), 2, "3 embedding rows for 2 csv rows"),
        (np.zeros((2, C.EMBEDDING_DIM), dtype=np.int64), 2, "not floats"),
        (np.array([[np.nan] * C.EMBEDDING_DIM, [0.0] * C.EMBEDDING_DIM], dtype=np.float32), 2, "not finite"),
    ],
    ids=["missing", "garbage", "width", "rows", "ints", "nan"],
)
def test_embedding_problems(matrix, rows, words):
    data = matrix if matrix is None or isinstance(matrix, bytes) else pickle.dumps(matrix)
    out, problems = embedding_problems(data, rows)
    assert out is None and [c for c, _ in problems] == ["embeddings"] and words in problems[0][1]
    good, none = embedding_problems(pickle.dumps(np.zeros((2, C.EMBEDDING_DIM))), 2)  # float64 is taken as float32
    assert none == [] and good.dtype == np.float32 and good.shape == (2, C.EMBEDDING_DIM)


@pytest.mark.data
def test_article_drops_land_before_their_hours_clicks(tiny_drops_raw, tiny_drops_validated):
    root, results = tiny_drops_validated
    hours = list_hours(tiny_drops_raw, C.ARTICLES_DIR)
    assert hours == list(range(24)) == list_hours(tiny_drops_raw)
    # per hour: the article drop, then the clicks that may read it
    assert [(r.hour, r.kind) for r in results] == [(h, k) for h in hours for k in (C.ARTICLES_DIR, C.CLICKS_DIR)]
    for hour in hours:
        frame, matrix = _read_drop(tiny_drops_raw, hour)
        landed = partition_dir(root, hour, C.ARTICLES_DIR)
        assert sorted(p.name for p in landed.iterdir()) == [C.EMBEDDINGS_PART, "part-0.parquet"]
        table = pq.read_table(landed / "part-0.parquet")
        assert table.column_names == C.METADATA_COLUMNS and all(str(t) == "int64" for t in table.schema.types)
        pd.testing.assert_frame_equal(table.to_pandas(), frame.astype(C.METADATA_DTYPES))
        emb = np.load(landed / C.EMBEDDINGS_PART)
        assert emb.dtype == np.float32 and np.array_equal(emb, matrix)
    summary = json.loads(summary_path(root).read_text())
    drops = summary["article_drops"]
    assert (drops["hours_total"], drops[LANDED], drops[QUARANTINED]) == (24, 24, 0)
    assert drops["rows_landed"] == sum(len(_read_drop(tiny_drops_raw, h)[0]) for h in hours)
    assert drops["hours"]["005"]["kind"] == C.ARTICLES_DIR
    assert drops["hours"]["005"]["path"] == "validated/articles/hour=005"
    assert summary["hours_total"] == 24 and summary[LANDED] == 24  # the click totals are the clicks' alone


@pytest.mark.data
def test_clicks_read_only_articles_dropped_up_to_their_hour(tiny_drops_raw, tmp_path):
    root = _copy_raw(tiny_drops_raw, tmp_path)
    drop4 = _read_drop(root, 4)[0][C.ARTICLE_ID]
    clicks2 = root / "raw" / C.CLICKS_DIR / C.hour_file_name(2)
    frame = pd.read_csv(clicks2)
    frame.loc[0, C.CLICK_ARTICLE_ID] = int(drop4.iloc[0])  # hour 2 clicks an article dropped in hour 4
    frame.to_csv(clicks2, index=False)
    # hour 3 publishes nothing: hour 4's clicks on articles published in hour 3 have nothing to read
    published3 = set(_read_drop(root, 3)[0][C.ARTICLE_ID])
    assert published3 & set(pd.read_csv(root / "raw" / C.CLICKS_DIR / C.hour_file_name(4))[C.CLICK_ARTICLE_ID])
    for f in _article_files(root, 3):
        f.unlink()

    results = {(r.hour, r.kind): r for r in _run(root, hours=range(5))}
    assert (3, C.ARTICLES_DIR) not in results  # no article drop is no failure
    assert results[(3, C.CLICKS_DIR)].status == LANDED
    clicks2 = results[(2, C.CLICKS_DIR)]
    assert clicks2.checks == ("articles",) and str(drop4.iloc[0]) in clicks2.reason
    assert results[(4, C.CLICKS_DIR)].checks == ("articles",)
    assert results[(4, C.ARTICLES_DIR)].status == LANDED
    # Re-run with hour 4's articles landed: still not for hour 2, which was before they were dropped.
    assert _run(root, hours=[2])[-1].checks == ("articles",)


# Each kind of bad article drop: (hour, how to break it, the check it must trip, words of the reason).
def _first_rows(frame: pd.DataFrame, column: str, value, rows=(0,)) -> pd.DataFrame:
    """`frame` with `column` set to `value` in the given rows (nullable when `value` is None)."""
    out = frame.astype({column: "Int64"}) if value is None else frame.copy()
    out.loc[list(rows), column] = pd.NA if value is None else value
    return out


def _bad_rows(kind: str, frame: pd.DataFrame, matrix: np.ndarray, root: Path, hour: int, epoch_ms: int):
    if kind == "no_embeddings":
        _article_files(root, hour)[1].unlink()
        return None, None
    if kind == "nan_embeddings":
        matrix = matrix.copy()
        matrix[1, 7] = np.nan
        return None, matrix
    if kind == "rows_mismatch":
        return None, matrix[:-1]
    if kind == "hostile_pickle":
        return None, b"cos\nsystem\n(S'echo pwned'\ntR."
    if kind == "known_id":  # an article of the static file
        static = pd.read_csv(root / "raw" / C.METADATA_FILE)
        return _first_rows(frame, C.ARTICLE_ID, static[C.ARTICLE_ID].iloc[0]), None
    if kind == "other_hours_id":  # an article of the hour before
        return _first_rows(frame, C.ARTICLE_ID, _read_drop(root, hour - 1)[0][C.ARTICLE_ID].iloc[0]), None
    if kind == "repeated_id":
        return _first_rows(frame, C.ARTICLE_ID, frame[C.ARTICLE_ID].iloc[0], rows=(1,)), None
    if kind == "published_later":
        return _first_rows(frame, C.CREATED_AT_TS, epoch_ms + (hour + 2) * C.HOUR_MS), None
    if kind == "null_category":
        return _first_rows(frame, C.CATEGORY_ID, None), None
    if kind == "float_words":
        return frame.astype({C.WORDS_COUNT: float}).assign(**{C.WORDS_COUNT: frame[C.WORDS_COUNT] + 0.5}), None
    raise ValueError(kind)


BAD_ARTICLE_DROPS = {
    "no_embeddings": ("embeddings", "embeddings missing"),
    "nan_embeddings": ("embeddings", "not finite"),
    "rows_mismatch": ("embeddings", "embedding rows for"),
    "hostile_pickle": ("embeddings", "refused"),
    "known_id": ("catalogue", "already in the catalogue"),
    "other_hours_id": ("catalogue", "already in the catalogue"),
    "repeated_id": ("duplicates", "share their id"),
    "published_later": ("timestamps", "created_at_ts"),
    "null_category": ("nulls", "category_id"),
    "float_words": ("dtypes", "words_count"),
}
BAD_ARTICLE_HOURS = {kind: 2 * i + 1 for i, kind in enumerate(BAD_ARTICLE_DROPS)}


@pytest.fixture(scope="module")
def bad_articles_root(tiny_drops_raw, tmp_path_factory):
    """tiny with article drops, one bad article drop of every kind (odd hours), validated once."""
    root = _copy_raw(tiny_drops_raw, tmp_path_factory.mktemp("bad_articles_root"))
    for kind, hour in BAD_ARTICLE_HOURS.items():
        frame, matrix = _read_drop(root, hour)
        _write_drop(root, hour, *_bad_rows(kind, frame, matrix, root, hour, EPOCH_MS))
    kept = {h: {p.name: p.read_bytes() for p in _article_files(root, h) if p.exists()}
            for h in BAD_ARTICLE_HOURS.values()}
    results = {(r.hour, r.kind): r for r in _run(root, docs=False)}
    return root, results, kept


@pytest.mark.data
@pytest.mark.parametrize("kind", list(BAD_ARTICLE_DROPS))
def test_bad_article_drop_is_quarantined_whole_with_its_reason(bad_articles_root, kind):
    root, results, kept = bad_articles_root
    hour = BAD_ARTICLE_HOURS[kind]
    check, words = BAD_ARTICLE_DROPS[kind]
    r = results[(hour, C.ARTICLES_DIR)]
    assert r.status == QUARANTINED and check in r.checks and words in r.reason, r
    qdir = quarantine_dir(root, hour, C.ARTICLES_DIR)
    assert r.path == f"quarantine/articles/hour={hour:03d}"
    assert {p.name: p.read_bytes() for p in qdir.iterdir() if p.suffix not in (".json", ".txt")} == kept[hour]
    assert (qdir / "reason.txt").read_text().count("\n") == 1
    assert json.loads((qdir / "result.json").read_text())["success"] is False
    assert not any(p.exists() for p in _article_files(root, hour))  # moved out of raw/
    assert not partition_dir(root, hour, C.ARTICLES_DIR).exists()


@pytest.mark.data
def test_a_quarantined_article_drop_keeps_its_articles_out_and_the_summary_tells(bad_articles_root):
    root, results, _ = bad_articles_root
    bad = sorted(BAD_ARTICLE_HOURS.values())
    landed = [h for h in range(24) if results[(h, C.ARTICLES_DIR)].status == LANDED]
    assert landed == [h for h in range(24) if h not in bad]
    summary = json.loads(summary_path(root).read_text())
    assert summary["article_drops"]["quarantined_hours"] == bad
    # Clicks on the articles of a quarantined drop are refused too: nothing unvalidated reaches training.
    refused = [h for h in range(24) if results[(h, C.CLICKS_DIR)].status == QUARANTINED]
    assert refused and all(results[(h, C.CLICKS_DIR)].checks == ("articles",) for h in refused)
    def result(kind: str) -> dict:
        return json.loads((quarantine_dir(root, BAD_ARTICLE_HOURS[kind], C.ARTICLES_DIR) / "result.json").read_text())

    later = BAD_ARTICLE_HOURS["published_later"]
    gx = result("published_later")
    assert gx["meta"]["newsrec"]["expectation_parameters"]["hour_last_ms"] == EPOCH_MS + (later + 1) * C.HOUR_MS - 1
    parse = result("rows_mismatch")
    assert parse["stage"] == "parse" and parse["results"][0]["check"] == "embeddings"


@pytest.mark.data
def test_article_drop_reruns_redeliveries_and_fixes(tiny_drops_raw, tmp_path):
    root = _copy_raw(tiny_drops_raw, tmp_path)
    frame, matrix = _read_drop(root, 3)
    part = partition_dir(root, 3, C.ARTICLES_DIR)
    assert {r.status for r in _run(root, hours=range(4))} == {LANDED}
    first = {p.name: _sha(p) for p in part.iterdir()}
    again = _run(root, hours=[3])
    assert [r.status for r in again] == [LANDED, LANDED] and {p.name: _sha(p) for p in part.iterdir()} == first

    # A re-delivery replaces the hour's rows: its own ids are no clash.
    _write_drop(root, 3, frame.iloc[1:], matrix[1:])
    redelivered = validate_hour_drops(root, 3, epoch_ms=EPOCH_MS, settings=SETTINGS, gx_dir=GX_DIR)
    assert [r.kind for r in redelivered] == [C.ARTICLES_DIR, C.CLICKS_DIR] and redelivered[0].status == LANDED
    assert pq.read_table(part / "part-0.parquet").num_rows == len(frame) - 1
    second = {p.name: _sha(p) for p in part.iterdir()}

    # A cut csv beside a good pickle: both go to quarantine and stay there on a re-run...
    csv_path, pickle_path = _article_files(root, 3)
    csv_path.write_bytes(csv_path.read_bytes()[:-7])
    bad = _run(root, hours=[3])[0]
    assert bad.status == QUARANTINED and bad.checks == ("parse",) and bad.kept  # the landed version stays
    assert {p.name: _sha(p) for p in part.iterdir()} == second
    assert not csv_path.exists() and not pickle_path.exists()
    assert list_hours(root, C.ARTICLES_DIR) == list(range(24))  # still found, in quarantine
    assert _run(root, hours=[3])[0].reason == bad.reason
    # ...until a fixed csv comes alone: it is taken with the quarantined pickle, and both go back to raw/.
    frame.iloc[1:].to_csv(csv_path, index=False)
    fixed = _run(root, hours=[3])[0]
    assert fixed.status == LANDED, fixed.reason
    assert fixed.source == f"raw/articles/{csv_path.name} + raw/articles/{pickle_path.name}"
    assert pickle_path.exists() and not quarantine_dir(root, 3, C.ARTICLES_DIR).exists()
    assert {p.name: _sha(p) for p in part.iterdir()} == second
    (cut,) = archive_dir(root, 3, C.ARTICLES_DIR).glob("quarantined-*")  # the cut csv it replaced is kept
    assert (cut / csv_path.name).read_bytes() != csv_path.read_bytes()
    assert not [p for p in root.rglob("*.tmp*")] and not [p for p in root.rglob(".hour=*")]


@pytest.mark.data
def test_cli_reports_article_drops_beside_clicks(tiny_drops_raw, tmp_path, capsys):
    root = _copy_raw(tiny_drops_raw, tmp_path)
    for f in (root / "raw").rglob("*_hour_*"):
        if C.parse_hour_file_name(f.name)[1] > 1:
            f.unlink()
    assert main(["--data-root", str(root), "--all", "--no-docs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:5]] == ["000", "000", "001", "001"]
    assert out[1].split()[2:] == ["landed", "[article", "drop]"]
    assert out[-1].startswith("2 hours: 2 landed") and "; 2 article drops: 2 landed (" in out[-1]
    _article_files(root, 1)[1].unlink()
    assert main(["--data-root", str(root), "--hour", "1", "--no-docs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[2:6] == ["quarantined", "[article", "drop]", "embeddings:"]
    assert out[2].split()[2] == "landed"  # hour 1's clicks read older articles only
    assert "1 hours: 1 landed" in out[-1] and "1 article drops: 0 landed (0 articles), 1 quarantined" in out[-1]


@pytest.mark.data
def test_a_header_only_article_drop_is_an_hour_without_new_articles(tiny_drops_raw, tmp_path):
    root = _copy_raw(tiny_drops_raw, tmp_path)
    csv_path, _ = _article_files(root, 0)
    csv_path.write_text(",".join(C.METADATA_COLUMNS) + "\n")
    _write_drop(root, 0, matrix=np.zeros((0, C.EMBEDDING_DIM), dtype=np.float32))
    articles, clicks = validate_hour_drops(root, 0, epoch_ms=EPOCH_MS, settings=SETTINGS, gx_dir=GX_DIR)
    assert (articles.status, articles.rows, articles.reason) == (LANDED, 0, "no new articles: header only")
    assert clicks.status == LANDED
    assert np.load(partition_dir(root, 0, C.ARTICLES_DIR) / C.EMBEDDINGS_PART).shape == (0, C.EMBEDDING_DIM)
