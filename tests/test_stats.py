"""`newsrec stats` on a hand-made set whose numbers can be checked by hand, on clicks.zip, on the real
partial files and on the tiny synthetic root."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from pipelines import columns as C
from pipelines.cli import main as cli
from pipelines.config import load_params
from pipelines.stats import dataset_stats, main

E = load_params("data", Path(__file__).resolve().parents[1] / "params.yaml")["epoch_ms"]
H, MIN = C.HOUR_MS, 60_000
CTX = [4, 1, 17, 1, 25, 2]


def click(user, sid, start, size, article, ts):
    return [user, sid, start, size, article, ts, *CTX]


# Articles 0..3; ages at click time are in the comments below.
META = pd.DataFrame({
    C.ARTICLE_ID: [0, 1, 2, 3],
    C.CATEGORY_ID: [0, 0, 1, 2],
    C.CREATED_AT_TS: [E - 5 * H, E - 15 * H, E - 30 * H, E + 10 * MIN],
    C.PUBLISHER_ID: [0, 0, 0, 0],
    C.WORDS_COUNT: [100, 200, 300, 400],
})
HOUR0 = [
    click(10, 1, E - MIN, 2, 0, E),                    # 5.0 h
    click(10, 1, E - MIN, 2, 1, E + 30_000),           # 15.0 h
    click(11, 2, E, 2, 0, E + 10 * MIN),               # 5.2 h
    click(11, 2, E, 2, 2, E + 10 * MIN + 30_000),      # 30.2 h
]
HOUR1 = [
    click(10, 3, E + H, 3, 0, E + H),                  # 6.0 h
    click(10, 3, E + H, 3, 3, E + H + 30_000),         # 0.8 h
    click(10, 3, E + H, 3, 1, E + H + 60_000),         # 16.0 h
]


def write_set(folder: Path, zipped: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    META.to_csv(folder / C.METADATA_FILE, index=False)
    files = {
        C.hour_file_name(0): pd.DataFrame(HOUR0, columns=C.CLICK_COLUMNS).to_csv(index=False),
        C.hour_file_name(1): pd.DataFrame(HOUR1, columns=C.CLICK_COLUMNS).to_csv(index=False),
        C.hour_file_name(2): ",".join(C.CLICK_COLUMNS) + "\n",  # a header-only hour
    }
    if zipped:
        with zipfile.ZipFile(folder / C.CLICKS_ZIP, "w") as zf:
            for name, text in files.items():
                zf.writestr(f"{C.CLICKS_DIR}/{name}", text)
    else:
        (folder / C.CLICKS_DIR).mkdir()
        for name, text in files.items():
            (folder / C.CLICKS_DIR / name).write_text(text)
    return folder


@pytest.mark.unit
def test_hand_checked_numbers(tmp_path):
    s = dataset_stats(write_set(tmp_path / "set"))
    assert s["counts"] == {"articles": 4, "categories": 3, "clicks": 7, "users": 2, "sessions": 3,
                           "distinct_clicked_articles": 4, "hours": 3, "empty_hours": 1}
    assert s["session_size"]["share"] == {"2": round(2 / 3, 4), "3": round(1 / 3, 4)}
    assert s["session_size"]["mean"] == round(7 / 3, 4)
    assert s["session_size"]["max"] == 3 and s["session_size"]["size_column_matches_rows"]
    assert s["freshness"] == {"clicks_with_metadata": 7, "share_age_lt_11h": round(4 / 7, 4),
                              "share_age_lt_20h": round(6 / 7, 4), "median_age_h": 6.0}
    # 1% of 4 clicked articles rounds up to one: article 0 with 3 of 7 clicks
    assert s["popularity"] == {"top_1pct_articles": 1, "top_1pct_click_share": round(3 / 7, 4),
                               "top_article_clicks": 3}
    ua = s["user_activity"]
    assert ua["clicks_per_user"]["p50"] == 3.5 and ua["clicks_per_user"]["max"] == 5
    assert ua["sessions_per_user"]["max"] == 2 and ua["share_users_one_session"] == 0.5
    assert s["clicks_per_hour"] == {"min": 0, "median": 3.0, "max": 4}


@pytest.mark.unit
def test_zip_reads_like_the_folder(tmp_path):
    folder = dataset_stats(write_set(tmp_path / "folder"))
    zipped = dataset_stats(write_set(tmp_path / "zipped", zipped=True))
    assert not (tmp_path / "zipped" / C.CLICKS_DIR).exists()
    folder.pop("path"), zipped.pop("path")
    assert zipped == folder


@pytest.mark.unit
def test_zero_byte_hour_counts_as_an_empty_hour(tmp_path):
    folder = write_set(tmp_path / "set")
    (folder / C.CLICKS_DIR / C.hour_file_name(3)).write_bytes(b"")
    counts = dataset_stats(folder)["counts"]
    assert (counts["hours"], counts["empty_hours"], counts["clicks"]) == (4, 2, 7)


@pytest.mark.unit
def test_session_size_mismatch_is_reported(tmp_path):
    folder = write_set(tmp_path / "set")
    bad = pd.DataFrame(HOUR1, columns=C.CLICK_COLUMNS).assign(**{C.SESSION_SIZE: 4})
    bad.to_csv(folder / C.CLICKS_DIR / C.hour_file_name(1), index=False)
    assert dataset_stats(folder)["session_size"]["size_column_matches_rows"] is False


@pytest.mark.unit
def test_bad_input_gets_a_clear_error(tmp_path, capsys):
    folder = write_set(tmp_path / "set")
    pd.DataFrame(HOUR0, columns=C.CLICK_COLUMNS).drop(columns=[C.CLICK_OS]).to_csv(
        folder / C.CLICKS_DIR / C.hour_file_name(0), index=False)
    assert cli(["stats", str(folder)]) == 1
    assert "clicks_hour_000.csv: missing columns ['click_os']" in capsys.readouterr().err
    text = pd.DataFrame(HOUR0, columns=C.CLICK_COLUMNS).to_csv(index=False)
    (folder / C.CLICKS_DIR / C.hour_file_name(0)).write_text(text[: len(text) - 20])  # cut inside a row
    assert cli(["stats", str(folder)]) == 1
    assert "clicks_hour_000.csv: not a readable CSV" in capsys.readouterr().err
    (tmp_path / "nothing").mkdir()
    assert cli(["stats", str(tmp_path / "nothing")]) == 1
    assert "no clicks_hour_NNN.csv files" in capsys.readouterr().err
    assert cli(["stats", str(tmp_path / "absent")]) == 1
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.data
def test_real_partial_files(realdata_dir):
    s = dataset_stats(realdata_dir)
    assert s["counts"] == {"articles": 112, "categories": 2, "clicks": 318, "users": 121, "sessions": 121,
                           "distinct_clicked_articles": 122, "hours": 1, "empty_hours": 0}
    assert s["session_size"]["max"] == 16 and s["session_size"]["size_column_matches_rows"]
    # none of the clicked articles are in the partial metadata
    assert s["freshness"] == {"clicks_with_metadata": 0}


@pytest.mark.data
def test_synthetic_root_and_cli(tiny_raw, tmp_path, capsys):
    out = tmp_path / "stats.json"
    assert main([str(tiny_raw), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["counts"]["hours"] == 24 and printed["counts"]["clicks"] > 3000
    assert printed["session_size"]["size_column_matches_rows"]
    assert set(printed["session_size"]["share"]) >= {"2", "3"}
    direct = dataset_stats(tiny_raw / "raw")
    assert {k: v for k, v in direct.items() if k != "path"} == {k: v for k, v in printed.items() if k != "path"}
