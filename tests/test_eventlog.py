"""The service's impression and click logs: one file per UTC day, old days deleted, read back whole."""

from __future__ import annotations

import pytest

from serving.eventlog import JsonLinesLog, day_file, log_files, read_log

DAY = 86_400.0
T0 = 1_764_547_200.0  # 2025-12-01 00:00 UTC


@pytest.mark.unit
def test_a_log_is_one_file_per_day_and_old_days_go(tmp_path):
    now = [T0]
    path = tmp_path / "logs" / "impressions.jsonl"
    path.parent.mkdir()
    path.write_text('{"n": -1}\n')  # what older releases wrote, undated: kept and read first
    log = JsonLinesLog(path, flush_seconds=3600, keep_days=2, clock=lambda: now[0])
    try:
        for n in range(4):
            log.write({"n": n})
            log.flush()
            now[0] += DAY  # days 2025-12-01 .. 2025-12-04
    finally:
        log.close()
    assert [f.name for f in log_files(path)] == ["impressions.jsonl", "impressions.jsonl.2025-12-03",
                                                 "impressions.jsonl.2025-12-04"]
    assert [r["n"] for r in read_log(path)] == [-1, 2, 3]
    assert day_file(path, "2025-12-04").read_text() == '{"n":3}\n'


@pytest.mark.unit
def test_reading_a_log_with_no_file_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="nor day files impressions.jsonl.YYYY-MM-DD"):
        read_log(tmp_path / "impressions.jsonl")
