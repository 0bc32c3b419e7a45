"""Small hand-written click data laid out as validation lands it, for unit tests of the offline steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import columns as C

EPOCH = 1_506_826_800_000
H = C.HOUR_MS


def at(hour: float) -> int:
    """Milliseconds of a (fractional) hour after the epoch."""
    return int(EPOCH + hour * H)


def clicks(rows: list[tuple[int, int, int, float]], file_hour: dict[int, int] | None = None) -> pd.DataFrame:
    """(user, session, article, hour) rows -> the 12 click columns plus `file_hour` (the drop each row lands
    in: the click's own hour unless `file_hour` maps the row's index elsewhere, e.g. a late outlier)."""
    frame = pd.DataFrame(rows, columns=[C.USER_ID, C.SESSION_ID, C.CLICK_ARTICLE_ID, "h"])
    frame[C.CLICK_TIMESTAMP] = [at(h) for h in frame["h"]]
    first = frame.groupby(C.SESSION_ID)[C.CLICK_TIMESTAMP].transform("min")
    frame[C.SESSION_START] = first - first % 1000 - 60_000
    frame[C.SESSION_SIZE] = frame.groupby(C.SESSION_ID)[C.SESSION_ID].transform("size")
    for col, value in zip(C.CONTEXT_COLUMNS, [4, 1, 17, 1, 25, 2]):
        frame[col] = value
    frame["file_hour"] = (frame["h"] // 1).astype("int64")
    for i, h in (file_hour or {}).items():
        frame.loc[i, "file_hour"] = h
    return frame[C.CLICK_COLUMNS + ["file_hour"]]


def write_validated(root: Path, frame: pd.DataFrame) -> Path:
    """Land `frame` (from `clicks`) as <root>/validated/clicks/hour=NNN/part-0.parquet, one file per drop."""
    for hour, part in frame.groupby("file_hour"):
        out = root / "validated" / "clicks" / f"hour={int(hour):03d}"
        out.mkdir(parents=True, exist_ok=True)
        part[C.CLICK_COLUMNS].astype(C.CLICK_DTYPES).to_parquet(out / "part-0.parquet", index=False)
    return root


def articles(created_hours: list[float], categories: list[int] | None = None) -> pd.DataFrame:
    """Article i created at created_hours[i] (hours after the epoch; negative = back catalogue)."""
    n = len(created_hours)
    return pd.DataFrame(
        {
            C.ARTICLE_ID: np.arange(n, dtype=np.int64),
            C.CATEGORY_ID: np.asarray(categories if categories is not None else [0] * n, dtype=np.int64),
            C.CREATED_AT_TS: np.asarray([at(h) for h in created_hours], dtype=np.int64),
            C.PUBLISHER_ID: np.zeros(n, dtype=np.int64),
            C.WORDS_COUNT: np.full(n, 200, dtype=np.int64),
        }
    )


def write_raw(root: Path, meta: pd.DataFrame, embeddings: np.ndarray) -> None:
    """articles_metadata.csv and articles_embeddings.pickle under <root>/raw/."""
    import pickle

    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    meta.to_csv(raw / C.METADATA_FILE, index=False)
    with (raw / C.EMBEDDINGS_FILE).open("wb") as fh:
        pickle.dump(embeddings.astype(np.float32), fh)
