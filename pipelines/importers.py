"""Import public benchmark datasets into the Globo.com format, so the whole flow can be measured on them.

MovieLens 100K (`u.data`, `u.item`) becomes `articles_metadata.csv`, `articles_embeddings.pickle` and
`clicks/clicks_hour_NNN.csv`. A rating is read as a click on the movie. The mapping rules:

- Movies: ids remapped to 0..n-1 in the order of their MovieLens id, so embedding row i = article_id i.
  category_id = index of the first genre flag set in u.item's genre order (0 = "unknown", which is also
  what a movie without any flag gets). created_at_ts = the release date (00:00 UTC) in ms, dates before
  1970 clamped to 0 (the contract's timestamps are non-negative; decades-old is decades-old to a news
  recommender); a movie without one gets the time of its first imported click, or the start of hour
  000 if it has none.
  publisher_id = 0 (a single publisher, as in Globo's release). words_count = words in the title
  without its trailing "(year)".
- Users: ids remapped to 0..u-1 in the order of their MovieLens id.
- Sessions: a user's ratings split wherever two consecutive ratings are more than `session_gap_s` apart.
  Globo sessions have at least 2 clicks, so a single-rating session is merged into the user's previous
  session (the next one if it is the user's first); a user with a single rating is dropped. Sessions
  longer than `max_session_clicks` are split into equal consecutive parts (each still >= 2 clicks).
- Time: MovieLens spans seven months but the flow is hourly, so session starts are compressed onto
  `hours` hours from `data.epoch_ms`, preserving their order: sessions ordered by original start are
  laid end to end by click count over the hours (a session after a share q of all clicks starts at
  q * hours hours, rounded down to the second). Every hour thus carries the same number of clicks to
  within one session, so volume checks see a steady stream instead of MovieLens' sign-up bursts. Inside a session the ratings keep their order and are `click_gap_s`
  apart (closer when the session would otherwise run past its hour): rating times within a sitting
  say nothing about reading time. session_start is the first click, rounded down to the second.
- Context columns: MovieLens has none, so each is the constant code in params (`import.context`).
- Embeddings: genre flags and TF-IDF of title words (each block L2-normalised), reduced with
  TruncatedSVD to 250 dimensions (zero-padded when the input has fewer), then L2-normalised.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines.config import load_params
from pipelines.fileio import atomic_write

FORMATS = ("movielens",)

# u.item's 19 genre flags, in file order (MovieLens 100K's u.genre).
MOVIELENS_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]  # fmt: skip
_ITEM_FIELDS = ["movie_id", "title", "release_date", "video_release_date", "imdb_url", *MOVIELENS_GENRES]
_RATING_FIELDS = ["user", "item", "rating", "ts"]
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    )
}
_TITLE_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


@dataclass(frozen=True)
class GloboTables:
    """The three Globo-format artefacts, in memory."""

    articles: pd.DataFrame  # columns.METADATA_COLUMNS, int64
    embeddings: np.ndarray  # float32 [n_articles, EMBEDDING_DIM], row i = article_id i
    clicks: pd.DataFrame  # columns.CLICK_COLUMNS + columns.HOUR, int64


# ---------------------------------------------------------------- reading


def read_movielens(in_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read MovieLens 100K's `u.data` (ratings) and `u.item` (movies), checking their shape."""
    in_dir = Path(in_dir)
    data_path, item_path = in_dir / "u.data", in_dir / "u.item"
    for p in (data_path, item_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"MovieLens 100K file missing: {p} (expected u.data and u.item in {in_dir})"
            )

    # Both files are headerless; every field is read as text first so a malformed line gets a clear error.
    ratings = pd.read_csv(data_path, sep="\t", header=None, dtype=str, keep_default_na=False)
    if ratings.shape[1] != len(_RATING_FIELDS):
        raise ValueError(
            f"{data_path}: expected 4 tab-separated fields (user, item, rating, timestamp), "
            f"found {ratings.shape[1]}"
        )
    ratings.columns = _RATING_FIELDS
    ratings = _to_int(ratings, _RATING_FIELDS, data_path)

    items = pd.read_csv(
        item_path, sep="|", header=None, dtype=str, keep_default_na=False, encoding="latin-1", quoting=3
    )
    if items.shape[1] != len(_ITEM_FIELDS):
        raise ValueError(
            f"{item_path}: expected {len(_ITEM_FIELDS)} '|'-separated fields "
            f"(id, title, release date, video release date, URL, 19 genre flags), "
            f"found {items.shape[1]}"
        )
    items.columns = _ITEM_FIELDS
    items = _to_int(items, ["movie_id", *MOVIELENS_GENRES], item_path)
    bad_flags = ~items[MOVIELENS_GENRES].isin([0, 1]).all(axis=1)
    if bad_flags.any():
        raise ValueError(
            f"{item_path}: genre flags must be 0 or 1 (movie ids {items.movie_id[bad_flags].tolist()[:5]})"
        )
    if items.movie_id.duplicated().any():
        dup = items.movie_id[items.movie_id.duplicated()].unique().tolist()[:5]
        raise ValueError(f"{item_path}: duplicated movie ids {dup}")

    unknown = ~ratings.item.isin(items.movie_id)
    if unknown.any():
        raise ValueError(
            f"{data_path}: {int(unknown.sum())} ratings refer to movies missing from u.item "
            f"(e.g. {sorted(ratings.item[unknown].unique())[:5]})"
        )
    return ratings, items


def _to_int(df: pd.DataFrame, cols: list[str], path: Path) -> pd.DataFrame:
    df = df.copy()
    for col in cols:
        values = pd.to_numeric(df[col].str.strip(), errors="coerce")
        bad = values.isna() | (values != values.round())
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 1
            raise ValueError(
                f"{path}: line {line}: field '{col}' is not an integer: {df[col].iloc[line - 1]!r}"
            )
        df[col] = values.astype("int64")
    return df


# ---------------------------------------------------------------- articles


def parse_release_date(text: str) -> int | None:
    """'01-Jan-1995' -> ms since epoch at 00:00 UTC; None for an empty or unreadable date."""
    parts = text.strip().split("-")
    if len(parts) != 3 or parts[1] not in _MONTHS or not (parts[0].isdigit() and parts[2].isdigit()):
        return None
    try:
        stamp = pd.Timestamp(year=int(parts[2]), month=_MONTHS[parts[1]], day=int(parts[0]), tz="UTC")
    except ValueError:
        return None
    return int(stamp.value // 1_000_000)


def clean_title(title: str) -> str:
    """The title without MovieLens' trailing '(1995)'."""
    return _TITLE_YEAR.sub("", title).strip()


def first_genre(flags: np.ndarray) -> np.ndarray:
    """Index of the first set flag per row; 0 ('unknown') where none is set."""
    flags = np.asarray(flags)
    return np.where(flags.any(axis=1), flags.argmax(axis=1), 0).astype("int64")


def movie_embeddings(
    items: pd.DataFrame, dim: int = C.EMBEDDING_DIM, genre_weight: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Content embeddings of movies (rows in `items` order): genres + title words -> SVD -> `dim`, unit norm."""
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    genres = sp.csr_matrix(items[MOVIELENS_GENRES].to_numpy(dtype=np.float64))
    blocks = [genre_weight * normalize(genres)]
    try:
        titles = TfidfVectorizer(sublinear_tf=True).fit_transform(items.title.map(clean_title))
        blocks.append(normalize(titles))
    except ValueError:
        pass  # no title has a word token (tiny inputs): genres alone carry the content
    features = sp.hstack(blocks).tocsr()

    k = min(dim, *features.shape)
    if k >= 2:
        reduced = TruncatedSVD(n_components=k, algorithm="randomized", random_state=seed).fit_transform(
            features
        )
    else:
        reduced = features.toarray()[:, :dim]
    out = np.zeros((len(items), dim), dtype=np.float64)
    out[:, : reduced.shape[1]] = reduced
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


# ---------------------------------------------------------------- sessions and time


def sessionize(ratings: pd.DataFrame, gap_s: int, max_clicks: int) -> pd.DataFrame:
    """Add `session` (a global id, ordered by user then time) to ratings; every session has >= 2 ratings.

    Splits at gaps > gap_s, merges single-rating sessions into a neighbour, splits sessions longer
    than max_clicks into equal parts. Users with a single rating are dropped.
    """
    if max_clicks < 3:
        # With 2, a 3-rating session would split into parts of 1 and 2.
        raise ValueError(
            f"max_session_clicks must be >= 3 so split sessions keep >= 2 clicks, got {max_clicks}"
        )
    df = ratings.sort_values(["user", "ts", "item"], kind="stable").reset_index(drop=True)
    counts = df.groupby("user").user.transform("size")
    df = df[counts >= 2].reset_index(drop=True)
    if df.empty:
        return df.assign(session=pd.Series(dtype="int64"))

    new_user = df.user.ne(df.user.shift())
    gap = df.ts.diff().gt(gap_s)
    raw = (new_user | gap).cumsum().to_numpy() - 1  # session index per row, monotone

    # Merge singletons: each into the session before it when that one is the same user's, else the next.
    sizes = np.bincount(raw)
    first_row = np.r_[0, np.flatnonzero(np.diff(raw)) + 1]
    sess_user = df.user.to_numpy()[first_row]
    target = np.arange(len(sizes))
    for s in np.flatnonzero(sizes == 1):
        if s > 0 and sess_user[s - 1] == sess_user[s]:
            target[s] = s - 1
        else:
            target[s] = s + 1  # the user has >= 2 ratings, so a later session of theirs exists
    # A singleton merged forward into another merged-forward singleton: follow to the final target.
    for s in range(len(target) - 1, -1, -1):
        if target[s] > s:
            target[s] = target[target[s]]
    for s in range(len(target)):
        if target[s] < s:
            target[s] = target[target[s]]
    merged = target[raw]

    # Split long sessions into ceil(size / max_clicks) equal consecutive parts.
    _, merged = np.unique(merged, return_inverse=True)
    sizes = np.bincount(merged)
    pos = np.arange(len(merged)) - np.r_[0, np.cumsum(sizes)[:-1]][merged]
    parts = -(-sizes // max_clicks)
    part = (pos * parts[merged]) // sizes[merged]
    session = np.r_[0, np.cumsum(parts)[:-1]][merged] + part
    return df.assign(session=session.astype("int64"))


def place_in_hours(sessions: pd.DataFrame, hours: int, epoch_ms: int, click_gap_s: float) -> pd.DataFrame:
    """Timestamps on the hourly clock for sessionized ratings (see the module docstring for the rule).

    Adds hour, session_start, click_timestamp (ms) and `rank` (the session's order by original start).
    """
    if hours < 1:
        raise ValueError(f"hours must be >= 1, got {hours}")
    first = sessions.groupby("session").agg(start=("ts", "min"), user=("user", "first"), size=("ts", "size"))
    n = len(first)
    order = first.sort_values(["start", "user"], kind="stable").index.to_numpy()
    rank = np.empty(n, dtype=np.int64)
    rank[np.searchsorted(first.index.to_numpy(), order)] = np.arange(n)

    # A session's place on the clock is the share of all clicks that come before it, so every hour
    # carries the same number of clicks (to within one session) and order is kept.
    size_in_order = first["size"].to_numpy()[np.searchsorted(first.index.to_numpy(), order)]
    before = (np.cumsum(size_in_order) - size_in_order)[rank]
    total = int(size_in_order.sum())
    hour = before * hours // total
    per_hour = np.bincount(hour, minlength=hours)
    if (per_hour == 0).any():
        raise ValueError(
            f"{total} clicks in {n} sessions leave hour {int(np.argmin(per_hour))} empty when spread over "
            f"{hours} hours: pass fewer --hours"
        )
    offset_ms = (before * hours - hour * total) * C.HOUR_MS // total
    hour_start = epoch_ms + hour * C.HOUR_MS
    start_ms = hour_start + offset_ms // 1000 * 1000
    sess = pd.DataFrame(
        {
            "session": first.index.to_numpy(),
            "rank": rank,
            C.HOUR: hour,
            C.SESSION_START: start_ms,
            "hour_end": hour_start + C.HOUR_MS,
        }
    )

    df = sessions.merge(sess, on="session", how="left")
    df = df.sort_values(["rank", "ts", "item"], kind="stable").reset_index(drop=True)
    pos = df.groupby("session").cumcount().to_numpy()
    size = df.groupby("session").session.transform("size").to_numpy()
    # Squeeze the gap so the last click still falls inside the hour.
    room = df.hour_end.to_numpy() - 1 - df[C.SESSION_START].to_numpy()
    step = np.minimum(int(click_gap_s * 1000), room // np.maximum(size - 1, 1))
    if (step < 1).any():
        raise ValueError(
            "a session has more clicks than milliseconds left in its hour: lower max_session_clicks"
        )
    df[C.CLICK_TIMESTAMP] = df[C.SESSION_START].to_numpy() + pos * step
    df[C.SESSION_SIZE] = size
    return df.drop(columns="hour_end")


# ---------------------------------------------------------------- the conversion


def movielens_to_globo(
    ratings: pd.DataFrame,
    items: pd.DataFrame,
    *,
    hours: int,
    epoch_ms: int,
    session_gap_s: int,
    max_session_clicks: int,
    click_gap_s: float,
    min_rating: int,
    context: dict[str, int],
    genre_weight: float = 1.0,
    seed: int = 0,
) -> GloboTables:
    """Convert MovieLens ratings and movies (as read by read_movielens) into Globo-format tables."""
    missing = [c for c in C.CONTEXT_COLUMNS if c not in context]
    if missing:
        raise ValueError(f"import.context needs a code for every context column; missing {missing}")

    items = items.sort_values("movie_id", kind="stable").reset_index(drop=True)
    article_of = pd.Series(np.arange(len(items), dtype=np.int64), index=items.movie_id.to_numpy())

    kept = ratings[ratings.rating >= min_rating]
    clicks = place_in_hours(sessionize(kept, session_gap_s, max_session_clicks), hours, epoch_ms, click_gap_s)
    if clicks.empty:
        raise ValueError("no sessions of >= 2 ratings remain: nothing to import")

    users = np.sort(clicks.user.unique())
    clicks[C.USER_ID] = np.searchsorted(users, clicks.user.to_numpy()).astype(np.int64)
    clicks[C.CLICK_ARTICLE_ID] = article_of.loc[clicks.item.to_numpy()].to_numpy()
    # Globo's ids are the session's start second followed by six digits; rank keeps them unique.
    clicks[C.SESSION_ID] = clicks[C.SESSION_START] // 1000 * 1_000_000 + clicks["rank"] % 1_000_000
    for col in C.CONTEXT_COLUMNS:
        clicks[col] = int(context[col])
    clicks = clicks[[*C.CLICK_COLUMNS, C.HOUR]].astype("int64")

    released = items.release_date.map(parse_release_date)
    first_click = clicks.groupby(C.CLICK_ARTICLE_ID)[C.CLICK_TIMESTAMP].min()
    fallback = pd.Series(np.arange(len(items))).map(first_click).fillna(epoch_ms)
    articles = pd.DataFrame(
        {
            C.ARTICLE_ID: np.arange(len(items), dtype=np.int64),
            C.CATEGORY_ID: first_genre(items[MOVIELENS_GENRES].to_numpy()),
            C.CREATED_AT_TS: released.fillna(fallback).clip(lower=0).to_numpy(),
            C.PUBLISHER_ID: 0,
            C.WORDS_COUNT: items.title.map(lambda t: max(len(clean_title(t).split()), 1)).to_numpy(),
        }
    )[C.METADATA_COLUMNS].astype("int64")

    embeddings = movie_embeddings(items, C.EMBEDDING_DIM, genre_weight, seed)
    return GloboTables(articles=articles, embeddings=embeddings, clicks=clicks)


def write_globo(tables: GloboTables, out_dir: str | Path, hours: int) -> list[Path]:
    """Write the Globo files into out_dir (a raw folder), one clicks file per hour 0..hours-1.

    The command owns these names in out_dir: it replaces the metadata, the embeddings and the whole
    clicks/ folder, and removes a stale clicks.zip so the folder never mixes two datasets.
    Each file is written under a temporary name and renamed, so a crash leaves no half file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def _atomic(path: Path, write) -> None:
        written.append(atomic_write(path, write))

    _atomic(out_dir / C.METADATA_FILE, lambda p: tables.articles.to_csv(p, index=False))

    def _pickle(p: Path) -> None:
        with p.open("wb") as fh:
            pickle.dump(tables.embeddings, fh, protocol=pickle.HIGHEST_PROTOCOL)

    _atomic(out_dir / C.EMBEDDINGS_FILE, _pickle)

    staging = out_dir / f".{C.CLICKS_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    by_hour = dict(iter(tables.clicks.groupby(C.HOUR, sort=True)))
    empty = tables.clicks.iloc[:0]
    for h in range(hours):
        part = by_hour.get(h, empty).sort_values(
            [C.SESSION_START, C.SESSION_ID, C.CLICK_TIMESTAMP], kind="stable"
        )
        part[C.CLICK_COLUMNS].to_csv(staging / C.hour_file_name(h), index=False)
    target = out_dir / C.CLICKS_DIR
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    written += [target / C.hour_file_name(h) for h in range(hours)]
    (out_dir / C.CLICKS_ZIP).unlink(missing_ok=True)
    return written


def import_movielens(in_dir: str | Path, out_dir: str | Path, params: dict[str, Any], epoch_ms: int) -> dict:
    """Read MovieLens 100K from in_dir, write Globo-format files to out_dir; return a summary."""
    ratings, items = read_movielens(in_dir)
    tables = movielens_to_globo(
        ratings, items,
        hours=int(params["hours"]), epoch_ms=int(epoch_ms),
        session_gap_s=int(params["session_gap_s"]), max_session_clicks=int(params["max_session_clicks"]),
        click_gap_s=float(params["click_gap_s"]), min_rating=int(params["min_rating"]),
        context=dict(params["context"]), genre_weight=float(params["genre_weight"]), seed=int(params["seed"]),
    )  # fmt: skip
    write_globo(tables, out_dir, int(params["hours"]))
    clicks = tables.clicks
    sizes = clicks.groupby(C.SESSION_ID).size()
    return {
        "format": "movielens",
        "out": str(out_dir),
        "ratings_read": len(ratings),
        "clicks": len(clicks),
        "ratings_dropped": int(len(ratings) - len(clicks)),
        "articles": len(tables.articles),
        "categories": int(tables.articles[C.CATEGORY_ID].nunique()),
        "users": int(clicks[C.USER_ID].nunique()),
        "sessions": len(sizes),
        "session_size": {"min": int(sizes.min()), "median": float(sizes.median()), "max": int(sizes.max())},
        "hours": int(params["hours"]),
        "clicks_per_hour": {
            "min": int(clicks.groupby(C.HOUR).size().min()),
            "max": int(clicks.groupby(C.HOUR).size().max()),
        },
    }


def main(argv: list[str] | None = None) -> int:
    params = load_params("import")
    parser = argparse.ArgumentParser(prog="newsrec import", description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=FORMATS, required=True, help="the source dataset's format")
    parser.add_argument("--in", dest="in_dir", type=Path, required=True, help="folder with u.data and u.item")
    parser.add_argument(
        "--out", type=Path, required=True, help="raw folder to write (e.g. data/movielens/raw)"
    )
    parser.add_argument(
        "--hours", type=int, default=params["hours"], help="hours the ratings are spread over"
    )
    args = parser.parse_args(argv)

    params["hours"] = args.hours
    try:
        summary = import_movielens(args.in_dir, args.out, params, load_params("data")["epoch_ms"])
    except (FileNotFoundError, ValueError) as exc:
        print(f"newsrec import: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
