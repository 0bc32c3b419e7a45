"""The one catalogue reader: the static Globo files plus the landed article drops, row i = article_id i."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import columns as C
from pipelines.catalogue import article_drop_hours, read_article_drop, read_catalogue
from pipelines.config import load_params
from pipelines.features import read_articles, read_embeddings
from pipelines.validate import land_articles, partition_dir

ROOT = Path(__file__).resolve().parents[1]
DIM = C.EMBEDDING_DIM


def _static_root(root: Path, ids: list[int], rows: int) -> Path:
    """A data root whose static files hold `ids` and a `rows`-row matrix (row i filled with i + 1)."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    pd.DataFrame({C.ARTICLE_ID: ids, C.CATEGORY_ID: 1, C.CREATED_AT_TS: 1000, C.PUBLISHER_ID: 0,
                  C.WORDS_COUNT: 100}).to_csv(raw / C.METADATA_FILE, index=False)
    matrix = np.repeat(np.arange(1, rows + 1, dtype=np.float32)[:, None], DIM, axis=1)
    (raw / C.EMBEDDINGS_FILE).write_bytes(pickle.dumps(matrix, protocol=5))
    return root


def _drop(root: Path, hour: int, ids: list[int]) -> None:
    """Land an article drop as validation does; its embedding rows are filled with -id."""
    frame = pd.DataFrame({C.ARTICLE_ID: ids, C.CATEGORY_ID: 2, C.CREATED_AT_TS: 2000, C.PUBLISHER_ID: 0,
                          C.WORDS_COUNT: 50})
    land_articles(frame, -np.repeat(np.asarray(ids, dtype=np.float32)[:, None], DIM, axis=1), root, hour)


@pytest.mark.unit
def test_without_drops_it_is_exactly_the_static_readers(tmp_path):
    root = _static_root(tmp_path, [2, 0, 1], 4)  # any row order, a matrix longer than the metadata
    articles, embeddings = read_catalogue(root)
    pd.testing.assert_frame_equal(articles, read_articles(root / "raw" / C.METADATA_FILE))
    expected = read_embeddings(root / "raw" / C.EMBEDDINGS_FILE)
    assert embeddings.dtype == expected.dtype and np.array_equal(embeddings, expected)
    _drop(root, 5, [9])
    assert read_catalogue(root, until_hour=4)[1].shape == (4, DIM)  # drops after until_hour do not count


@pytest.mark.unit
def test_drops_append_rows_and_write_embeddings_at_their_ids(tmp_path):
    root = _static_root(tmp_path, [0, 1, 2], 3)
    _drop(root, 7, [6, 3])
    _drop(root, 2, [4])
    _drop(root, 9, [])  # an hour without new articles
    assert article_drop_hours(root) == [2, 7, 9] and article_drop_hours(root, until_hour=7) == [2, 7]

    articles, embeddings = read_catalogue(root)
    assert articles[C.ARTICLE_ID].tolist() == [0, 1, 2, 4, 6, 3]  # static, then the drops in hour order
    assert articles.index.equals(pd.RangeIndex(6)) and (articles.dtypes == "int64").all()
    assert embeddings.shape == (7, DIM) and embeddings.dtype == np.float32
    assert embeddings[:, 0].tolist() == [1, 2, 3, -3, -4, 0, -6]  # id 5 was never delivered: zeros

    until_2, emb_2 = read_catalogue(root, until_hour=2)
    assert until_2[C.ARTICLE_ID].tolist() == [0, 1, 2, 4] and emb_2.shape == (5, DIM)
    pd.testing.assert_frame_equal(until_2, articles.iloc[:4])  # an earlier catalogue is a prefix
    frame, matrix = read_article_drop(root, 7)
    assert frame[C.ARTICLE_ID].tolist() == [6, 3] and matrix[:, 0].tolist() == [-6, -3]


@pytest.mark.unit
def test_a_hand_edited_partition_repeating_an_id_is_an_error(tmp_path):
    root = _static_root(tmp_path, [0, 1], 2)
    _drop(root, 0, [1])
    with pytest.raises(ValueError, match=r"repeat ids of the catalogue: \[1\]"):
        read_catalogue(root)
    shutil.rmtree(partition_dir(root, 0, C.ARTICLES_DIR))
    _drop(root, 0, [2])
    _drop(root, 1, [2])
    with pytest.raises(ValueError, match=r"\[2\]"):
        read_catalogue(root)


@pytest.mark.data
def test_synthetic_drops_add_up_to_the_catalogue_without_drops(tiny_raw, tiny_drops_raw, tiny_drops_validated):
    root, _ = tiny_drops_validated
    whole = read_articles(tiny_raw / "raw" / C.METADATA_FILE)
    whole_emb = read_embeddings(tiny_raw / "raw" / C.EMBEDDINGS_FILE)

    articles, embeddings = read_catalogue(root)
    pd.testing.assert_frame_equal(articles.sort_values(C.ARTICLE_ID, ignore_index=True), whole)
    assert np.array_equal(embeddings, whole_emb)
    static = read_articles(tiny_drops_raw / "raw" / C.METADATA_FILE)
    pd.testing.assert_frame_equal(articles.iloc[: len(static)], static)

    # As of hour 5: the static articles and those published up to the end of hour 5, nothing later.
    until, until_emb = read_catalogue(root, until_hour=5)
    end_of_5 = load_params("data", ROOT / "params.yaml")["epoch_ms"] + 6 * C.HOUR_MS
    assert sorted(until[C.ARTICLE_ID]) == sorted(whole.loc[whole[C.CREATED_AT_TS] < end_of_5, C.ARTICLE_ID])
    known = until[C.ARTICLE_ID].to_numpy()
    assert np.array_equal(until_emb[known], whole_emb[known])
    unknown = np.setdiff1d(np.arange(len(until_emb)), known)
    assert not until_emb[unknown].any()  # not delivered by hour 5: zero rows


def test_catalogue_articles_is_the_catalogues_metadata_without_embeddings(tiny_drops_validated):
    from pipelines.catalogue import catalogue_articles, read_catalogue

    root, _ = tiny_drops_validated
    articles, _ = read_catalogue(root)
    pd.testing.assert_frame_equal(catalogue_articles(root), articles)
    early, _ = read_catalogue(root, until_hour=3)
    pd.testing.assert_frame_equal(catalogue_articles(root, until_hour=3), early)
