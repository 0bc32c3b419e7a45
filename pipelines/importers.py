"""Import public datasets into the Globo.com format, so the whole flow can be measured on them: `newsrec import`.

`FORMATS` maps a format's name to its importer (what `--in` holds, a reader, a converter): adding a format is
one entry and one params subsection. Every format writes into the raw folder `articles_metadata.csv`,
`articles_embeddings.pickle` (float32 [n, 250], row i = article_id i) and `clicks/clicks_hour_NNN.csv` (hour N
covers data.epoch_ms + [N h, N+1 h)), and beside them `import.json`: the format, how source times map onto
the hours, counts, and `min_session_size` (the one key validation reads: the smallest session the source can
honestly have). Formats with real ids also write `<format>_ids/` tables that trace every new id back to the
source. Params: params.yaml `import` (shared keys: seed, context) merged with `import.<format>`. No source has
Globo's context columns: each column gets the constant code in `import.context`. docs/data.md has the
rules below with the reasons.

MovieLens 100K (`u.data`, `u.item`): a rating is read as a click on the movie.

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
- Embeddings: genre flags and TF-IDF of title words (each block L2-normalised), reduced with
  TruncatedSVD to 250 dimensions (zero-padded when the input has fewer), then L2-normalised.

MIND (`behaviors.tsv`, `news.tsv`, the official files): impression times are real, history clicks have none.

- Ids: news ids (every id in a history or an impression) and user ids remapped to 0..n-1 in the order of
  their numeric part (N138 before N1005); `mind_ids/` holds articles.csv (with category and subcategory),
  users.csv and categories.csv. news.tsv rows no behaviour refers to are not imported (no time says when
  they existed).
- Impression time: MIND's own clock (no zone given), moved by one constant offset so that the hour holding
  the first impression starts at data.epoch_ms + `history_hours`: relative times and the minute within the
  hour are kept; import.json records the offset and the original start. An impression's clicks lie at its
  time, `impression_click_gap_s` apart in the order the impression lists them.
- History: a user's history is the same list on every impression of the user (the earliest impression's is
  used): real reads before every impression, with an order and no time. They fill the history block, hours
  0..history_hours-1: one session per user, the list in its order, `history_click_gap_s` apart (closer when
  the list would run past its hour), users in id order laid end to end by click count so that every hour of
  the block carries the same number of clicks to within one user. These times are synthetic; recency
  features and popularity therefore see the history as older than every impression, which is the intent.
- Sessions: a user's impression clicks at most `session_gap_s` apart form a session, split where it would
  cross an hour boundary (each part its own session), so a session lies whole in one hourly file and
  session_size = its rows. session_start = its first click. Most MIND sittings hold one click: sessions of
  one click are kept (import.json: min_session_size 1); no click is added or dropped to reach Globo's 2.
- created_at_ts = the article's first appearance anywhere: its first history click or the first impression
  that shows it, clicked or not (MIND gives no publication time). category_id = the MIND category (1.. in
  name order), 0 = unknown for an article news.tsv has no row for; the subcategory is its sub-topic (id
  table and embedding). words_count = words of title + abstract (0 without a row). publisher_id = 0.
- Embeddings: [text part (`text_dims`) | co-read part (the rest)]. Text, for articles with a news.tsv row:
  TF-IDF of title + abstract with category and subcategory one-hots, TruncatedSVD, unit norm (the MovieLens
  code). Co-read, for articles read in some history: TruncatedSVD of the articles x readers matrix of the
  histories (rows unit norm; its right side is the article-article co-read matrix's eigenbasis), unit norm.
  An article with both gets sqrt(text_share) x text and sqrt(1 - text_share) x co-read; with one, that part;
  with neither (seen only in impressions, no text), zeros: downstream reads a zero row as no content.
  Histories only, because embeddings are static metadata that every window reads and the history block
  precedes every impression: no evaluation window can leak into them.
- `impressions.parquet`: every shown candidate (impression_id as in MIND, user_id, hour, click_timestamp =
  the moved impression time, article_id, clicked 0/1), for MIND's own impression protocol. Validation does
  not read it.

Interactions (a CSV with header `user,item,timestamp` and optional `session`, `category`, `text`):

- timestamp: numbers below 10^11 are seconds, others milliseconds; otherwise ISO 8601 (a zone offset is
  honoured, none means UTC). One kind per file.
- Ids: remapped to 0..n-1 in numeric order when every id is an integer, else in string order
  (`interactions_ids/`). Time: moved by one constant so the first click's hour is hour 000; the real span
  gives the hours (at most `max_hours`). Clicks at the same instant keep the file's order.
- Sessions: the `session` column (per user) when given, else the gap rule; split at hour boundaries as for
  MIND. Rows repeated whole (user, item, timestamp, session) are dropped once: validation rejects them.
- created_at_ts = the item's first click. category: its first non-empty value, 0 = unknown. words_count =
  words of its first non-empty text. Embeddings as for MIND, the text part from text and category, the
  co-read part from the clicks of the first `coread_share` of the hours (evaluation windows are the last).
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines.config import parse_step, step_parser
from pipelines.errors import ConfigError, InputError, MissingInputError
from pipelines.fileio import atomic_write
from pipelines.lake import IMPRESSIONS_FILE

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

# MIND's two files (no header), in their official column order.
# Beside the drops under raw/: every shown candidate of the source's impressions (MIND), which the evaluation's
# impression protocol reads (pipelines.evaluate).
MIND_BEHAVIOR_FIELDS = ["impression_id", "user", "time", "history", "impressions"]
MIND_NEWS_FIELDS = [
    "news_id", "category", "subcategory", "title", "abstract", "url", "title_entities", "abstract_entities",
]  # fmt: skip
_MIND_TIME = "%m/%d/%Y %I:%M:%S %p"  # 11/12/2019 2:14:46 PM
_MIND_NEWS = re.compile(r"^N\d+$")
_MIND_USER = re.compile(r"^U\d+$")
_MIND_SHOWN = re.compile(r"^N\d+-[01]$")
UNKNOWN_CATEGORY = "(unknown)"  # category_id 0: articles the source gives no category for

INTERACTION_COLUMNS = ["user", "item", "timestamp"]
INTERACTION_OPTIONAL = ["session", "category", "text"]
SECONDS_BELOW = 10**11  # a numeric timestamp below this is seconds (10^11 s is the year 5138), else ms


@dataclass(frozen=True)
class GloboTables:
    """The three Globo-format artefacts, in memory."""

    articles: pd.DataFrame  # columns.METADATA_COLUMNS, int64
    embeddings: np.ndarray  # float32 [n_articles, EMBEDDING_DIM], row i = article_id i
    clicks: pd.DataFrame  # columns.CLICK_COLUMNS + columns.HOUR, int64


@dataclass(frozen=True)
class Imported:
    """A converter's result: the Globo tables, their hours, and what is written beside them."""

    tables: GloboTables
    hours: int
    manifest: dict[str, Any]  # import.json
    side: dict[str, pd.DataFrame] = field(default_factory=dict)  # path under raw/ (.csv or .parquet) -> table
    summary: dict[str, Any] = field(default_factory=dict)  # printed by the CLI


@dataclass(frozen=True)
class Importer:
    """One source format: what `--in` must be, how to read it, how to convert what was read."""

    source: str
    read: Callable[[Path], Any]
    convert: Callable[[Any, Mapping[str, Any], int], Imported]


def _check_context(context: Mapping[str, Any]) -> dict[str, int]:
    missing = [c for c in C.CONTEXT_COLUMNS if c not in context]
    if missing:
        raise InputError(f"import.context needs a code for every context column; missing {missing}")
    return {c: int(context[c]) for c in C.CONTEXT_COLUMNS}


# ---------------------------------------------------------------- reading


def read_movielens(in_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read MovieLens 100K's `u.data` (ratings) and `u.item` (movies), checking their shape."""
    in_dir = Path(in_dir)
    data_path, item_path = in_dir / "u.data", in_dir / "u.item"
    for p in (data_path, item_path):
        if not p.is_file():
            raise MissingInputError(
                f"MovieLens 100K file missing: {p} (expected u.data and u.item in {in_dir})"
            )

    # Both files are headerless; every field is read as text first so a malformed line gets a clear error.
    ratings = pd.read_csv(data_path, sep="\t", header=None, dtype=str, keep_default_na=False)
    if ratings.shape[1] != len(_RATING_FIELDS):
        raise InputError(
            f"{data_path}: expected 4 tab-separated fields (user, item, rating, timestamp), "
            f"found {ratings.shape[1]}"
        )
    ratings.columns = _RATING_FIELDS
    ratings = _to_int(ratings, _RATING_FIELDS, data_path)

    items = pd.read_csv(
        item_path, sep="|", header=None, dtype=str, keep_default_na=False, encoding="latin-1", quoting=3
    )
    if items.shape[1] != len(_ITEM_FIELDS):
        raise InputError(
            f"{item_path}: expected {len(_ITEM_FIELDS)} '|'-separated fields "
            f"(id, title, release date, video release date, URL, 19 genre flags), "
            f"found {items.shape[1]}"
        )
    items.columns = _ITEM_FIELDS
    items = _to_int(items, ["movie_id", *MOVIELENS_GENRES], item_path)
    bad_flags = ~items[MOVIELENS_GENRES].isin([0, 1]).all(axis=1)
    if bad_flags.any():
        raise InputError(
            f"{item_path}: genre flags must be 0 or 1 (movie ids {items.movie_id[bad_flags].tolist()[:5]})"
        )
    if items.movie_id.duplicated().any():
        dup = items.movie_id[items.movie_id.duplicated()].unique().tolist()[:5]
        raise InputError(f"{item_path}: duplicated movie ids {dup}")

    unknown = ~ratings.item.isin(items.movie_id)
    if unknown.any():
        raise InputError(
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
            raise InputError(
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
    from sklearn.preprocessing import normalize

    genres = sp.csr_matrix(items[MOVIELENS_GENRES].to_numpy(dtype=np.float64))
    blocks = [genre_weight * normalize(genres)]
    titles = tfidf_block(items.title.map(clean_title))
    if titles is not None:  # None: no title has a word token (tiny inputs), genres alone carry the content
        blocks.append(titles)
    return svd_embeddings(sp.hstack(blocks).tocsr(), dim, seed).astype(np.float32)


# ---------------------------------------------------------------- sessions and time


def sessionize(ratings: pd.DataFrame, gap_s: int, max_clicks: int) -> pd.DataFrame:
    """Add `session` (a global id, ordered by user then time) to ratings; every session has >= 2 ratings.

    Splits at gaps > gap_s, merges single-rating sessions into a neighbour, splits sessions longer
    than max_clicks into equal parts. Users with a single rating are dropped.
    """
    if max_clicks < 3:
        # With 2, a 3-rating session would split into parts of 1 and 2.
        raise InputError(
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
        raise InputError(f"hours must be >= 1, got {hours}")
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
        raise InputError(
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
        raise InputError(
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
        raise InputError(f"import.context needs a code for every context column; missing {missing}")

    items = items.sort_values("movie_id", kind="stable").reset_index(drop=True)
    article_of = pd.Series(np.arange(len(items), dtype=np.int64), index=items.movie_id.to_numpy())

    kept = ratings[ratings.rating >= min_rating]
    clicks = place_in_hours(sessionize(kept, session_gap_s, max_session_clicks), hours, epoch_ms, click_gap_s)
    if clicks.empty:
        raise InputError("no sessions of >= 2 ratings remain: nothing to import")

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


# ---------------------------------------------------------------- embeddings (every format)


def tfidf_block(texts: Sequence[str]) -> Any:
    """Row-normalised TF-IDF (sublinear tf) of `texts` as a sparse matrix; None when no text has a word token."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    try:
        return normalize(TfidfVectorizer(sublinear_tf=True).fit_transform(list(texts)))
    except ValueError:
        return None


def one_hot_block(codes: np.ndarray) -> Any:
    """Sparse one-hot rows of integer codes; a negative code (no value) is an all-zero row."""
    import scipy.sparse as sp

    codes = np.asarray(codes, dtype=np.int64)
    rows = np.flatnonzero(codes >= 0)
    width = int(codes.max()) + 1 if len(rows) else 0
    return sp.csr_matrix((np.ones(len(rows)), (rows, codes[rows])), shape=(len(codes), width))


def svd_embeddings(features: Any, dim: int, seed: int) -> np.ndarray:
    """Rows of a sparse feature matrix reduced with TruncatedSVD to `dim` dimensions (zero-padded when the
    input has fewer), then unit L2 norm; an all-zero row stays zero. float64."""
    from sklearn.decomposition import TruncatedSVD

    k = min(dim, *features.shape)
    if k >= 2:
        reduced = TruncatedSVD(n_components=k, algorithm="randomized", random_state=seed).fit_transform(
            features
        )
    else:
        reduced = features.toarray()[:, :dim]
    out = np.zeros((features.shape[0], dim), dtype=np.float64)
    out[:, : reduced.shape[1]] = reduced
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def content_embeddings(
    texts: Sequence[str], labels: Sequence[tuple[np.ndarray, float]], dim: int, seed: int
) -> np.ndarray:
    """Text + label content -> `dim`, unit norm (the MovieLens recipe): TF-IDF of `texts` beside one-hot blocks
    of each (codes, weight) in `labels` (code < 0: none), each block unit norm, then svd_embeddings."""
    import scipy.sparse as sp
    from sklearn.preprocessing import normalize

    blocks = [weight * normalize(one_hot_block(codes)) for codes, weight in labels if weight > 0]
    words = tfidf_block(texts)
    if words is not None:
        blocks.append(words)
    blocks = [b for b in blocks if b.shape[1] > 0]
    if not blocks:
        return np.zeros((len(texts), dim))
    return svd_embeddings(sp.hstack(blocks).tocsr(), dim, seed)


def coread_embeddings(
    articles: np.ndarray, readers: np.ndarray, n_articles: int, dim: int, seed: int
) -> np.ndarray:
    """Co-read embeddings: row a from the readers of article a (reads given as parallel arrays of ids).

    The articles x readers matrix (binary, rows unit norm) reduced with TruncatedSVD: articles read by the same
    people land close, whatever their text. Articles nobody read get a zero row.
    """
    import scipy.sparse as sp
    from sklearn.preprocessing import normalize

    articles = np.asarray(articles, dtype=np.int64)
    if dim <= 0 or len(articles) == 0:
        return np.zeros((n_articles, max(dim, 0)))
    _, readers = np.unique(np.asarray(readers), return_inverse=True)
    matrix = sp.csr_matrix(
        (np.ones(len(articles)), (articles, readers)), shape=(n_articles, int(readers.max()) + 1)
    )
    matrix.data[:] = 1.0  # read twice is read: repeated reads of a history do not weigh more
    return svd_embeddings(normalize(matrix), dim, seed)


def hybrid_embeddings(text: np.ndarray, coread: np.ndarray, text_share: float) -> np.ndarray:
    """[text | co-read] per article, float32 unit norm: both parts -> sqrt(share) and sqrt(1 - share) of them;
    one part -> that part alone; neither -> zeros. Each input row is unit norm or zero."""
    if text.shape[1] + coread.shape[1] != C.EMBEDDING_DIM:
        raise InputError(
            f"text ({text.shape[1]}) + co-read ({coread.shape[1]}) dims must be {C.EMBEDDING_DIM}"
        )
    if not 0.0 <= text_share <= 1.0:
        raise InputError(f"text_share must be in [0, 1], got {text_share}")
    has_text = np.linalg.norm(text, axis=1) > 0
    has_coread = np.linalg.norm(coread, axis=1) > 0
    both = has_text & has_coread
    out = np.empty((len(text), C.EMBEDDING_DIM), dtype=np.float32)
    out[:, : text.shape[1]] = text * np.where(both, math.sqrt(text_share), 1.0)[:, None]
    out[:, text.shape[1] :] = coread * np.where(both, math.sqrt(1.0 - text_share), 1.0)[:, None]
    norms = np.linalg.norm(out, axis=1, keepdims=True)  # share 0 or 1 leaves one part: renormalise
    out /= np.where(norms > 0, norms, 1.0)
    return out


def _split_dims(text_dims: int) -> tuple[int, int]:
    if not 0 <= text_dims <= C.EMBEDDING_DIM:
        raise InputError(f"text_dims must be in [0, {C.EMBEDDING_DIM}], got {text_dims}")
    return text_dims, C.EMBEDDING_DIM - text_dims


# ---------------------------------------------------------------- ids, real times and sessions (MIND, interactions)


def sorted_ids(values: Sequence[str], prefix: str = "") -> np.ndarray:
    """Distinct ids in their numeric order: `prefix` + digits (MIND's N138, U81994), or plain integers when
    prefix is ""; ids that are not all integers sort as strings."""
    distinct = pd.unique(np.asarray(values, dtype=object))
    body = pd.Series(distinct, dtype=object).str.slice(len(prefix))
    numeric = body.str.fullmatch(r"-?\d+").all() and pd.Series(distinct).str.startswith(prefix).all()
    if numeric:
        order = np.lexsort((distinct.astype(str), body.astype(int).to_numpy()))
        return distinct[order].astype(object)
    return np.sort(distinct.astype(str)).astype(object)


def _codes(values: Sequence[str], ids: np.ndarray) -> np.ndarray:
    return (
        pd.Series(np.arange(len(ids), dtype=np.int64), index=ids)
        .loc[np.asarray(values, dtype=object)]
        .to_numpy()
    )


def _floor_hour(ms: int) -> int:
    return ms // C.HOUR_MS * C.HOUR_MS


def _iso(ms: int, zone: str = "") -> str:
    return pd.Timestamp(int(ms), unit="ms").strftime("%Y-%m-%dT%H:%M:%S") + zone


def gap_sessions(
    clicks: pd.DataFrame, *, gap_s: float, epoch_ms: int, session_col: str | None = None
) -> pd.DataFrame:
    """Sessions of clicks at real (moved) times; `clicks` has user_id, click_timestamp and `seq` (tie order).

    A user's clicks form a session while consecutive ones are at most gap_s apart (or, with `session_col`,
    while they carry the same value there); a session is split where it would cross an hour boundary, so it
    lies whole in one hourly file. Adds hour, session (0.., in user then time order), session_start (its
    first click) and session_size (its rows).
    """
    keys = [C.USER_ID, *([session_col] if session_col else []), C.CLICK_TIMESTAMP, "seq"]
    df = clicks.sort_values(keys, kind="stable").reset_index(drop=True)
    ts = df[C.CLICK_TIMESTAMP].to_numpy(np.int64)
    user = df[C.USER_ID].to_numpy()
    hour = (ts - epoch_ms) // C.HOUR_MS
    new = np.ones(len(df), dtype=bool)
    new[1:] = (user[1:] != user[:-1]) | (hour[1:] != hour[:-1])
    if session_col:
        given = df[session_col].to_numpy()
        new[1:] |= given[1:] != given[:-1]
    else:
        new[1:] |= np.diff(ts) > round(gap_s * 1000)
    session = np.cumsum(new) - 1
    first = np.flatnonzero(new)
    df[C.HOUR] = hour
    df["session"] = session
    df[C.SESSION_START] = ts[first][session] if len(df) else ts
    df[C.SESSION_SIZE] = np.bincount(session)[session] if len(df) else ts
    return df


def finish_clicks(parts: Sequence[pd.DataFrame], context: Mapping[str, int]) -> pd.DataFrame:
    """One click table from parts that each carry user_id, click_article_id, click_timestamp, session_start,
    session_size, hour and `session` (unique inside its part): Globo session ids and the context codes.

    session_id is Globo's shape: the start second followed by six digits, the session's rank by
    (start, user) keeping ids unique.
    """
    frames, offset = [], 0
    keep = [C.USER_ID, C.CLICK_ARTICLE_ID, C.CLICK_TIMESTAMP, C.SESSION_START, C.SESSION_SIZE, C.HOUR]
    for part in parts:
        frames.append(part[keep].assign(session=part["session"].to_numpy() + offset))
        offset += int(part["session"].max()) + 1 if len(part) else 0
    df = pd.concat(frames, ignore_index=True)
    sess = df.groupby("session").agg(start=(C.SESSION_START, "first"), user=(C.USER_ID, "first"))
    sess = sess.sort_values(["start", "user"], kind="stable")
    sess["rank"] = np.arange(len(sess), dtype=np.int64)
    rank = sess["rank"].reindex(df["session"].to_numpy()).to_numpy()
    df[C.SESSION_ID] = df[C.SESSION_START].to_numpy() // 1000 * 1_000_000 + rank % 1_000_000
    for col, code in context.items():
        df[col] = code
    df = df.assign(_rank=rank).sort_values(["_rank", C.CLICK_TIMESTAMP], kind="stable")
    return df[[*C.CLICK_COLUMNS, C.HOUR]].astype("int64").reset_index(drop=True)


def _session_stats(clicks: pd.DataFrame) -> dict[str, Any]:
    sizes = clicks.groupby(C.SESSION_ID).size()
    per_hour = clicks.groupby(C.HOUR).size()
    return {
        "sessions": len(sizes),
        "single_click_sessions": int((sizes == 1).sum()),
        "session_size": {"min": int(sizes.min()), "median": float(sizes.median()), "max": int(sizes.max())},
        "clicks_per_hour": {"min": int(per_hour.min()), "max": int(per_hour.max())},
    }


def _label_table(values: pd.Series) -> tuple[np.ndarray, pd.DataFrame]:
    """Labels -> ids 1.. in name order, 0 for empty/missing (UNKNOWN_CATEGORY); (codes, id table)."""
    names = sorted({v for v in values.dropna() if v != ""})
    ids = {name: i + 1 for i, name in enumerate(names)}
    codes = values.map(ids).fillna(0).astype(np.int64).to_numpy()
    table = pd.DataFrame(
        {"id": np.arange(len(names) + 1, dtype=np.int64), "name": [UNKNOWN_CATEGORY, *names]}
    )
    return codes, table


# ---------------------------------------------------------------- MIND


@dataclass(frozen=True)
class MindSource:
    """MIND's two files as read: every field a string except impression_id (int64) and time (datetime64)."""

    behaviors: pd.DataFrame  # MIND_BEHAVIOR_FIELDS
    news: pd.DataFrame  # MIND_NEWS_FIELDS


def _read_tsv(path: Path, fields: list[str], what: str) -> pd.DataFrame:
    # Headerless, tab-separated, quotes are text (titles quote freely): read every field as a string.
    df = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    if df.shape[1] != len(fields):
        raise InputError(f"{path}: expected {len(fields)} tab-separated fields ({what}), found {df.shape[1]}")
    df.columns = fields
    return df


def _first_bad(mask: np.ndarray, values: pd.Series, path: Path, what: str, header: int = 0) -> None:
    """Raise naming the file line of the first row where mask is set (values' index = data row number)."""
    if mask.any():
        i = int(np.flatnonzero(mask)[0])
        line = int(values.index[i]) + 1 + header
        raise InputError(f"{path}: line {line}: {what}: {values.iloc[i]!r}")


def read_mind(in_dir: str | Path) -> MindSource:
    """Read MIND's `behaviors.tsv` and `news.tsv` from in_dir, checking every field the import uses."""
    in_dir = Path(in_dir)
    b_path, n_path = in_dir / "behaviors.tsv", in_dir / "news.tsv"
    for p in (b_path, n_path):
        if not p.is_file():
            raise MissingInputError(
                f"MIND file missing: {p} (expected behaviors.tsv and news.tsv in {in_dir})"
            )
    b = _read_tsv(b_path, MIND_BEHAVIOR_FIELDS, "impression id, user, time, history, impressions")
    n = _read_tsv(n_path, MIND_NEWS_FIELDS, "id, category, subcategory, title, abstract, url, 2 entity lists")

    b = _to_int(b, ["impression_id"], b_path)
    _first_bad(b.impression_id.duplicated().to_numpy(), b.impression_id, b_path, "duplicated impression id")
    _first_bad(
        ~b.user.str.fullmatch(_MIND_USER.pattern).to_numpy(), b.user, b_path, "user id is not U<digits>"
    )
    time = pd.to_datetime(b.time, format=_MIND_TIME, errors="coerce")
    _first_bad(time.isna().to_numpy(), b.time, b_path, "time is not like '11/12/2019 2:14:46 PM'")
    b["time"] = time
    hist = b.history.str.split().explode().dropna()
    _first_bad(
        ~hist.str.fullmatch(_MIND_NEWS.pattern).to_numpy(), hist, b_path, "history id is not N<digits>"
    )
    shown = b.impressions.str.split().explode()
    _first_bad(shown.isna().to_numpy(), b.impressions, b_path, "an impression shows nothing")
    _first_bad(~shown.str.fullmatch(_MIND_SHOWN.pattern).to_numpy(), shown, b_path,
               "impression entry is not N<digits>-0 or N<digits>-1")  # fmt: skip

    _first_bad(
        ~n.news_id.str.fullmatch(_MIND_NEWS.pattern).to_numpy(), n.news_id, n_path, "news id is not N<digits>"
    )
    _first_bad(n.news_id.duplicated().to_numpy(), n.news_id, n_path, "duplicated news id")
    return MindSource(behaviors=b, news=n)


def mind_to_globo(
    source: MindSource,
    *,
    epoch_ms: int,
    history_hours: int,
    history_click_gap_s: float,
    impression_click_gap_s: float,
    session_gap_s: float,
    text_dims: int,
    text_share: float,
    category_weight: float,
    subcategory_weight: float,
    context: Mapping[str, Any],
    seed: int = 0,
) -> Imported:
    """Convert MIND (as read by read_mind) into Globo-format tables (rules: module docstring)."""
    context = _check_context(context)
    if history_hours < 1:
        raise InputError(
            f"history_hours must be >= 1 (the block that holds the untimed history), got {history_hours}"
        )
    text_dims, coread_dims = _split_dims(text_dims)
    b = source.behaviors.sort_values(["time", "impression_id"], kind="stable").reset_index(drop=True)

    users = sorted_ids(b.user, "U")
    b["user_id"] = _codes(b.user, users)

    shown = b[["impression_id", "user_id", "time"]].assign(entry=b.impressions.str.split()).explode("entry")
    shown = shown.reset_index(drop=True)
    shown["news"] = shown.entry.str[:-2]
    shown["clicked"] = (shown.entry.str[-1] == "1").astype(np.int8)

    # A user's history is one list (MIND repeats it on each of their impressions): the earliest impression's.
    variants = int((b.groupby("user_id").history.nunique() > 1).sum())
    first = b.drop_duplicates("user_id")[["user_id", "history"]]
    hist = first.assign(news=first.history.str.split()).explode("news").dropna(subset=["news"])
    hist = hist[["user_id", "news"]].reset_index(drop=True)
    hist["pos"] = hist.groupby("user_id").cumcount()

    news_ids = sorted_ids(pd.concat([hist.news, shown.news]), "N")
    shown["article_id"] = _codes(shown.news, news_ids)
    hist["article_id"] = _codes(hist.news, news_ids)

    # One constant moves MIND's clock: the first impression's hour starts right after the history block.
    real_ms = b.time.to_numpy("datetime64[ms]").astype(np.int64)
    start_ms = _floor_hour(int(real_ms.min()))
    offset_ms = epoch_ms + history_hours * C.HOUR_MS - start_ms
    shown["ts"] = shown.time.to_numpy("datetime64[ms]").astype(np.int64) + offset_ms

    clicked = shown[shown.clicked == 1].copy()
    step = round(impression_click_gap_s * 1000)
    clicked[C.CLICK_TIMESTAMP] = clicked.ts + clicked.groupby("impression_id").cumcount() * step
    clicked = clicked.rename(columns={"article_id": C.CLICK_ARTICLE_ID})
    clicked["seq"] = np.arange(len(clicked))  # time, then impression id, then list order (shown is sorted so)
    imp = gap_sessions(clicked, gap_s=session_gap_s, epoch_ms=epoch_ms)

    parts = [imp]
    if len(hist):
        block = hist.rename(columns={"user_id": "user", "article_id": "item", "pos": "ts"})
        block["session"] = block.user
        try:
            placed = place_in_hours(block, history_hours, epoch_ms, history_click_gap_s)
        except ValueError as exc:
            raise InputError(f"history block: {exc} (lower import.mind.history_hours)") from None
        placed = placed.rename(columns={"user": C.USER_ID, "item": C.CLICK_ARTICLE_ID})
        parts.insert(0, placed.assign(session=placed["rank"]))
    clicks = finish_clicks(parts, context)
    hours = int(max(clicks[C.HOUR].max(), (shown.ts.max() - epoch_ms) // C.HOUR_MS)) + 1

    # Articles: first appearance, category, words; the news.tsv row where there is one.
    n = len(news_ids)
    appear = pd.concat([
        shown.groupby("article_id").ts.min(),
        clicks[clicks[C.HOUR] < history_hours].groupby(C.CLICK_ARTICLE_ID)[C.CLICK_TIMESTAMP].min(),
    ]).groupby(level=0).min()  # fmt: skip
    rows = pd.DataFrame({"news_id": news_ids}).merge(source.news, on="news_id", how="left")
    has_row = rows.category.notna().to_numpy()
    rows = rows.fillna("")
    category, categories = _label_table(rows.category.where(has_row))
    subcategory, subcategories = _label_table(rows.subcategory.where(has_row))
    text = (rows.title + " " + rows.abstract).str.strip()
    articles = pd.DataFrame({
        C.ARTICLE_ID: np.arange(n, dtype=np.int64),
        C.CATEGORY_ID: category,
        C.CREATED_AT_TS: appear.reindex(np.arange(n)).to_numpy(),
        C.PUBLISHER_ID: 0,
        C.WORDS_COUNT: text.str.split().map(len).to_numpy(),
    })[C.METADATA_COLUMNS].astype("int64")  # fmt: skip

    text_emb = np.zeros((n, text_dims))
    if has_row.any() and text_dims:
        idx = np.flatnonzero(has_row)
        text_emb[idx] = content_embeddings(
            text.iloc[idx].tolist(),
            [(category[idx], category_weight), (subcategory[idx], subcategory_weight)],
            text_dims, seed,
        )  # fmt: skip
    coread = coread_embeddings(hist.article_id.to_numpy(), hist.user_id.to_numpy(), n, coread_dims, seed)
    embeddings = hybrid_embeddings(text_emb, coread, text_share)

    id_articles = pd.DataFrame({
        C.ARTICLE_ID: np.arange(n, dtype=np.int64), "news_id": news_ids, C.CATEGORY_ID: category,
        "category": categories.name.to_numpy()[category], "subcategory_id": subcategory,
        "subcategory": subcategories.name.to_numpy()[subcategory], "has_text": has_row.astype(np.int64),
    })  # fmt: skip
    impressions = pd.DataFrame({
        "impression_id": shown.impression_id.to_numpy(np.int64),
        C.USER_ID: shown.user_id.to_numpy(np.int64),
        C.HOUR: ((shown.ts - epoch_ms) // C.HOUR_MS).to_numpy(np.int64),
        C.CLICK_TIMESTAMP: shown.ts.to_numpy(np.int64),
        C.ARTICLE_ID: shown.article_id.to_numpy(np.int64),
        "clicked": shown.clicked.to_numpy(np.int8),
    })  # fmt: skip
    side = {
        "mind_ids/articles.csv": id_articles,
        "mind_ids/users.csv": pd.DataFrame({C.USER_ID: np.arange(len(users)), "mind_user_id": users}),
        "mind_ids/categories.csv": categories.rename(columns={"id": C.CATEGORY_ID, "name": "category"}),
        IMPRESSIONS_FILE: impressions,
    }

    counts = {
        "impressions": len(b),
        "users": len(users),
        "articles": n,
        "articles_with_text": int(has_row.sum()),
        "articles_with_coread": int((np.linalg.norm(coread, axis=1) > 0).sum()),
        "articles_without_embedding": int((np.linalg.norm(embeddings, axis=1) == 0).sum()),
        "categories": len(categories) - 1,
        "history_clicks": len(hist),
        "impression_clicks": len(imp),
        "clicks": len(clicks),
        "shown": len(shown),
        "users_with_differing_histories": variants,
        "news_rows_not_referenced": int((~source.news.news_id.isin(news_ids)).sum()),
    }
    manifest = {
        "format": "mind",
        "epoch_ms": int(epoch_ms),
        "hours": hours,
        C.MIN_SESSION_SIZE: 1,
        "time": {
            "offset_ms": int(offset_ms),
            "original_start": _iso(start_ms),
            "first_impression": _iso(int(real_ms.min())),
            "last_impression": _iso(int(real_ms.max())),
            "zone": "as in behaviors.tsv (MIND gives none)",
            "history_block_hours": [0, history_hours - 1],
            "impression_hours": [history_hours, hours - 1],
        },
        "counts": counts,
    }
    tables = GloboTables(articles=articles, embeddings=embeddings, clicks=clicks)
    summary = {"format": "mind", **counts, **_session_stats(clicks), "hours": hours,
               "history_hours": history_hours}  # fmt: skip
    return Imported(tables=tables, hours=hours, manifest=manifest, side=side, summary=summary)


# ---------------------------------------------------------------- interactions CSV


def read_interactions(path: str | Path) -> pd.DataFrame:
    """Read an interactions CSV (header user,item,timestamp[,session,category,text]) as strings, checked."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(
            f"interactions file missing: {path} (expected a CSV with header user,item,timestamp)"
        )
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in INTERACTION_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    df = df[[c for c in [*INTERACTION_COLUMNS, *INTERACTION_OPTIONAL] if c in df.columns]].copy()
    for col in ["user", "item", "timestamp", *(["session"] if "session" in df else [])]:
        df[col] = df[col].str.strip()
        _first_bad((df[col] == "").to_numpy(), df[col], path, f"empty {col}", header=1)
    if df.empty:
        raise InputError(f"{path}: no rows")
    ms, kind = parse_timestamps(df.timestamp, path)
    df["ms"] = ms
    df.attrs["timestamp_kind"] = kind
    return df


def parse_timestamps(values: pd.Series, path: Path | str = "timestamp") -> tuple[np.ndarray, str]:
    """Timestamps -> (ms since epoch, kind): numbers below 10^11 are seconds, others milliseconds; otherwise
    ISO 8601 (a zone offset honoured, none = UTC). Every value must be of the same kind."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all():
        if numbers.abs().max() < SECONDS_BELOW:
            return (numbers * 1000).round().astype(np.int64).to_numpy(), "seconds"
        return numbers.round().astype(np.int64).to_numpy(), "milliseconds"
    if numbers.notna().any():
        _first_bad(
            numbers.isna().to_numpy(),
            values,
            Path(path),
            "timestamp is not a number like the others",
            header=1,
        )
    stamps = pd.to_datetime(values, format="ISO8601", utc=True, errors="coerce")
    _first_bad(
        stamps.isna().to_numpy(), values, Path(path), "timestamp is neither a number nor ISO 8601", header=1
    )
    return stamps.to_numpy("datetime64[ms]").astype(np.int64), "iso8601"


def interactions_to_globo(
    df: pd.DataFrame,
    *,
    epoch_ms: int,
    session_gap_s: float,
    max_hours: int,
    coread_share: float,
    text_dims: int,
    text_share: float,
    category_weight: float,
    context: Mapping[str, Any],
    seed: int = 0,
) -> Imported:
    """Convert an interactions table (as read by read_interactions) into Globo-format tables."""
    context = _check_context(context)
    text_dims, coread_dims = _split_dims(text_dims)
    kind = df.attrs.get("timestamp_kind")
    has_session = "session" in df.columns
    key = ["user", "item", "ms", *(["session"] if has_session else [])]
    repeated = df.duplicated(key)
    df = df[~repeated].reset_index(drop=True)
    df["seq"] = np.arange(len(df))

    users, items = sorted_ids(df.user), sorted_ids(df.item)
    start_ms = _floor_hour(int(df.ms.min()))
    offset_ms = epoch_ms - start_ms
    hours = int((df.ms.max() - start_ms) // C.HOUR_MS) + 1
    if hours > max_hours:
        raise InputError(
            f"the clicks span {hours} hours ({_iso(int(df.ms.min()))} to {_iso(int(df.ms.max()))} UTC), more than "
            f"import.interactions.max_hours={max_hours}: check the timestamp unit (read as {kind})"
        )
    clicks = pd.DataFrame({
        C.USER_ID: _codes(df.user, users),
        C.CLICK_ARTICLE_ID: _codes(df.item, items),
        C.CLICK_TIMESTAMP: df.ms.to_numpy(np.int64) + offset_ms,
        "seq": df.seq.to_numpy(),
        **({"given": df.session.to_numpy()} if has_session else {}),
    })  # fmt: skip
    sessions = gap_sessions(clicks, gap_s=session_gap_s, epoch_ms=epoch_ms,
                            session_col="given" if has_session else None)  # fmt: skip
    out = finish_clicks([sessions], context)

    n = len(items)
    ordered = df.assign(article_id=clicks[C.CLICK_ARTICLE_ID]).sort_values(["ms", "seq"], kind="stable")

    def first_value(col: str) -> pd.Series:
        if col not in ordered:
            return pd.Series([""] * n)
        given = ordered[ordered[col].str.strip() != ""]
        return given.groupby("article_id")[col].first().reindex(np.arange(n)).fillna("")

    category_names = first_value("category").str.strip()
    category, categories = _label_table(category_names.where(category_names != ""))
    text = first_value("text").str.strip()
    created = clicks.groupby(C.CLICK_ARTICLE_ID)[C.CLICK_TIMESTAMP].min().reindex(np.arange(n))
    articles = pd.DataFrame({
        C.ARTICLE_ID: np.arange(n, dtype=np.int64),
        C.CATEGORY_ID: category,
        C.CREATED_AT_TS: created.to_numpy(),
        C.PUBLISHER_ID: 0,
        C.WORDS_COUNT: text.str.split().map(len).to_numpy(),
    })[C.METADATA_COLUMNS].astype("int64")  # fmt: skip

    has_content = ((text != "") | (category > 0)).to_numpy()
    text_emb = np.zeros((n, text_dims))
    if has_content.any() and text_dims:
        idx = np.flatnonzero(has_content)
        text_emb[idx] = content_embeddings(text.iloc[idx].tolist(), [(category[idx] - 1, category_weight)],
                                           text_dims, seed)  # fmt: skip
    fit_hours = int(coread_share * hours)
    early = out[out[C.HOUR] < fit_hours]
    coread = coread_embeddings(early[C.CLICK_ARTICLE_ID].to_numpy(), early[C.USER_ID].to_numpy(), n,
                               coread_dims, seed)  # fmt: skip
    embeddings = hybrid_embeddings(text_emb, coread, text_share)

    id_items = pd.DataFrame({
        C.ARTICLE_ID: np.arange(n, dtype=np.int64), "item": items, C.CATEGORY_ID: category,
        "category": categories.name.to_numpy()[category], "has_text": (text != "").astype(np.int64).to_numpy(),
    })  # fmt: skip
    side = {
        "interactions_ids/items.csv": id_items,
        "interactions_ids/users.csv": pd.DataFrame({C.USER_ID: np.arange(len(users)), "user": users}),
        "interactions_ids/categories.csv": categories.rename(
            columns={"id": C.CATEGORY_ID, "name": "category"}
        ),
    }
    counts = {
        "rows": int(len(df) + repeated.sum()),
        "repeated_rows_dropped": int(repeated.sum()),
        "clicks": len(out),
        "users": len(users),
        "articles": n,
        "articles_with_text": int((text != "").sum()),
        "articles_with_coread": int((np.linalg.norm(coread, axis=1) > 0).sum()),
        "articles_without_embedding": int((np.linalg.norm(embeddings, axis=1) == 0).sum()),
        "categories": len(categories) - 1,
    }
    manifest = {
        "format": "interactions",
        "epoch_ms": int(epoch_ms),
        "hours": hours,
        C.MIN_SESSION_SIZE: 1,
        "time": {
            "timestamp_kind": kind,
            "offset_ms": int(offset_ms),
            "original_start": _iso(start_ms, "Z"),
            "sessions": "from the session column" if has_session else f"gap > {session_gap_s} s",
            "coread_fit_hours": [0, fit_hours - 1] if fit_hours else None,
        },
        "counts": counts,
    }
    tables = GloboTables(articles=articles, embeddings=embeddings, clicks=out)
    summary = {"format": "interactions", **counts, **_session_stats(out), "hours": hours}
    return Imported(tables=tables, hours=hours, manifest=manifest, side=side, summary=summary)


# ---------------------------------------------------------------- writing


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


def _write_table(table: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        return atomic_write(path, lambda p: table.to_parquet(p, index=False))
    return atomic_write(path, lambda p: table.to_csv(p, index=False))


def write_import(imported: Imported, out_dir: str | Path) -> list[Path]:
    """Write an import into out_dir: the Globo files (write_globo), the side tables, then import.json.

    Side files a previous import listed in its import.json and this one does not write are removed, so
    the folder never mixes two datasets. import.json is written last: it marks a complete import.
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / C.IMPORT_FILE
    stale: list[str] = []
    if manifest_path.is_file():
        try:
            stale = list(json.loads(manifest_path.read_text()).get("side_files", []))
        except (json.JSONDecodeError, AttributeError):
            stale = []
    written = write_globo(imported.tables, out_dir, imported.hours)
    for rel, table in imported.side.items():
        written.append(_write_table(table, out_dir / rel))
    for rel in set(stale) - set(imported.side):
        old = (out_dir / rel).resolve()
        if out_dir.resolve() in old.parents:  # only what a previous import itself wrote here
            old.unlink(missing_ok=True)
            if old.parent != out_dir.resolve() and old.parent.is_dir() and not any(old.parent.iterdir()):
                old.parent.rmdir()
    manifest = {**imported.manifest, "side_files": sorted(imported.side)}
    written.append(atomic_write(manifest_path, lambda p: p.write_text(json.dumps(manifest, indent=2) + "\n")))
    return written


# ---------------------------------------------------------------- the registry and the CLI


def _convert_movielens(
    source: tuple[pd.DataFrame, pd.DataFrame], p: Mapping[str, Any], epoch_ms: int
) -> Imported:
    ratings, items = source
    tables = movielens_to_globo(
        ratings, items,
        hours=int(p["hours"]), epoch_ms=int(epoch_ms),
        session_gap_s=int(p["session_gap_s"]), max_session_clicks=int(p["max_session_clicks"]),
        click_gap_s=float(p["click_gap_s"]), min_rating=int(p["min_rating"]),
        context=dict(p["context"]), genre_weight=float(p["genre_weight"]), seed=int(p["seed"]),
    )  # fmt: skip
    clicks, hours = tables.clicks, int(p["hours"])
    sizes = clicks.groupby(C.SESSION_ID).size()
    counts = {
        "ratings_read": len(ratings),
        "clicks": len(clicks),
        "ratings_dropped": int(len(ratings) - len(clicks)),
        "articles": len(tables.articles),
        "categories": int(tables.articles[C.CATEGORY_ID].nunique()),
        "users": int(clicks[C.USER_ID].nunique()),
    }
    summary = {
        "format": "movielens",
        **counts,
        "sessions": len(sizes),
        "session_size": {"min": int(sizes.min()), "median": float(sizes.median()), "max": int(sizes.max())},
        "hours": hours,
        "clicks_per_hour": {
            "min": int(clicks.groupby(C.HOUR).size().min()),
            "max": int(clicks.groupby(C.HOUR).size().max()),
        },
    }
    manifest = {"format": "movielens", "epoch_ms": int(epoch_ms), "hours": hours,
                C.MIN_SESSION_SIZE: C.GLOBO_MIN_SESSION_SIZE, "counts": counts}  # fmt: skip
    return Imported(tables=tables, hours=hours, manifest=manifest, summary=summary)


def _convert_mind(source: MindSource, p: Mapping[str, Any], epoch_ms: int) -> Imported:
    return mind_to_globo(
        source, epoch_ms=int(epoch_ms),
        history_hours=int(p["history_hours"]), history_click_gap_s=float(p["history_click_gap_s"]),
        impression_click_gap_s=float(p["impression_click_gap_s"]), session_gap_s=float(p["session_gap_s"]),
        text_dims=int(p["text_dims"]), text_share=float(p["text_share"]),
        category_weight=float(p["category_weight"]), subcategory_weight=float(p["subcategory_weight"]),
        context=dict(p["context"]), seed=int(p["seed"]),
    )  # fmt: skip


def _convert_interactions(source: pd.DataFrame, p: Mapping[str, Any], epoch_ms: int) -> Imported:
    return interactions_to_globo(
        source, epoch_ms=int(epoch_ms),
        session_gap_s=float(p["session_gap_s"]), max_hours=int(p["max_hours"]),
        coread_share=float(p["coread_share"]), text_dims=int(p["text_dims"]), text_share=float(p["text_share"]),
        category_weight=float(p["category_weight"]), context=dict(p["context"]), seed=int(p["seed"]),
    )  # fmt: skip


# name -> importer. Adding a format: one entry here and its subsection `import.<name>` in params.yaml.
FORMATS: dict[str, Importer] = {
    "movielens": Importer(
        "a folder with MovieLens 100K's u.data and u.item", read_movielens, _convert_movielens
    ),
    "mind": Importer("a folder with MIND's behaviors.tsv and news.tsv", read_mind, _convert_mind),
    "interactions": Importer(
        "a CSV file with header user,item,timestamp[,session,category,text]",
        read_interactions,
        _convert_interactions,
    ),
}


def format_params(section: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One format's params: the keys `import` shares by every format, overlaid with `import.<name>`."""
    if name not in FORMATS:
        raise InputError(f"unknown format {name!r}; known: {sorted(FORMATS)}")
    if name not in section:
        raise ConfigError(f"params.yaml `import` has no subsection `{name}`")
    shared = {k: v for k, v in section.items() if k not in FORMATS}
    return {**shared, **section[name]}


def import_format(
    name: str, in_path: str | Path, out_dir: str | Path, params: Mapping[str, Any], epoch_ms: int
) -> dict[str, Any]:
    """Read `in_path` as format `name`, write Globo-format files to out_dir; return a summary.

    `params` is the format's own (format_params): shared keys and the format's subsection, merged.
    """
    importer = FORMATS[name]
    imported = importer.convert(importer.read(Path(in_path)), params, int(epoch_ms))
    write_import(imported, out_dir)
    return {"format": name, "out": str(out_dir), **imported.summary}


def import_movielens(in_dir: str | Path, out_dir: str | Path, params: dict[str, Any], epoch_ms: int) -> dict:
    """Read MovieLens 100K from in_dir, write Globo-format files to out_dir; return a summary."""
    return import_format("movielens", in_dir, out_dir, params, epoch_ms)


def main(argv: list[str] | None = None) -> int:
    parser = step_parser("import", __doc__)
    parser.add_argument("--format", choices=list(FORMATS), required=True, help="the source dataset's format")
    parser.add_argument(
        "--in", dest="in_path", type=Path, required=True, metavar="PATH",
        help="; ".join(f"{name}: {imp.source}" for name, imp in FORMATS.items()),
    )  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="raw folder to write (e.g. data/mind/raw)")
    parser.add_argument(
        "--hours", type=int, default=None,
        help="movielens only: hours the ratings are spread over (default: params import.movielens.hours)",
    )  # fmt: skip
    args, config = parse_step(parser, argv)

    params = format_params(config["import"], args.format)
    if args.hours is not None:
        if "hours" not in params:
            parser.error(f"--hours applies to formats with compressed time (movielens), not {args.format}")
        params["hours"] = args.hours
    summary = import_format(args.format, args.in_path, args.out, params,
                            int(config["data"]["epoch_ms"]))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
