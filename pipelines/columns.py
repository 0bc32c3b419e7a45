"""The Globo.com news-portal data contract: file names, column names and dtypes, in one place."""

from __future__ import annotations

import re

METADATA_FILE = "articles_metadata.csv"
EMBEDDINGS_FILE = "articles_embeddings.pickle"
CLICKS_DIR = "clicks"
CLICKS_ZIP = "clicks.zip"
# Hourly article drops: `articles/articles_hour_NNN.csv` (the metadata columns) beside
# `articles/embeddings_hour_NNN.pickle` (float32 [rows, 250], row j = the csv's j-th row).
ARTICLES_DIR = "articles"
EMBEDDINGS_HOUR = "embeddings"  # the kind of an article drop's pickle (see hour_file_name)
# A landed article drop: validated/articles/hour=NNN/ holds the metadata as parquet beside this matrix.
EMBEDDINGS_PART = "embeddings.npy"
EMBEDDING_DIM = 250
HOUR_MS = 3_600_000
# Written by `newsrec import` beside the files it converts (format, time mapping, counts). Validation reads
# one key of it, MIN_SESSION_SIZE: a source whose sittings can hold one click (MIND) says so there.
IMPORT_FILE = "import.json"
MIN_SESSION_SIZE = "min_session_size"
GLOBO_MIN_SESSION_SIZE = 2  # every session of the Globo release has at least 2 clicks

# kind -> (prefix, suffix) of its hourly files. One name pattern, so one parser (parse_hour_file_name).
_HOUR_FILES = {
    CLICKS_DIR: ("clicks_hour_", ".csv"),
    ARTICLES_DIR: ("articles_hour_", ".csv"),
    EMBEDDINGS_HOUR: ("embeddings_hour_", ".pickle"),
}
_HOUR_FILE = re.compile(r"^(clicks|articles|embeddings)_hour_([0-9]{3,})\.(csv|pickle)$")
# What looks meant as an hourly file: the names misnamed_hour_file explains.
_LOOSE_HOUR_FILE = re.compile(r"^(clicks|articles|embeddings)_hour_(.*)\.(csv|pickle)$", re.IGNORECASE)


def hour_file_name(hour: int, kind: str = CLICKS_DIR) -> str:
    """`clicks_hour_007.csv` for hour 7 (the real dataset's zero-padded naming); `kind` "articles" gives
    `articles_hour_007.csv`, "embeddings" `embeddings_hour_007.pickle`."""
    prefix, suffix = _HOUR_FILES[kind]
    return f"{prefix}{hour:03d}{suffix}"


def parse_hour_file_name(name: str) -> tuple[str, int] | None:
    """(kind, hour) of an hourly file name (`clicks_hour_007.csv` -> ("clicks", 7)), else None.

    Only the names hour_file_name writes count: `clicks_hour_7.csv` or `clicks_hour_007.pickle` is no
    hourly file, so every hour found under a name is found again under hour_file_name(hour, kind).
    """
    m = _HOUR_FILE.match(name)
    if m is None:
        return None
    kind, hour = m.group(1), int(m.group(2))
    return (kind, hour) if hour_file_name(hour, kind) == name else None


def misnamed_hour_file(name: str) -> tuple[str | None, int | None, str]:
    """Why `name` is not read as an hourly file (parse_hour_file_name gives None), as (kind, hour, reason):
    the kind and hour it seems meant for when they can be told (`clicks_hour_50.CSV` -> clicks, 50), else None.
    """
    m = _LOOSE_HOUR_FILE.match(name)
    if m is None:
        return None, None, ("not an hourly file name (clicks_hour_NNN.csv, articles_hour_NNN.csv, "
                            "embeddings_hour_NNN.pickle)")
    kind = m.group(1).lower()
    prefix, suffix = _HOUR_FILES[kind]
    try:
        hour = int(m.group(2)) if m.group(2).isdigit() else None  # int() also reads non-ASCII digits
    except ValueError:
        hour = None
    if hour is None:
        return kind, None, f"not an hourly file name: {m.group(2)!r} is not an hour (expected {prefix}NNN{suffix})"
    return kind, hour, (f"not read as hour {hour}: an hourly file is named exactly {hour_file_name(hour, kind)} "
                        f"(the hour in ASCII digits, zero-padded to 3; lower-case {suffix})")


def hour_of_file(name: str, kind: str = CLICKS_DIR) -> int | None:
    """The hour of a `kind` hourly file name, None for any other name."""
    parsed = parse_hour_file_name(name)
    return parsed[1] if parsed is not None and parsed[0] == kind else None


def partition_name(hour: int) -> str:
    """`hour=007`: the hive partition folder of an hour under validated/ and quarantine/."""
    return f"{HOUR}={hour:03d}"


# articles_metadata.csv
ARTICLE_ID = "article_id"
CATEGORY_ID = "category_id"
CREATED_AT_TS = "created_at_ts"
PUBLISHER_ID = "publisher_id"
WORDS_COUNT = "words_count"
METADATA_COLUMNS = [ARTICLE_ID, CATEGORY_ID, CREATED_AT_TS, PUBLISHER_ID, WORDS_COUNT]

# clicks_hour_NNN.csv
USER_ID = "user_id"
SESSION_ID = "session_id"
SESSION_START = "session_start"
SESSION_SIZE = "session_size"
CLICK_ARTICLE_ID = "click_article_id"
CLICK_TIMESTAMP = "click_timestamp"
CLICK_ENVIRONMENT = "click_environment"
CLICK_DEVICE_GROUP = "click_deviceGroup"
CLICK_OS = "click_os"
CLICK_COUNTRY = "click_country"
CLICK_REGION = "click_region"
CLICK_REFERRER_TYPE = "click_referrer_type"
CONTEXT_COLUMNS = [
    CLICK_ENVIRONMENT,
    CLICK_DEVICE_GROUP,
    CLICK_OS,
    CLICK_COUNTRY,
    CLICK_REGION,
    CLICK_REFERRER_TYPE,
]
CLICK_COLUMNS = [
    USER_ID,
    SESSION_ID,
    SESSION_START,
    SESSION_SIZE,
    CLICK_ARTICLE_ID,
    CLICK_TIMESTAMP,
    *CONTEXT_COLUMNS,
]

# Every column of both files is an integer in the real data; ids and ms timestamps need 64 bits.
METADATA_DTYPES = {c: "int64" for c in METADATA_COLUMNS}
CLICK_DTYPES = {c: "int64" for c in CLICK_COLUMNS}

# Added by validation to each landed row: which hourly drop it came from.
HOUR = "hour"
# Computed by validation beside an hour's clicks for the GX checks one row cannot answer; never landed.
SESSION_ROWS = "session_rows"  # rows of this click's session in the same hourly file
# click_article_id when it is in neither the metadata nor a landed article drop of that hour or earlier, else null
UNKNOWN_ARTICLE_ID = "unknown_article_id"
# Beside an hour's article drop: article_id when the catalogue already holds it (the static metadata or
# another hour's landed drop), else null. Never landed.
CATALOGUED_ARTICLE_ID = "catalogued_article_id"

# Derived tables (aggregates, candidates, evaluation). Clicked articles are `article_id` everywhere downstream.
CLICK_HOUR = "click_hour"  # hour bucket of click_timestamp (not of the file: late outliers land in their own hour)
CLICKS = "clicks"
USERS = "users"
ARTICLE_A = "article_a"
ARTICLE_B = "article_b"
WEIGHT = "weight"
SCORE = "score"
RANK = "rank"
LABEL = "label"
WARM = "warm"
TREND = "trend"  # an article's clicks decayed from the cutoff (the candidate pool's trend column)
# The candidate sources and their `<source>_score` / `<source>_rank` columns: pipelines.sources.
LEARNED = "learned"  # the two-tower model's source (pipelines.learned)
# The learned model's score of every candidate row for its user (NaN without a model or for a cold user),
# whichever source proposed it: a ranker feature, where learned_score is only there for its own list.
LEARNED_SIM = "learned_sim"
FUSED = "fused"


def score_col(source: str) -> str:
    """`emb_score`: the score a candidate source gave an article (NaN when it did not propose it)."""
    return f"{source}_{SCORE}"


def rank_col(source: str) -> str:
    """`emb_rank`: 1-based rank inside that source's list for the user (0 when it did not propose it)."""
    return f"{source}_{RANK}"


# Drift monitoring: per-click input features compared between a reference and a current window.
ARTICLE_AGE_H = "article_age_h"  # hours between the article's creation and the click
USER_HOUR_CLICKS = "user_hour_clicks"  # clicks of that user in that hourly drop (window-length invariant)
MODEL_SCORE = "model_score"  # the reranker's score of a candidate
