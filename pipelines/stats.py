"""Dataset statistics of a folder of Globo-format files, as JSON.

Reads the layout the real dataset comes in: `articles_metadata.csv` (or one `articles_metadata*.csv`)
and the hourly click files from `clicks/`, from `clicks.zip`, or lying flat in the folder
(`clicks_hour_NNN*.csv`, so the real partial copy in shared/realdata reads as it is). A data root
whose Globo files sit in `raw/` works too.

Session sizes are counted as rows per session_id (what the file holds), user activity as clicks
and sessions per user_id, freshness as click_timestamp - created_at_ts of the clicked article.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines.errors import InputError, MissingInputError

_HOUR_RE = re.compile(r"clicks_hour_(\d+)[^/]*\.csv$")
QUANTILES = (0.25, 0.5, 0.75, 0.9, 0.99)


def _read_csv(src: Path | io.BytesIO, name: str, expected: list[str]) -> pd.DataFrame:
    size = src.stat().st_size if isinstance(src, Path) else src.getbuffer().nbytes
    if size == 0:  # the real dataset has an empty hour file
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in expected})
    try:
        df = pd.read_csv(src, engine="pyarrow")  # ~2x faster than the C parser on the hourly files
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{name}: not a readable CSV ({e})") from e
    missing = [c for c in expected if c not in df.columns]
    if missing:
        raise InputError(f"{name}: missing columns {missing}")
    try:
        return df[expected].astype("int64")
    except (ValueError, TypeError) as e:
        raise InputError(f"{name}: non-integer or empty values ({e})") from e


def _files_dir(path: Path) -> Path:
    if not any(path.glob("articles_metadata*.csv")) and (path / "raw").is_dir():
        return path / "raw"
    return path


def find_metadata(path: Path) -> Path | None:
    """`articles_metadata.csv`, else the only `articles_metadata*.csv`, else None."""
    d = _files_dir(path)
    exact = d / C.METADATA_FILE
    if exact.exists():
        return exact
    found = sorted(d.glob("articles_metadata*.csv"))
    if len(found) > 1:
        raise InputError(f"{d}: several metadata files {[f.name for f in found]}; keep one")
    return found[0] if found else None


def read_clicks(path: Path) -> tuple[pd.DataFrame, list[int], int]:
    """All clicks of a folder with their hour (from the file name), the hours that have a file, and
    how many of those files are empty."""
    d = _files_dir(path)
    frames: list[pd.DataFrame] = []
    hours: list[int] = []
    n_empty = 0

    def add(src: Path | io.BytesIO, name: str) -> None:
        nonlocal n_empty
        hour = int(_HOUR_RE.search(name).group(1))
        hours.append(hour)
        df = _read_csv(src, name, C.CLICK_COLUMNS)
        if df.empty:
            n_empty += 1
        df[C.HOUR] = np.int64(hour)
        frames.append(df)

    folder = d / C.CLICKS_DIR
    files = sorted(f for f in folder.glob("*.csv") if _HOUR_RE.search(f.name)) if folder.is_dir() else []
    if files:
        for f in files:
            add(f, str(f))
    elif (d / C.CLICKS_ZIP).exists():
        with zipfile.ZipFile(d / C.CLICKS_ZIP) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if _HOUR_RE.search(info.filename):
                    add(io.BytesIO(zf.read(info)), f"{C.CLICKS_ZIP}:{info.filename}")
    else:
        for f in sorted(f for f in d.glob("*.csv") if _HOUR_RE.search(f.name)):
            add(f, str(f))
    if not frames:
        raise MissingInputError(f"{d}: no clicks_hour_NNN.csv files (looked in clicks/, clicks.zip and the folder)")
    return pd.concat(frames, ignore_index=True), sorted(hours), n_empty


def _quantiles(s: pd.Series) -> dict[str, float]:
    if s.empty:
        return {}
    q = s.quantile(list(QUANTILES))
    out = {f"p{int(k * 100)}": round(float(v), 2) for k, v in q.items()}
    out.update(mean=round(float(s.mean()), 4), max=int(s.max()))
    return out


def compute_stats(clicks: pd.DataFrame, metadata: pd.DataFrame | None, hours: list[int],
                  empty_hours: int = 0) -> dict[str, Any]:
    """The statistics of one dataset: clicks with an `hour` column, the hours that have a file
    (empty ones included) and the metadata (None when absent)."""
    n = len(clicks)
    per_session = clicks.groupby(C.SESSION_ID).size()
    per_user = clicks.groupby(C.USER_ID).size()
    sessions_per_user = clicks.groupby(C.USER_ID)[C.SESSION_ID].nunique()
    per_article = clicks[C.CLICK_ARTICLE_ID].value_counts()

    size_counts = per_session.clip(upper=11).value_counts().sort_index()
    size_share = {("11+" if k == 11 else str(k)): round(v / len(per_session), 4) for k, v in size_counts.items()}
    top = max(1, math.ceil(0.01 * len(per_article))) if len(per_article) else 0

    freshness: dict[str, Any] = {"clicks_with_metadata": 0}
    if metadata is not None and n:
        created = metadata.set_index(C.ARTICLE_ID)[C.CREATED_AT_TS]
        ts = created.reindex(clicks[C.CLICK_ARTICLE_ID]).to_numpy()
        known = ~np.isnan(ts)
        age_h = (clicks[C.CLICK_TIMESTAMP].to_numpy()[known] - ts[known]) / C.HOUR_MS
        freshness["clicks_with_metadata"] = int(known.sum())
        if known.any():
            freshness.update(
                share_age_lt_11h=round(float(np.mean(age_h < 11)), 4),
                share_age_lt_20h=round(float(np.mean(age_h < 20)), 4),
                median_age_h=round(float(np.median(age_h)), 2),
            )
    per_hour = clicks.groupby(C.HOUR).size().reindex(hours, fill_value=0)

    return {
        "counts": {
            "articles": None if metadata is None else len(metadata),
            "categories": None if metadata is None else int(metadata[C.CATEGORY_ID].nunique()),
            "clicks": int(n),
            "users": len(per_user),
            "sessions": len(per_session),
            "distinct_clicked_articles": len(per_article),
            "hours": len(hours),
            "empty_hours": int(empty_hours),
        },
        "session_size": {
            "share": size_share,
            "mean": round(float(per_session.mean()), 4) if n else None,
            "p50": float(per_session.median()) if n else None,
            "max": int(per_session.max()) if n else None,
            "size_column_matches_rows": bool((clicks[C.SESSION_SIZE] == clicks[C.SESSION_ID].map(per_session)).all()),
        },
        "freshness": freshness,
        "popularity": {
            "top_1pct_articles": int(top),
            "top_1pct_click_share": round(float(per_article.iloc[:top].sum() / n), 4) if n else None,
            "top_article_clicks": int(per_article.iloc[0]) if n else None,
        },
        "user_activity": {
            "clicks_per_user": _quantiles(per_user),
            "sessions_per_user": _quantiles(sessions_per_user),
            "share_users_one_session": round(float((sessions_per_user == 1).mean()), 4) if n else None,
        },
        "clicks_per_hour": {"min": int(per_hour.min()), "median": float(per_hour.median()),
                            "max": int(per_hour.max())} if hours else {},
    }


def dataset_stats(path: str | Path) -> dict[str, Any]:
    """Statistics of the Globo-format files under `path` (see the module docstring for layouts)."""
    path = Path(path)
    if not path.is_dir():
        raise MissingInputError(f"not a folder: {path}")
    clicks, hours, n_empty = read_clicks(path)
    meta_path = find_metadata(path)
    meta = None if meta_path is None else _read_csv(meta_path, str(meta_path), C.METADATA_COLUMNS)
    return {"path": str(path), **compute_stats(clicks, meta, hours, n_empty)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="newsrec stats", description="Print statistics of Globo-format files as JSON.")
    ap.add_argument("dir", help="folder with articles_metadata.csv and clicks/ or clicks.zip (or a data root with raw/)")
    ap.add_argument("--out", help="also write the JSON to this file")
    args = ap.parse_args(argv)
    stats = dataset_stats(args.dir)
    text = json.dumps(stats, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
