"""The Globo.com news-portal data contract: file names, column names and dtypes, in one place."""

from __future__ import annotations

METADATA_FILE = "articles_metadata.csv"
EMBEDDINGS_FILE = "articles_embeddings.pickle"
CLICKS_DIR = "clicks"
CLICKS_ZIP = "clicks.zip"
EMBEDDING_DIM = 250
HOUR_MS = 3_600_000


def hour_file_name(hour: int) -> str:
    """`clicks_hour_007.csv` for hour 7 (the real dataset's zero-padded naming)."""
    return f"clicks_hour_{hour:03d}.csv"


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
UNKNOWN_ARTICLE_ID = "unknown_article_id"  # click_article_id when it is not in the metadata, else null

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
CANDIDATE_SOURCES = ["emb", "cocl", "pop", "trend"]
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
