"""MovieLens 100K -> Globo format: exact file format and every mapping rule, on small files written here."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import columns as C
from pipelines import importers
from pipelines.config import load_params

EPOCH = 1_506_826_800_000
GENRES = importers.MOVIELENS_GENRES


def _item_line(movie_id: int, title: str, date: str, genres: list[str]) -> str:
    flags = ["1" if g in genres else "0" for g in GENRES]
    return "|".join([str(movie_id), title, date, "", f"http://us.imdb.com/M/title-exact?{movie_id}", *flags])


# Movie ids are not contiguous on purpose: the import must remap them to 0..n-1 in id order.
ITEMS = [
    (10, "Toy Story (1995)", "01-Jan-1995", ["Animation", "Children's", "Comedy"]),
    (20, "GoldenEye (1995)", "01-Jan-1995", ["Action", "Adventure", "Thriller"]),
    (30, "Four Rooms (1995)", "", ["Thriller"]),
    (40, "unknown", "", []),
    (50, "Café au lait (Métisse) (1993)", "12-Mar-1994", ["Comedy"]),
    (60, "Toy Soldiers (1991)", "15-Apr-1991", ["Animation", "Comedy"]),
    (70, "Nosferatu (Nosferatu, eine Symphonie des Grauens) (1922)", "01-Jan-1922", ["Horror"]),
]


def write_movielens(path: Path, ratings: list[tuple[int, int, int, int]], items=ITEMS) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "u.item").write_bytes(("\n".join(_item_line(*it) for it in items) + "\n").encode("latin-1"))
    (path / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
    return path


T0 = 880_000_000  # MovieLens timestamps are seconds

RATINGS = [
    # user 7: two sittings a day apart (3 + 2 ratings)
    (7, 10, 5, T0), (7, 20, 3, T0 + 60), (7, 60, 4, T0 + 120),
    (7, 30, 2, T0 + 86_400), (7, 50, 4, T0 + 86_460),
    # user 3: a lone rating before a sitting of 2 -> merged forward into one session of 3
    (3, 10, 4, T0 + 10), (3, 20, 4, T0 + 50_000), (3, 50, 1, T0 + 50_030),
    # user 5: a sitting of 2, then a lone rating much later -> merged back into a session of 3
    (5, 60, 3, T0 + 20), (5, 10, 5, T0 + 40), (5, 20, 4, T0 + 200_000),
    # user 9: a single rating -> dropped (Globo sessions have >= 2 clicks)
    (9, 10, 5, T0 + 30),
    # user 1: two sittings
    (1, 20, 5, T0 + 100_000), (1, 60, 2, T0 + 100_100), (1, 10, 3, T0 + 300_000), (1, 50, 4, T0 + 300_001),
]  # fmt: skip


def params(**over) -> dict:
    p = load_params("import")
    p.update(over)
    return p


def convert(ratings=RATINGS, items=ITEMS, tmp_path: Path | None = None, **over) -> importers.GloboTables:
    p = params(**over)
    src = write_movielens(tmp_path, ratings, items)
    r, i = importers.read_movielens(src)
    return importers.movielens_to_globo(
        r, i, hours=p["hours"], epoch_ms=EPOCH, session_gap_s=p["session_gap_s"],
        max_session_clicks=p["max_session_clicks"], click_gap_s=p["click_gap_s"], min_rating=p["min_rating"],
        context=p["context"], genre_weight=p["genre_weight"], seed=p["seed"],
    )  # fmt: skip


@pytest.mark.unit
def test_cli_writes_exact_globo_files(tmp_path):
    from pipelines.cli import main

    src = write_movielens(tmp_path / "ml", RATINGS)
    out = tmp_path / "ml-globo" / "raw"
    assert main(["import", "--format", "movielens", "--in", str(src), "--out", str(out), "--hours", "3"]) == 0

    meta_text = (out / C.METADATA_FILE).read_text().splitlines()
    assert meta_text[0] == ",".join(C.METADATA_COLUMNS)
    meta = pd.read_csv(out / C.METADATA_FILE)
    assert list(meta.dtypes) == [np.int64] * len(C.METADATA_COLUMNS)
    assert meta[C.ARTICLE_ID].tolist() == list(range(len(ITEMS)))

    with (out / C.EMBEDDINGS_FILE).open("rb") as fh:
        emb = pickle.load(fh)
    assert (
        isinstance(emb, np.ndarray) and emb.dtype == np.float32 and emb.shape == (len(ITEMS), C.EMBEDDING_DIM)
    )
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)

    files = sorted(p.name for p in (out / C.CLICKS_DIR).iterdir())
    assert files == [C.hour_file_name(h) for h in range(3)]
    total = 0
    for h, name in enumerate(files):
        text = (out / C.CLICKS_DIR / name).read_text().splitlines()
        assert text[0] == ",".join(C.CLICK_COLUMNS)
        clicks = pd.read_csv(out / C.CLICKS_DIR / name)
        assert list(clicks.dtypes) == [np.int64] * len(C.CLICK_COLUMNS)
        assert clicks[C.CLICK_TIMESTAMP].between(EPOCH + h * C.HOUR_MS, EPOCH + (h + 1) * C.HOUR_MS - 1).all()
        total += len(clicks)
    assert total == len(RATINGS) - 1  # only user 9's lone rating is gone


@pytest.mark.unit
def test_rerun_with_fewer_hours_leaves_no_stale_files(tmp_path):
    src = write_movielens(tmp_path / "ml", RATINGS)
    out = tmp_path / "raw"
    importers.import_movielens(src, out, params(hours=4), EPOCH)
    (out / C.CLICKS_ZIP).write_bytes(b"stale")
    summary = importers.import_movielens(src, out, params(hours=2), EPOCH)
    assert sorted(p.name for p in (out / C.CLICKS_DIR).iterdir()) == [
        C.hour_file_name(0),
        C.hour_file_name(1),
    ]
    assert not (out / C.CLICKS_ZIP).exists()
    assert not [p for p in out.rglob(".*tmp")]
    assert summary["clicks"] == len(RATINGS) - 1 and summary["sessions"] == 6
    json.dumps(summary)


@pytest.mark.unit
def test_articles_mapping_rules(tmp_path):
    t = convert(tmp_path=tmp_path, hours=2)
    a = t.articles.set_index(C.ARTICLE_ID)
    # ids 10..70 -> 0..6 in id order
    assert a.index.tolist() == [0, 1, 2, 3, 4, 5, 6]
    # category = first genre flag in u.item order; none set -> 0 ("unknown")
    assert a[C.CATEGORY_ID].tolist() == [
        GENRES.index("Animation"),
        GENRES.index("Action"),
        GENRES.index("Thriller"),
        0,
        GENRES.index("Comedy"),
        GENRES.index("Animation"),
        GENRES.index("Horror"),
    ]
    # release date at 00:00 UTC
    assert a.loc[0, C.CREATED_AT_TS] == int(pd.Timestamp("1995-01-01", tz="UTC").value // 10**6)
    assert a.loc[4, C.CREATED_AT_TS] == int(pd.Timestamp("1994-03-12", tz="UTC").value // 10**6)
    assert a.loc[6, C.CREATED_AT_TS] == 0  # before 1970: clamped, timestamps are non-negative
    # no release date: the first click on it (movie 30 = article 2 is rated by user 7)
    first_click = t.clicks.loc[t.clicks[C.CLICK_ARTICLE_ID] == 2, C.CLICK_TIMESTAMP].min()
    assert a.loc[2, C.CREATED_AT_TS] == first_click
    # no release date and never clicked: the start of hour 000
    assert a.loc[3, C.CREATED_AT_TS] == EPOCH
    # words of the title without the year; a single publisher
    assert a[C.WORDS_COUNT].tolist() == [2, 1, 2, 1, 4, 2, 6]
    assert (a[C.PUBLISHER_ID] == 0).all()


@pytest.mark.unit
def test_sessions_have_two_clicks_and_consistent_sizes(tmp_path):
    t = convert(tmp_path=tmp_path, hours=3)
    c = t.clicks
    sizes = c.groupby(C.SESSION_ID).size()
    assert (sizes >= 2).all()
    assert (c.groupby(C.SESSION_ID)[C.SESSION_SIZE].agg(["min", "max"]).eq(sizes, axis=0)).all().all()
    assert c.groupby(C.SESSION_ID)[C.USER_ID].nunique().eq(1).all()
    assert c.groupby(C.SESSION_ID)[C.HOUR].nunique().eq(1).all()  # a session lies in one hourly file
    # users 1, 3, 5, 7 -> 0..3; user 9 (one rating) dropped
    assert sorted(c[C.USER_ID].unique()) == [0, 1, 2, 3]
    per_user = c.groupby(C.USER_ID)[C.SESSION_ID].nunique().to_dict()
    assert per_user == {0: 2, 1: 1, 2: 1, 3: 2}  # user 3's and 5's singletons merged, not new sessions
    assert sorted(sizes.tolist()) == [2, 2, 2, 3, 3, 3]


@pytest.mark.unit
def test_context_columns_are_the_params_constants(tmp_path):
    t = convert(tmp_path=tmp_path, hours=2)
    ctx = params()["context"]
    for col in C.CONTEXT_COLUMNS:
        assert (t.clicks[col] == ctx[col]).all()


@pytest.mark.unit
def test_min_rating_filters_clicks(tmp_path):
    t = convert(tmp_path=tmp_path, hours=2, min_rating=4)
    # >= 4 keeps 3 ratings of user 7, 2 each of users 1, 3, 5 and user 9's lone one (dropped)
    assert len(t.clicks) == 9
    users = [1, 3, 5, 7]
    movies = [i for i, *_ in ITEMS]
    pairs = {(users[u], movies[a]) for u, a in zip(t.clicks[C.USER_ID], t.clicks[C.CLICK_ARTICLE_ID])}
    assert pairs == {(u, i) for u, i, r, _ in RATINGS if r >= 4 and u != 9}


@pytest.mark.unit
def test_sessionize_splits_on_gap_merges_singletons_and_caps_length():
    r = pd.DataFrame({
        "user": [1] * 9 + [2] * 3,
        "item": list(range(9)) + [0, 1, 2],
        "rating": 3,
        # user 1: 1 alone, then 7 close together, then 1 alone; user 2: 1 alone, 1 alone, 1 alone
        "ts": [0, 10_000, 10_010, 10_020, 10_030, 10_040, 10_050, 10_060, 50_000, 0, 5_000, 10_000],
    })  # fmt: skip
    s = importers.sessionize(r, gap_s=100, max_clicks=3)
    sizes = s.groupby("session").size()
    assert (sizes >= 2).all() and (sizes <= 4).all()
    assert s.groupby("session").user.nunique().eq(1).all()
    assert sizes.sum() == len(r)
    # user 1: 1 + 7 + 1 = 9 ratings in one merged run, split into ceil(9/3) = 3 equal parts
    assert sizes[s[s.user == 1].session.unique()].tolist() == [3, 3, 3]
    # user 2: three singletons chain into one session
    assert sizes[s[s.user == 2].session.unique()].tolist() == [3]
    # order inside a user's history is kept
    assert s[s.user == 1].sort_values("session", kind="stable").ts.is_monotonic_increasing
    with pytest.raises(ValueError, match="max_session_clicks"):
        importers.sessionize(r, gap_s=100, max_clicks=2)


@pytest.mark.unit
def test_time_is_compressed_in_order_onto_the_hours():
    n_users, per_user = 40, 4
    rng = np.random.default_rng(0)
    starts = np.sort(rng.integers(0, 10**7, n_users))
    r = pd.DataFrame(
        [(u, k, 3, int(starts[u]) + 60 * k) for u in range(n_users) for k in range(per_user)],
        columns=["user", "item", "rating", "ts"],
    )
    s = importers.sessionize(r, gap_s=1800, max_clicks=100)
    placed = importers.place_in_hours(s, hours=8, epoch_ms=EPOCH, click_gap_s=30)

    first = placed.groupby("session").agg(
        orig=("ts", "min"),
        start=(C.SESSION_START, "first"),
        hour=(C.HOUR, "first"),
        last=(C.CLICK_TIMESTAMP, "max"),
    )
    # session starts keep the original order and every hour gets the same number of sessions
    assert first.sort_values("orig").start.is_monotonic_increasing
    assert first.hour.value_counts().tolist() == [5] * 8
    assert (first.start % 1000 == 0).all()
    assert (first.start >= EPOCH + first.hour * C.HOUR_MS).all()
    assert (first["last"] < EPOCH + (first.hour + 1) * C.HOUR_MS).all()
    # clicks inside a session: in order, click_gap_s apart, never before the session start
    one = placed[placed.session == placed.session.iloc[0]].sort_values("ts")
    assert np.diff(one[C.CLICK_TIMESTAMP]).tolist() == [30_000] * (per_user - 1)
    assert (placed[C.CLICK_TIMESTAMP] >= placed[C.SESSION_START]).all()


@pytest.mark.unit
def test_a_long_session_late_in_its_hour_is_squeezed_inside_it():
    # 60 clicks before it: the 100-click session starts 60/160 into the hour, with 99 gaps to fit in the rest
    r = pd.DataFrame(
        {
            "user": [2] * 60 + [1] * 100,
            "item": list(range(60)) + list(range(100)),
            "rating": 3,
            "ts": list(range(-60, 0)) + list(range(100)),
        }
    )
    placed = importers.place_in_hours(
        importers.sessionize(r, 1800, 100), hours=1, epoch_ms=EPOCH, click_gap_s=60
    )
    long = placed[placed.user == 1]
    assert long[C.SESSION_START].iloc[0] == EPOCH + 60 * C.HOUR_MS // 160 // 1000 * 1000
    assert long[C.CLICK_TIMESTAMP].max() < EPOCH + C.HOUR_MS
    gaps = np.diff(long[C.CLICK_TIMESTAMP])
    assert (gaps > 0).all() and (gaps < 60_000).all()


@pytest.mark.unit
def test_embeddings_follow_content_and_are_deterministic(tmp_path):
    a = convert(tmp_path=tmp_path / "a", hours=2).embeddings
    b = convert(tmp_path=tmp_path / "b", hours=2).embeddings
    np.testing.assert_array_equal(a, b)
    sim = a @ a.T
    # Toy Story vs Toy Soldiers (shared title word, Animation+Comedy) beats Toy Story vs GoldenEye
    assert sim[0, 5] > sim[0, 1] + 0.2


@pytest.mark.unit
def test_release_dates_parse_or_fall_back():
    assert importers.parse_release_date("01-Jan-1995") == 788_918_400_000
    assert importers.parse_release_date("") is None
    assert importers.parse_release_date("31-Feb-1995") is None
    assert importers.parse_release_date("1995") is None
    assert importers.clean_title("Twelve Monkeys (1995)") == "Twelve Monkeys"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: (d / "u.data").unlink(), "u.data"),
        (lambda d: (d / "u.data").write_text("1\t10\t5\n"), "expected 4 tab-separated fields"),
        (lambda d: (d / "u.data").write_text("1\t10\tfive\t880000000\n"), "line 1: field 'rating'"),
        (
            lambda d: (d / "u.data").write_text("1\t99\t5\t880000000\n1\t10\t5\t880000001\n"),
            "missing from u.item",
        ),
        (lambda d: (d / "u.item").write_text("10|Toy Story (1995)|01-Jan-1995\n"), "expected 24"),
        (
            lambda d: (d / "u.item").write_text(
                _item_line(10, "X", "", []).replace("|0|0|0", "|0|2|0", 1) + "\n"
            ),
            "genre flags",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(tmp_path, mutate, message):
    src = write_movielens(tmp_path, RATINGS)
    mutate(src)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        importers.read_movielens(src)


@pytest.mark.unit
def test_cli_reports_bad_input_and_too_many_hours(tmp_path, capsys):
    src = write_movielens(tmp_path / "ml", RATINGS)
    rc = importers.main(
        ["--format", "movielens", "--in", str(src), "--out", str(tmp_path / "o"), "--hours", "50"]
    )
    assert rc == 2
    assert "15 clicks in 6 sessions leave hour" in capsys.readouterr().err
    rc = importers.main(
        ["--format", "movielens", "--in", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
    )
    assert rc == 2 and "u.data" in capsys.readouterr().err


@pytest.mark.data
def test_imported_movielens_passes_validation(tmp_path):
    """The import writes drops the hourly GX validation lands, every hour of them."""
    import duckdb

    from pipelines.validate import LANDED, Settings, validate_all

    ratings = [
        (u, i, 1 + (u + i) % 5, T0 + 7_200 * u + 60 * k)
        for u in range(1, 31)
        for k, i in enumerate([10, 20, 30, 40, 50, 60, 70][u % 3 : u % 3 + 4])
    ]
    src = write_movielens(tmp_path / "ml", ratings)
    root = tmp_path / "movielens"
    importers.import_movielens(src, root / "raw", params(hours=6), EPOCH)
    results = validate_all(
        root,
        epoch_ms=EPOCH,
        settings=Settings.from_params(load_params("validate")),
        gx_dir="great_expectations",
        docs=False,
    )
    outcome = [(r.hour, r.status) for r in results]
    assert outcome == [(h, LANDED) for h in range(6)], [r.reason for r in results]
    landed = duckdb.sql(
        f"select count(*), count(distinct user_id), min(hour::int), max(hour::int) "
        f"from read_parquet('{root}/validated/clicks/*/*.parquet', hive_partitioning=true)"
    ).fetchall()
    assert landed == [(len(ratings), 30, 0, 5)]
