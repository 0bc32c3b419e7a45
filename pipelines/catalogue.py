"""The article catalogue: the static Globo files plus every landed hourly article drop, read in one place.

Articles reach a dataset two ways. The static files, `<root>/raw/articles_metadata.csv` and
`<root>/raw/articles_embeddings.pickle`, hold what existed when the dataset started (the whole Globo
catalogue, or the articles published before hour 000). New articles arrive hourly as article drops, which
validation lands under `<root>/validated/articles/hour=NNN/` (`part-0.parquet` with the metadata columns,
`embeddings.npy` with one float32 row per parquet row). `read_catalogue` joins both; without article drops
it returns exactly what `read_articles` and `read_embeddings` of the static files return.

Rows are appended, never reordered: the static rows in file order, then each landed drop in hour order, so
the catalogue as of hour h is a prefix of the catalogue as of any later hour. Embeddings are indexed by id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines.errors import InputError
from pipelines.lake import PART_FILE, partition_dir, partition_hour, validated_dir

ARTICLES = C.ARTICLES_DIR


def article_drop_hours(data_root: str | Path, until_hour: int | None = None) -> list[int]:
    """Hours with a landed article drop (both files there), up to `until_hour` inclusive when given, sorted."""
    base = validated_dir(data_root, ARTICLES)
    if not base.is_dir():
        return []
    hours = []
    for d in base.glob(f"{C.HOUR}=*"):
        hour = partition_hour(d.name)
        if hour is not None and (d / PART_FILE).is_file() and (d / C.EMBEDDINGS_PART).is_file():
            hours.append(hour)
    return sorted(h for h in hours if until_hour is None or h <= until_hour)


def read_article_drop(data_root: str | Path, hour: int) -> tuple[pd.DataFrame, np.ndarray]:
    """One landed article drop: its metadata (contract columns, int64) and embeddings (row j = frame row j)."""
    folder = partition_dir(data_root, hour, ARTICLES)
    frame = pd.read_parquet(folder / PART_FILE, columns=C.METADATA_COLUMNS).astype(C.METADATA_DTYPES)
    matrix = np.load(folder / C.EMBEDDINGS_PART, allow_pickle=False)
    if matrix.shape != (len(frame), C.EMBEDDING_DIM):
        raise InputError(f"{folder}: {matrix.shape[0]} embedding rows of width {matrix.shape[1:]} "
                         f"for {len(frame)} articles")
    return frame, matrix


def read_catalogue(data_root: str | Path, until_hour: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Every article known at `<data_root>`: the static files plus each landed article drop (hours up to
    `until_hour` inclusive when given, e.g. a snapshot's last history hour; None takes them all).

    Returns `(articles, embeddings)`. `articles` has the metadata columns as int64: the static file's rows in
    its order, then the drops' rows in hour order (a fresh RangeIndex). `embeddings` is float32
    `[n, dim]` with row i = article_id i: the static matrix, grown with zero rows to the largest id delivered
    and each drop's rows written at their ids; rows of ids never delivered are zeros. Normalise it with
    `features.normalise_embeddings` as the static matrix.

    With no landed drop in range this is exactly `(read_articles(<raw metadata>), read_embeddings(<raw
    embeddings>))`. Raises FileNotFoundError when a static file is missing, ValueError when a drop's id is
    already in the catalogue (validation refuses those, so this means a partition was edited by hand).
    """
    from pipelines.features import read_articles, read_embeddings

    raw = Path(data_root) / "raw"
    articles = read_articles(raw / C.METADATA_FILE)
    embeddings = read_embeddings(raw / C.EMBEDDINGS_FILE)
    hours = article_drop_hours(data_root, until_hour)
    if not hours:
        return articles, embeddings

    frames, matrices = zip(*(read_article_drop(data_root, h) for h in hours), strict=True)
    new = pd.concat(frames, ignore_index=True)
    if new.empty:  # only header-only drops: nothing new
        return articles, embeddings
    ids = new[C.ARTICLE_ID].to_numpy(dtype=np.int64)
    clash = np.intersect1d(ids, articles[C.ARTICLE_ID].to_numpy(dtype=np.int64))
    repeated = np.unique(ids[pd.Series(ids).duplicated().to_numpy()])
    if len(clash) or len(repeated):
        raise InputError(f"article drops under {validated_dir(data_root, ARTICLES)} repeat ids of the "
                         f"catalogue: {sorted({*clash.tolist(), *repeated.tolist()})[:5]}")
    if embeddings.shape[1] != C.EMBEDDING_DIM:
        raise InputError(f"static embeddings are {embeddings.shape[1]} wide, article drops {C.EMBEDDING_DIM}")

    rows = int(ids.max()) + 1
    if rows > embeddings.shape[0]:
        grown = np.zeros((rows, embeddings.shape[1]), dtype=np.float32)
        grown[: embeddings.shape[0]] = embeddings
        embeddings = grown
    elif not embeddings.flags.writeable:
        embeddings = embeddings.copy()
    embeddings[ids] = np.concatenate(matrices)  # at globo scale: no second copy of the 364 MB matrix
    return pd.concat([articles, new], ignore_index=True), embeddings


def delivered_hours(data_root: str | Path, articles: pd.DataFrame) -> np.ndarray:
    """For each row of `read_catalogue`'s frame: the hour its article drop landed, -1 for the static files.

    A snapshot at cutoff hour c may only see articles delivered before it (`delivered < c`), besides being
    published before it: an article published at 10:50 but delivered in hour 12's drop was not
    recommendable at 11:00."""
    hour_of = {}
    for h in article_drop_hours(data_root):
        ids = pd.read_parquet(partition_dir(data_root, h, ARTICLES) / PART_FILE, columns=[C.ARTICLE_ID])
        hour_of.update(dict.fromkeys(ids[C.ARTICLE_ID].astype("int64").tolist(), h))
    if not hour_of:
        return np.full(len(articles), -1, dtype=np.int64)
    return articles[C.ARTICLE_ID].map(hour_of).fillna(-1).to_numpy(dtype=np.int64)


def known_at(articles: pd.DataFrame, delivered: np.ndarray, cutoff_hour: int) -> pd.DataFrame:
    """The catalogue as a snapshot at `cutoff_hour` knows it: rows delivered before that hour."""
    keep = delivered < int(cutoff_hour)
    return articles if keep.all() else articles[keep].reset_index(drop=True)


def catalogue_articles(data_root: str | Path, until_hour: int | None = None) -> pd.DataFrame:
    """`read_catalogue`'s metadata frame alone (no embeddings read): for readers that need only the articles'
    categories and times, such as drift monitoring."""
    from pipelines.features import read_articles

    articles = read_articles(Path(data_root) / "raw" / C.METADATA_FILE)
    drops = [pd.read_parquet(partition_dir(data_root, h, ARTICLES) / PART_FILE, columns=C.METADATA_COLUMNS)
             for h in article_drop_hours(data_root, until_hour)]
    if not drops:
        return articles
    return pd.concat([articles, *drops], ignore_index=True).astype(C.METADATA_DTYPES)
