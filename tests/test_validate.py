"""Hourly validation: good hours land, every bad-drop kind is quarantined with its reason, re-runs are stable,
and the real Globo hour passes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines import columns as C
from pipelines.baddrops import BAD_DROP_KINDS, inject_bad_drop
from pipelines.config import load_params
from pipelines.validate import (
    LANDED,
    QUARANTINED,
    MetadataError,
    Settings,
    list_hours,
    main,
    parse_csv,
    partition_dir,
    quarantine_dir,
    summary_path,
    validate_all,
    validate_hour,
    volume_reference,
)

ROOT = Path(__file__).resolve().parents[1]
GX_DIR = ROOT / "great_expectations"
EPOCH_MS = load_params("data", ROOT / "params.yaml")["epoch_ms"]
SETTINGS = Settings.from_params(load_params("validate", ROOT / "params.yaml"))
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
    ],
    ids=["zero_bytes", "missing_column", "float", "overflow", "truncated", "duplicate_header"],
)
def test_parse_stops_what_gx_cannot_be_shown(data, check, words):
    parsed = parse_csv(data, C.CLICK_COLUMNS)
    assert parsed.frame is None
    assert [c for c, _ in parsed.problems] == [check]
    assert words in parsed.problems[0][1]


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
def test_volume_reference_needs_history_and_ignores_empty_hours():
    s = dataclasses.replace(SETTINGS, volume_max_ratio=5.0, volume_window_hours=24, volume_min_history=3)
    assert volume_reference({0: 10, 1: 10}, 2, s) is None  # two trailing hours < 3
    assert volume_reference({0: 10, 1: 0, 2: 10, 3: 30}, 4, s).median_rows == 10  # hour 1 (empty) left out
    later_only = {h: 10 for h in range(5, 30)}
    assert volume_reference(later_only, 3, s) is None  # later hours never count
    assert volume_reference({0: 4, 1: 6, 2: 8}, 3, s).max_rows == 30


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


# --------------------------------------------------------------------------------------------- re-runs


@pytest.mark.data
def test_rerun_is_idempotent_and_clears_the_other_outcome(tiny_raw, tmp_path):
    root = _copy_raw(tiny_raw, tmp_path)
    good = (root / "raw" / C.CLICKS_DIR / C.hour_file_name(3)).read_bytes()
    _run(root, hours=[2, 3])
    part = partition_dir(root, 3) / "part-0.parquet"
    first = _sha(part)

    again = _run(root, hours=[3])[0]
    assert again.status == LANDED and _sha(part) == first

    # The hour is dropped again, broken: it leaves validated/ for quarantine.
    inject_bad_drop(root / "raw" / C.CLICKS_DIR, 3, "duplicated_rows")
    bad = _run(root, hours=[3])[0]
    assert bad.status == QUARANTINED and not partition_dir(root, 3).exists()
    reason = (quarantine_dir(root, 3) / "reason.txt").read_text()

    # Re-run with the drop only in quarantine: the same verdict, the drop still kept whole.
    assert list_hours(root) == list(range(24))
    rerun = _run(root, hours=[3])[0]
    assert (rerun.status, rerun.checks, rerun.reason) == (bad.status, bad.checks, bad.reason)
    assert (quarantine_dir(root, 3) / "reason.txt").read_text() == reason

    # A fixed drop arrives: it lands with the same bytes as before and the stale quarantine goes.
    (root / "raw" / C.CLICKS_DIR / C.hour_file_name(3)).write_bytes(good)
    fixed = _run(root, hours=[3])[0]
    assert fixed.status == LANDED and _sha(part) == first
    assert not quarantine_dir(root, 3).exists()
    assert not [p for p in root.rglob("*.tmp")] and not [p for p in root.rglob(".hour=*")]
    summary = json.loads(summary_path(root).read_text())
    assert summary["hours"]["003"]["status"] == LANDED and summary["hours"]["002"]["status"] == LANDED


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
    assert main(["--data-root", str(root), "--hour", "99", "--no-docs"]) == 1
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
