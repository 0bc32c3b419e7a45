"""Bad hourly drops: rewrite one hour's csv so that it breaks one rule the way real feeds break it.

`newsrec synth --bad HOUR:KIND` calls `inject_bad_drop` after writing the good files; the tests use it to
show that validation quarantines every kind with the right reason. Each kind aims at one check of
pipelines/validate.py (the check it must trip is in BAD_DROP_KINDS), touching only what that needs:

- missing_column / extra_column: the producer dropped a column or started sending a new one;
- wrong_dtype: some click_timestamp values written as datetimes instead of epoch ms;
- null_ids: some user_id and click_article_id fields left empty;
- unknown_article: clicks on article ids that are not in articles_metadata.csv;
- click_before_session: sessions whose session_start lies after their first click;
- timestamps_outside_hour: a fifth of the clicks shifted ten days ahead (a clock or replay bug);
- duplicated_rows: a tenth of the rows sent twice (which also breaks their sessions' session_size);
- truncated: the file cut off in the middle of a row;
- empty: a 0-byte file;
- volume_spike: ten times the rows (the hour replayed under new user and session ids, so only volume is off).

Choices inside a kind (which rows, which column) are drawn from `seed`, so a bad drop is reproducible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines.errors import InputError, MissingInputError
from pipelines.fileio import atomic_write_bytes

# kind -> the validation check it must trip (pipelines.validate reason/`checks`).
BAD_DROP_KINDS: dict[str, str] = {
    "missing_column": "schema",
    "extra_column": "schema",
    "wrong_dtype": "dtypes",
    "null_ids": "nulls",
    "unknown_article": "articles",
    "click_before_session": "session",
    "timestamps_outside_hour": "timestamps",
    "duplicated_rows": "duplicates",
    "truncated": "parse",
    "empty": "empty_file",
    "volume_spike": "volume",
}
# A plausible field a producer might start sending; not part of the Globo contract.
EXTRA_COLUMN = "click_browser"
SHIFT_MS = 10 * 24 * C.HOUR_MS
SPIKE_FACTOR = 10


def _some(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """Sorted positions of about `share` of n items, at least one."""
    k = min(n, max(1, round(n * share)))
    return np.sort(rng.choice(n, size=k, replace=False))


def _csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False, lineterminator="\n").encode()


def _unknown_ids(clicks_dir: Path, n: int, rng: np.random.Generator) -> np.ndarray:
    """n article ids absent from the catalogue beside clicks/ (well above the largest id of the metadata and of
    the article drops)."""
    raw = clicks_dir.parent
    drops = raw / C.ARTICLES_DIR
    files = [raw / C.METADATA_FILE]
    if drops.is_dir():
        files += sorted(f for f in drops.iterdir() if C.hour_of_file(f.name, C.ARTICLES_DIR) is not None)
    tops = [pd.read_csv(f, usecols=[C.ARTICLE_ID])[C.ARTICLE_ID].max() for f in files if f.exists()]
    top = int(max((t for t in tops if pd.notna(t)), default=10**9))
    return top + 1 + rng.choice(1_000_000, size=n, replace=False)


def corrupt(df: pd.DataFrame, kind: str, rng: np.random.Generator, clicks_dir: Path) -> bytes:
    """The bytes of a bad version of one hour's clicks `df` (12 int64 columns, in the file's order)."""
    n = len(df)
    if kind == "empty":
        return b""
    if n == 0:
        raise InputError(f"cannot make a '{kind}' drop out of an hour without clicks")
    df = df.copy()
    if kind == "missing_column":
        return _csv(df.drop(columns=[str(rng.choice(C.CLICK_COLUMNS))]))
    if kind == "extra_column":
        df.insert(int(rng.integers(0, df.shape[1] + 1)), EXTRA_COLUMN, rng.integers(1, 10, size=n))
        return _csv(df)
    if kind == "wrong_dtype":
        rows = _some(rng, n, 0.1)
        ts = df[C.CLICK_TIMESTAMP].astype(object)
        ts.iloc[rows] = pd.to_datetime(df[C.CLICK_TIMESTAMP].iloc[rows], unit="ms").dt.strftime("%Y-%m-%d %H:%M:%S")
        df[C.CLICK_TIMESTAMP] = ts
        return _csv(df)
    if kind == "null_ids":
        for col in (C.USER_ID, C.CLICK_ARTICLE_ID):
            df[col] = df[col].astype("Int64")
            df.loc[df.index[_some(rng, n, 0.05)], col] = pd.NA
        return _csv(df)
    if kind == "unknown_article":
        rows = _some(rng, n, 0.05)
        df.loc[df.index[rows], C.CLICK_ARTICLE_ID] = _unknown_ids(clicks_dir, len(rows), rng)
        return _csv(df)
    if kind == "click_before_session":
        sessions = df[C.SESSION_ID].unique()
        picked = sessions[_some(rng, len(sessions), 0.1)]
        first_click = df.groupby(C.SESSION_ID)[C.CLICK_TIMESTAMP].transform("min")
        hit = df[C.SESSION_ID].isin(picked)
        df.loc[hit, C.SESSION_START] = first_click[hit] + 1000
        return _csv(df)
    if kind == "timestamps_outside_hour":
        rows = _some(rng, n, 0.2)
        df.loc[df.index[rows], C.CLICK_TIMESTAMP] += SHIFT_MS
        return _csv(df)
    if kind == "duplicated_rows":
        rows = _some(rng, n, 0.1)
        order = np.sort(np.concatenate([np.arange(n), rows]), kind="stable")
        return _csv(df.iloc[order])
    if kind == "truncated":
        data = _csv(df)
        lines = data.split(b"\n")
        row = 1 + int(rng.integers(n // 3, max(n // 3 + 1, 2 * n // 3)))  # +1: the header
        start = sum(len(line) + 1 for line in lines[:row])
        cut = start + lines[row].index(b",", lines[row].index(b",") + 1) + 3  # mid-way into the third field
        return data[:cut]
    if kind == "volume_spike":
        copies = []
        user_step = int(df[C.USER_ID].max()) + 1
        session_step = int(df[C.SESSION_ID].max()) + 1
        for k in range(SPIKE_FACTOR):
            copy = df.copy()
            copy[C.USER_ID] += k * user_step
            copy[C.SESSION_ID] += k * session_step
            copies.append(copy)
        return _csv(pd.concat(copies, ignore_index=True))
    raise InputError(f"unknown bad drop kind '{kind}' (known: {', '.join(BAD_DROP_KINDS)})")


def inject_bad_drop(clicks_dir: str | Path, hour: int, kind: str, seed: int = 0) -> Path:
    """Rewrite `clicks_dir/clicks_hour_NNN.csv` as a bad drop of `kind` (see BAD_DROP_KINDS); its path."""
    if kind not in BAD_DROP_KINDS:
        raise InputError(f"unknown bad drop kind '{kind}' (known: {', '.join(BAD_DROP_KINDS)})")
    clicks_dir = Path(clicks_dir)
    path = clicks_dir / C.hour_file_name(hour)
    if not path.exists():
        raise MissingInputError(f"no hourly file to corrupt: {path}")
    df = pd.read_csv(path, dtype=C.CLICK_DTYPES)
    missing = [c for c in C.CLICK_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path} is not a good Globo hour file to start from (missing {missing})")
    # Mixing hour and kind into the seed keeps two bad hours of one dataset from corrupting the same rows.
    rng = np.random.default_rng([seed, hour, list(BAD_DROP_KINDS).index(kind)])
    atomic_write_bytes(path, corrupt(df[C.CLICK_COLUMNS], kind, rng, clicks_dir))
    return path
