"""Public datasets -> Globo format (MovieLens 100K, MIND, an interactions CSV): exact file format and every
mapping rule on small files written here, then the real MIND subset imported and validated whole."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import columns as C
from pipelines import importers
from pipelines.cli import main as cli
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
    p = importers.format_params(load_params("import"), "movielens")
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
    rc = cli(["import", "--format", "movielens", "--in", str(src), "--out", str(tmp_path / "o"), "--hours", "50"])
    assert rc == 1
    assert "15 clicks in 6 sessions leave hour" in capsys.readouterr().err
    rc = cli(["import", "--format", "movielens", "--in", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert rc == 1 and "u.data" in capsys.readouterr().err


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


# ================================================================ the registry


@pytest.mark.unit
def test_formats_registry_and_per_format_params():
    assert set(importers.FORMATS) == {"movielens", "mind", "interactions"}
    for imp in importers.FORMATS.values():
        assert imp.source and callable(imp.read) and callable(imp.convert)
    section = load_params("import")
    for name in importers.FORMATS:
        p = importers.format_params(section, name)
        # shared keys reach every format; a format never sees another format's subsection
        assert p["seed"] == section["seed"] and p["context"] == section["context"]
        assert not set(p) & (set(importers.FORMATS) - {name})
    assert importers.format_params(section, "movielens")["hours"] == section["movielens"]["hours"]
    assert "hours" not in importers.format_params(section, "mind")


@pytest.mark.unit
def test_cli_hours_is_movielens_only(tmp_path, capsys):
    with pytest.raises(SystemExit):
        importers.main(
            ["--format", "mind", "--in", str(tmp_path), "--out", str(tmp_path / "o"), "--hours", "3"]
        )
    assert "--hours applies to formats with compressed time" in capsys.readouterr().err


# ================================================================ MIND

# Hand-checkable MIND files. Ids are chosen so numeric order (U3 < U7 < U20 < U100, N5 < ... < N300) differs
# from string order. The first impression is at 2019-11-09 08:10:00, so 08:00 is the start of hour
# HISTORY_HOURS and every impression's hour and second can be read off its time.
BEHAVIORS = [
    (1, "U20", "11/09/2019 8:10:00 AM", "N12 N5 N12", "N40-1 N300-0 N7-1"),
    (2, "U3", "11/09/2019 8:20:30 AM", "N5", "N300-1 N40-0"),
    (3, "U20", "11/09/2019 8:40:01 AM", "N12 N5 N12", "N7-0 N41-1"),  # 1800 s after U20's last click
    (4, "U20", "11/09/2019 10:15:00 AM", "N12 N5 N12", "N300-1"),
    (5, "U100", "11/10/2019 9:59:59 AM", "", "N5-1 N88-0 N12-1"),  # no history; clicks straddle 10:00
    (6, "U7", "11/09/2019 11:00:05 PM", "N40 N300 N41 N5", "N12-0 N5-0 N7-1"),
]
NEWS = [
    ("N5", "sports", "football_nfl", "Big match tonight", "The home team wins the big match"),
    ("N12", "news", "newspolitics", "Election day arrives", "Voters go to the polls today"),
    ("N300", "news", "newspolitics", "Election results", "Counting continues as voters wait"),
    ("N7", "sports", "football_nfl", "", ""),  # a row without text
    ("N999", "finance", "markets", "Stocks rally", "Markets climb"),  # referenced by no behaviour
]
HISTORY_HOURS = 2
H0 = EPOCH + HISTORY_HOURS * C.HOUR_MS  # 2019-11-09 08:00 on the hourly clock
NEWS_IDS = ["N5", "N7", "N12", "N40", "N41", "N88", "N300"]  # article_id = position
USERS = ["U3", "U7", "U20", "U100"]  # user_id = position


def write_mind(path: Path, behaviors=BEHAVIORS, news=NEWS) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "behaviors.tsv").write_text("".join("\t".join(map(str, b)) + "\n" for b in behaviors))
    (path / "news.tsv").write_text(
        "".join(
            "\t".join([*n, f"https://assets.msn.com/labs/mind/{n[0]}.html", "[]", "[]"]) + "\n" for n in news
        )
    )
    return path


def mind_params(**over) -> dict:
    return importers.format_params(load_params("import"), "mind") | {"history_hours": HISTORY_HOURS} | over


@pytest.fixture
def mind_out(tmp_path) -> Path:
    """The tiny MIND files imported into tmp_path/mind/raw."""
    out = tmp_path / "mind" / "raw"
    importers.import_format("mind", write_mind(tmp_path / "src"), out, mind_params(), EPOCH)
    return out


def read_clicks(raw: Path) -> pd.DataFrame:
    parts = [
        pd.read_csv(f).assign(file_hour=int(f.stem[-3:])) for f in sorted((raw / C.CLICKS_DIR).iterdir())
    ]
    return pd.concat(parts, ignore_index=True)


def at(hhmmss: str, day: int = 0) -> int:
    """The hourly-clock ms of a real 2019-11-(09+day) time."""
    h, m, s = map(int, hhmmss.split(":"))
    return H0 + ((day * 24 + h - 8) * 3600 + m * 60 + s) * 1000


@pytest.mark.unit
def test_mind_ids_are_remapped_in_numeric_order_with_tables(mind_out):
    ids = pd.read_csv(mind_out / "mind_ids" / "articles.csv")
    assert ids["news_id"].tolist() == NEWS_IDS and ids[C.ARTICLE_ID].tolist() == list(range(7))
    users = pd.read_csv(mind_out / "mind_ids" / "users.csv")
    assert users["mind_user_id"].tolist() == USERS and users[C.USER_ID].tolist() == [0, 1, 2, 3]
    # N999 has a news row but no behaviour refers to it: no time says when it existed, so it is not imported
    assert "N999" not in set(ids["news_id"])
    assert pd.read_csv(mind_out / C.METADATA_FILE)[C.ARTICLE_ID].tolist() == list(range(7))
    manifest = json.loads((mind_out / C.IMPORT_FILE).read_text())
    assert manifest["counts"]["news_rows_not_referenced"] == 1
    assert sorted(manifest["side_files"]) == [
        "impressions.parquet", "mind_ids/articles.csv", "mind_ids/categories.csv", "mind_ids/users.csv",
    ]  # fmt: skip


@pytest.mark.unit
def test_mind_impression_clicks_lie_at_their_real_time(mind_out):
    c = read_clicks(mind_out)
    imp = c[c.file_hour >= HISTORY_HOURS]
    got = sorted(zip(imp[C.USER_ID], imp[C.CLICK_ARTICLE_ID], imp[C.CLICK_TIMESTAMP]))
    a, u = NEWS_IDS.index, USERS.index
    gap = int(mind_params()["impression_click_gap_s"] * 1000)
    want = sorted([
        (u("U20"), a("N40"), at("08:10:00")), (u("U20"), a("N7"), at("08:10:00") + gap),  # list order
        (u("U3"), a("N300"), at("08:20:30")),
        (u("U20"), a("N41"), at("08:40:01")),
        (u("U20"), a("N300"), at("10:15:00")),
        (u("U100"), a("N5"), at("09:59:59", day=1)), (u("U100"), a("N12"), at("09:59:59", day=1) + gap),
        (u("U7"), a("N7"), at("23:00:05")),
    ])  # fmt: skip
    assert got == want
    # every click sits in the file of its hour
    assert ((c[C.CLICK_TIMESTAMP] - EPOCH) // C.HOUR_MS == c.file_hour).all()
    # one constant offset; its original start is the hour of the first impression
    t = json.loads((mind_out / C.IMPORT_FILE).read_text())["time"]
    assert t["original_start"] == "2019-11-09T08:00:00" and t["first_impression"] == "2019-11-09T08:10:00"
    assert t["offset_ms"] == H0 - int(pd.Timestamp("2019-11-09 08:00:00").value // 10**6)
    assert t["history_block_hours"] == [0, 1] and t["impression_hours"] == [2, 28]
    assert sorted(p.name for p in (mind_out / C.CLICKS_DIR).iterdir()) == [
        C.hour_file_name(h) for h in range(29)
    ]


@pytest.mark.unit
def test_mind_history_fills_an_even_block_before_the_impressions(mind_out):
    c = read_clicks(mind_out)
    hist = c[c.file_hour < HISTORY_HOURS].sort_values(C.CLICK_TIMESTAMP)
    # each user's list (once, though U20 has three impressions) in its order; U100 has no history
    lists = hist.groupby(C.USER_ID)[C.CLICK_ARTICLE_ID].agg(list).to_dict()
    n = NEWS_IDS.index
    assert lists == {
        0: [n("N5")],
        1: [n("N40"), n("N300"), n("N41"), n("N5")],
        2: [n("N12"), n("N5"), n("N12")],
    }
    # users in id order laid end to end by clicks over 2 hours: U3 at 0, U7 after 1/8 of 2 h, U20 after 5/8
    starts = hist.groupby(C.USER_ID)[C.SESSION_START].first().to_dict()
    assert starts == {0: EPOCH, 1: EPOCH + 900_000, 2: EPOCH + 4_500_000}
    assert hist.groupby("file_hour").size().tolist() == [5, 3]  # even to within one user's list
    # one session per user, history_click_gap_s apart, all before the first impression hour
    assert hist.groupby(C.USER_ID)[C.SESSION_ID].nunique().eq(1).all()
    gap = int(mind_params()["history_click_gap_s"] * 1000)
    assert np.diff(hist[hist[C.USER_ID] == 1][C.CLICK_TIMESTAMP]).tolist() == [gap] * 3
    assert hist[C.CLICK_TIMESTAMP].max() < H0
    assert len(hist) == 8


@pytest.mark.unit
def test_mind_sessions_follow_the_gap_and_never_cross_an_hour(mind_out):
    c = read_clicks(mind_out)
    imp = c[c.file_hour >= HISTORY_HOURS]
    sessions = {
        sid: (int(g[C.USER_ID].iloc[0]), sorted(g[C.CLICK_TIMESTAMP])) for sid, g in imp.groupby(C.SESSION_ID)
    }
    gap = int(mind_params()["impression_click_gap_s"] * 1000)
    assert sorted(sessions.values()) == sorted([
        (2, [at("08:10:00"), at("08:10:00") + gap, at("08:40:01")]),  # 1800 s apart: still one session
        (2, [at("10:15:00")]),  # more than session_gap_s later: a new session
        (0, [at("08:20:30")]),
        (3, [at("09:59:59", day=1)]), (3, [at("09:59:59", day=1) + gap]),  # split at the hour boundary
        (1, [at("23:00:05")]),
    ])  # fmt: skip
    # Globo's session columns agree with the rows, in every file, history included
    for _, g in c.groupby(C.SESSION_ID):
        assert g.file_hour.nunique() == 1 and g[C.USER_ID].nunique() == 1
        assert (g[C.SESSION_SIZE] == len(g)).all() and (
            g[C.SESSION_START] == g[C.CLICK_TIMESTAMP].min()
        ).all()
        assert (g[C.SESSION_ID] // 1_000_000 == g[C.SESSION_START] // 1000).all()
    assert json.loads((mind_out / C.IMPORT_FILE).read_text())[C.MIN_SESSION_SIZE] == 1


@pytest.mark.unit
def test_mind_articles_first_appearance_category_and_words(mind_out):
    a = pd.read_csv(mind_out / C.METADATA_FILE).set_index(C.ARTICLE_ID)
    n = NEWS_IDS.index
    created = a[C.CREATED_AT_TS]
    assert created[n("N5")] == EPOCH  # U3's history, the first click of the block
    assert created[n("N40")] == EPOCH + 900_000 and created[n("N300")] == EPOCH + 930_000  # U7's history
    assert created[n("N12")] == EPOCH + 4_500_000  # U20's history, before it is shown at 23:00
    assert created[n("N7")] == at("08:10:00")  # clicked at 08:10:01, first shown at 08:10:00
    assert created[n("N88")] == at("09:59:59", day=1)  # shown once, never clicked
    cats = pd.read_csv(mind_out / "mind_ids" / "categories.csv")
    assert cats.values.tolist() == [[0, "(unknown)"], [1, "news"], [2, "sports"]]
    assert a[C.CATEGORY_ID].tolist() == [2, 2, 1, 0, 0, 0, 1]  # no news row -> 0
    ids = pd.read_csv(mind_out / "mind_ids" / "articles.csv")
    assert ids["subcategory"].tolist() == ["football_nfl", "football_nfl", "newspolitics", "(unknown)",
                                           "(unknown)", "(unknown)", "newspolitics"]  # fmt: skip
    assert ids["has_text"].tolist() == [1, 1, 1, 0, 0, 0, 1]  # a news row, even with empty text
    assert a[C.WORDS_COUNT].tolist() == [3 + 7, 0, 3 + 6, 0, 0, 0, 2 + 5]  # title + abstract
    assert (a[C.PUBLISHER_ID] == 0).all()


@pytest.mark.unit
def test_mind_embeddings_text_part_co_read_part_and_zeros(mind_out, tmp_path):
    with (mind_out / C.EMBEDDINGS_FILE).open("rb") as fh:
        emb = pickle.load(fh)
    assert emb.dtype == np.float32 and emb.shape == (7, C.EMBEDDING_DIM)
    td = mind_params()["text_dims"]
    text, coread = np.linalg.norm(emb[:, :td], axis=1), np.linalg.norm(emb[:, td:], axis=1)
    n = NEWS_IDS.index
    has_text = [n(x) for x in ("N5", "N7", "N12", "N300")]
    in_history = [n(x) for x in ("N5", "N12", "N40", "N41", "N300")]
    np.testing.assert_array_equal(text > 0, np.isin(np.arange(7), has_text))
    np.testing.assert_array_equal(coread > 0, np.isin(np.arange(7), in_history))
    share = mind_params()["text_share"]
    for i in set(has_text) & set(in_history):  # both parts, weighted by text_share
        assert text[i] ** 2 == pytest.approx(share, abs=1e-5) and coread[i] ** 2 == pytest.approx(
            1 - share, abs=1e-5
        )
    norms = np.linalg.norm(emb, axis=1)
    np.testing.assert_allclose(norms[norms > 0], 1.0, rtol=1e-5)
    assert norms[n("N88")] == 0  # no text, in no history: no evidence, no vector
    # content: the two election stories are closer in text than election vs football
    t = emb[:, :td] / np.maximum(text, 1e-12)[:, None]
    assert t[n("N300")] @ t[n("N12")] > t[n("N300")] @ t[n("N5")] + 0.2
    assert t[n("N7")] @ t[n("N5")] > 0.5  # same category and subcategory, no words
    # co-read: N40 and N41 are read by the same (single) reader; the text and co-read parts never mix
    assert emb[n("N40")] @ emb[n("N41")] == pytest.approx(1.0, abs=1e-5)
    assert emb[n("N7")] @ emb[n("N40")] == pytest.approx(0.0, abs=1e-6)
    # deterministic
    again = tmp_path / "again"
    importers.import_format("mind", write_mind(tmp_path / "src2"), again, mind_params(), EPOCH)
    assert (again / C.EMBEDDINGS_FILE).read_bytes() == (mind_out / C.EMBEDDINGS_FILE).read_bytes()


@pytest.mark.unit
def test_mind_impressions_parquet_holds_every_shown_candidate(mind_out):
    imp = pd.read_parquet(mind_out / "impressions.parquet")
    assert list(imp.columns) == [
        "impression_id",
        C.USER_ID,
        C.HOUR,
        C.CLICK_TIMESTAMP,
        C.ARTICLE_ID,
        "clicked",
    ]
    assert len(imp) == sum(len(b[4].split()) for b in BEHAVIORS) == 14
    n, u = NEWS_IDS.index, USERS.index
    five = imp[imp.impression_id == 5]
    assert five[C.ARTICLE_ID].tolist() == [n("N5"), n("N88"), n("N12")]  # list order
    assert five.clicked.tolist() == [1, 0, 1]
    assert (five[C.USER_ID] == u("U100")).all() and (five[C.CLICK_TIMESTAMP] == at("09:59:59", day=1)).all()
    assert (five[C.HOUR] == HISTORY_HOURS + 25).all()
    assert imp.clicked.sum() == 8 and set(imp.impression_id) == set(range(1, 7))
    # the clicked candidates are exactly the impression clicks of the drops
    c = read_clicks(mind_out)
    c = c[c.file_hour >= HISTORY_HOURS]
    assert sorted(zip(imp[imp.clicked == 1][C.USER_ID], imp[imp.clicked == 1][C.ARTICLE_ID])) == sorted(
        zip(c[C.USER_ID], c[C.CLICK_ARTICLE_ID])
    )


@pytest.mark.unit
def test_mind_context_is_the_params_constants(mind_out):
    c = read_clicks(mind_out)
    ctx = mind_params()["context"]
    for col in C.CONTEXT_COLUMNS:
        assert (c[col] == ctx[col]).all()


@pytest.mark.unit
def test_reimport_removes_the_previous_formats_side_files(mind_out, tmp_path):
    assert (mind_out / "impressions.parquet").exists()
    importers.import_movielens(write_movielens(tmp_path / "ml", RATINGS), mind_out, params(hours=2), EPOCH)
    assert not (mind_out / "impressions.parquet").exists() and not (mind_out / "mind_ids").exists()
    manifest = json.loads((mind_out / C.IMPORT_FILE).read_text())
    assert manifest["format"] == "movielens" and manifest[C.MIN_SESSION_SIZE] == 2


@pytest.mark.unit
@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: (d / "news.tsv").unlink(), "news.tsv"),
        (lambda d: (d / "behaviors.tsv").write_text("1\tU1\t11/09/2019 8:10:00 AM\tN1\n"), "expected 5"),
        (lambda d: (d / "behaviors.tsv").write_text("1\tU1\t2019-11-09 08:10\t\tN1-1\n"), "line 1: time"),
        (lambda d: (d / "behaviors.tsv").write_text("1\tU1\t11/09/2019 8:10:00 AM\t\tN1-1 N2-x\n"), "N<digits>-0"),
        (lambda d: (d / "behaviors.tsv").write_text("1\tU1\t11/09/2019 8:10:00 AM\tX9\tN1-1\n"), "history id"),
        (lambda d: (d / "behaviors.tsv").write_text(
            "1\tU1\t11/09/2019 8:10:00 AM\t\tN1-1\n1\tU2\t11/09/2019 8:10:00 AM\t\tN1-1\n"), "line 2: duplicated"),
        (lambda d: (d / "behaviors.tsv").write_text("1\tuser\t11/09/2019 8:10:00 AM\t\tN1-1\n"), "U<digits>"),
    ],
)  # fmt: skip
def test_mind_bad_input_gets_a_clear_error(tmp_path, mutate, message):
    src = write_mind(tmp_path)
    mutate(src)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        importers.read_mind(src)


@pytest.mark.data
def test_imported_tiny_mind_validates_and_declares_single_click_sessions(mind_out):
    """Every hour lands, empty ones included; the single-click sessions pass only because import.json says so."""
    from pipelines.validate import LANDED, QUARANTINED, Settings, validate_all, validate_hour

    root = mind_out.parent
    settings = Settings.from_params(load_params("validate"))
    results = validate_all(root, epoch_ms=EPOCH, settings=settings, gx_dir="great_expectations", docs=False)
    assert [(r.hour, r.status) for r in results] == [(h, LANDED) for h in range(29)], [
        r.reason for r in results
    ]
    assert sum(r.rows for r in results) == 16

    # Without the declaration the Globo contract applies: hour 004 (one single-click session) is rejected.
    (mind_out / C.IMPORT_FILE).unlink()
    r = validate_hour(root, 4, epoch_ms=EPOCH, settings=settings, gx_dir="great_expectations")
    assert r.status == QUARANTINED and "session_size" in r.reason


# ================================================================ interactions CSV

INTERACTIONS = """user,item,timestamp,category,text
10,a9,2019-11-09T08:10:00Z,sports,Big match tonight
10,b2,2019-11-09T08:40:00Z,sports,
10,a9,2019-11-09T08:40:00Z,,
10,b2,2019-11-09T08:40:00Z,,
2,c1,2019-11-09T10:59:30+01:00,news,Election day arrives
2,a9,2019-11-09T10:00:10Z,,The home team
2,d4,2019-11-09T13:00:00Z,,
"""
T0 = EPOCH  # 2019-11-09 08:00 UTC is hour 000


def write_interactions(path: Path, text: str = INTERACTIONS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def inter_params(**over) -> dict:
    return importers.format_params(load_params("import"), "interactions") | over


@pytest.mark.unit
@pytest.mark.parametrize(
    ("values", "kind", "ms"),
    [
        (["1573287000", "1573287060.5"], "seconds", [1_573_287_000_000, 1_573_287_060_500]),
        (["1573287000000", "1573287060001"], "milliseconds", [1_573_287_000_000, 1_573_287_060_001]),
        (["2019-11-09T08:10:00Z", "2019-11-09 09:10:00+01:00"], "iso8601", [1_573_287_000_000] * 2),
        (["2019-11-09T08:10:00"], "iso8601", [1_573_287_000_000]),  # no zone: UTC
    ],
)
def test_interaction_timestamps_are_detected(values, kind, ms):
    got, got_kind = importers.parse_timestamps(pd.Series(values))
    assert got_kind == kind and got.tolist() == ms


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user,item\n1,2\n", "missing column"),
        ("user,item,timestamp\n1,2,1573287000\n1,3,2019-11-09\n", "line 3: timestamp is not a number"),
        ("user,item,timestamp\n1,2,yesterday\n", "line 2: timestamp is neither"),
        ("user,item,timestamp\n1,,1573287000\n", "line 2: empty item"),
    ],
)
def test_interactions_bad_input_gets_a_clear_error(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        importers.read_interactions(write_interactions(tmp_path / "x.csv", text))


@pytest.mark.unit
def test_interactions_rules(tmp_path):
    out = tmp_path / "raw"
    s = importers.import_format(
        "interactions", write_interactions(tmp_path / "i.csv"), out, inter_params(), EPOCH
    )
    assert s["repeated_rows_dropped"] == 1 and s["clicks"] == 6  # user 10's b2 at 08:40 twice
    users = pd.read_csv(out / "interactions_ids" / "users.csv")
    assert users["user"].tolist() == [2, 10]  # all integers: numeric order
    items = pd.read_csv(out / "interactions_ids" / "items.csv")
    assert items["item"].tolist() == ["a9", "b2", "c1", "d4"]  # not all integers: string order
    c = read_clicks(out)

    def m(hh: int, mm: int, ss: int = 0) -> int:
        return T0 + ((hh - 8) * 3600 + mm * 60 + ss) * 1000

    got = sorted(zip(c[C.USER_ID], c[C.CLICK_ARTICLE_ID], c[C.CLICK_TIMESTAMP]))
    assert got == sorted([
        (1, 0, m(8, 10)), (1, 1, m(8, 40)), (1, 0, m(8, 40)),  # same instant: the file's order
        (0, 2, m(9, 59, 30)),  # 10:59:30+01:00 is 09:59:30 UTC
        (0, 0, m(10, 0, 10)), (0, 3, m(13, 0)),
    ])  # fmt: skip
    sessions = sorted(sorted(g[C.CLICK_TIMESTAMP]) for _, g in c.groupby(C.SESSION_ID))
    assert sessions == sorted([
        [m(8, 10), m(8, 40), m(8, 40)],  # 1800 s apart: one session (a gap must exceed session_gap_s)
        [m(9, 59, 30)], [m(10, 0, 10)],  # 40 s apart, but across the hour boundary: split
        [m(13, 0)],
    ])  # fmt: skip
    for _, g in c.groupby(C.SESSION_ID):
        assert g.file_hour.nunique() == 1 and (g[C.SESSION_SIZE] == len(g)).all()
    assert sorted(p.name for p in (out / C.CLICKS_DIR).iterdir()) == [C.hour_file_name(h) for h in range(6)]

    a = pd.read_csv(out / C.METADATA_FILE).set_index(C.ARTICLE_ID)
    assert a[C.CREATED_AT_TS].tolist() == [m(8, 10), m(8, 40), m(9, 59, 30), m(13, 0)]  # first click
    assert a[C.CATEGORY_ID].tolist() == [2, 2, 1, 0]  # first non-empty value; none -> 0 (unknown)
    assert a[C.WORDS_COUNT].tolist() == [3, 0, 3, 0]  # the first non-empty text
    manifest = json.loads((out / C.IMPORT_FILE).read_text())
    assert (
        manifest["time"]["timestamp_kind"] == "iso8601"
        and manifest["time"]["original_start"] == "2019-11-09T08:00:00Z"
    )
    assert manifest[C.MIN_SESSION_SIZE] == 1 and manifest["hours"] == 6

    # embeddings: text part for items with text or a category; co-read part from hours 0-2 (coread_share 0.5)
    with (out / C.EMBEDDINGS_FILE).open("rb") as fh:
        emb = pickle.load(fh)
    td = inter_params()["text_dims"]
    assert (np.linalg.norm(emb[:, :td], axis=1) > 0).tolist() == [True, True, True, False]
    assert (np.linalg.norm(emb[:, td:], axis=1) > 0).tolist() == [True, True, True, False]  # d4: hour 5 only
    assert np.linalg.norm(emb[3]) == 0


@pytest.mark.unit
def test_interactions_session_column_and_max_hours(tmp_path):
    text = "user,item,timestamp,session\nu,x,1573287000,s1\nu,y,1573287010,s2\nu,z,1573289400,s2\n"
    out = tmp_path / "raw"
    importers.import_format(
        "interactions", write_interactions(tmp_path / "i.csv", text), out, inter_params(), EPOCH
    )
    c = read_clicks(out)
    # the given sessions, not the gap rule: s2 spans 40 min but is one session; s1 and s2 10 s apart are two
    assert sorted(c.groupby(C.SESSION_ID).size().tolist()) == [1, 2]
    with pytest.raises(ValueError, match="max_hours"):
        importers.import_format("interactions", tmp_path / "i.csv", out, inter_params(max_hours=0), EPOCH)


@pytest.mark.data
def test_imported_interactions_validate(tmp_path):
    from pipelines.validate import LANDED, Settings, validate_all

    root = tmp_path / "inter"
    importers.import_format(
        "interactions", write_interactions(tmp_path / "i.csv"), root / "raw", inter_params(), EPOCH
    )
    results = validate_all(root, epoch_ms=EPOCH, settings=Settings.from_params(load_params("validate")),
                           gx_dir="great_expectations", docs=False)  # fmt: skip
    assert [(r.hour, r.status) for r in results] == [(h, LANDED) for h in range(6)], [
        r.reason for r in results
    ]


# ================================================================ the real MIND subset (../shared/realdata)

# MIND's real traffic swings ~15x between night and morning, and the subset holds ~50 impression clicks an
# hour, so its steepest morning hours reach 5.4x the median of the trailing day (hours 079 and 085): over
# Globo's volume_max_ratio of 5, under the volume floor (validate.volume_floor_rows) that keeps a small
# stream's swings from counting as spikes. The real-data runs validate with the default params.


def _validate_everything(root: Path) -> list:
    from pipelines.validate import Settings, validate_all

    section = load_params("validate")
    return validate_all(root, epoch_ms=EPOCH, settings=Settings.from_params(section), gx_dir="great_expectations",
                        docs=False)  # fmt: skip


def _mind_facts(mind_dir: Path) -> dict:
    """What the real files say, counted here without the importer."""
    rows = [line.rstrip("\n").split("\t") for line in (mind_dir / "behaviors.tsv").open(encoding="utf-8")]
    history: dict[str, list[str]] = {}
    for _, user, _, hist, _ in rows:
        history.setdefault(user, hist.split())  # the same list on every impression of a user
    entries = [tok for r in rows for tok in r[4].split()]
    return {
        "impressions": len(rows),
        "users": len(history),
        "history_clicks": sum(map(len, history.values())),
        "impression_clicks": sum(tok.endswith("-1") for tok in entries),
        "shown": len(entries),
        "news": {tok[:-2] for tok in entries} | {n for h in history.values() for n in h},
    }


@pytest.mark.data
def test_real_mind_subset_imports_and_every_hour_lands(mind_dir, tmp_path):
    from pipelines.cli import main
    from pipelines.validate import LANDED

    facts = _mind_facts(mind_dir)
    root = tmp_path / "mind"
    assert main(["import", "--format", "mind", "--in", str(mind_dir), "--out", str(root / "raw")]) == 0
    raw = root / "raw"
    manifest = json.loads((raw / C.IMPORT_FILE).read_text())
    hours = manifest["hours"]
    history_hours = load_params("import")["mind"]["history_hours"]
    assert manifest["time"]["impression_hours"] == [history_hours, hours - 1]

    clicks = read_clicks(raw)
    assert len(clicks) == facts["history_clicks"] + facts["impression_clicks"] == 138_932 + 7_542
    assert (clicks.file_hour < history_hours).sum() == facts["history_clicks"]
    assert clicks[C.USER_ID].nunique() == facts["users"] == 4_637
    meta = pd.read_csv(raw / C.METADATA_FILE)
    assert len(meta) == len(facts["news"]) and set(clicks[C.CLICK_ARTICLE_ID]) <= set(meta[C.ARTICLE_ID])
    imp = pd.read_parquet(raw / "impressions.parquet")
    assert len(imp) == facts["shown"] and imp.impression_id.nunique() == facts["impressions"] == 5_000
    assert imp.clicked.sum() == facts["impression_clicks"]
    assert (meta[C.CATEGORY_ID] > 0).sum() == 838  # the referenced ids with a news.tsv row

    results = _validate_everything(root)
    assert [(r.hour, r.status) for r in results] == [(h, LANDED) for h in range(hours)], [
        f"{r.hour:03d}: {r.reason}" for r in results if r.status != LANDED
    ]
    assert sum(r.rows for r in results) == len(clicks)


@pytest.mark.data
def test_real_mind_clicks_as_an_interactions_csv_land(mind_dir, tmp_path):
    """The subset's impression clicks written as a plain interactions CSV (ISO times, category and text where
    news.tsv has them) import and validate the same way."""
    from pipelines.validate import LANDED

    src = importers.read_mind(mind_dir)
    b, news = src.behaviors, src.news.set_index("news_id")
    rows = [
        (user, tok[:-2], t.isoformat(), *(news.loc[tok[:-2], ["category", "title"]] if tok[:-2] in news.index
                                          else ("", "")))
        for user, t, entries in zip(b.user, b.time, b.impressions)
        for tok in entries.split() if tok.endswith("-1")
    ]  # fmt: skip
    csv_path = tmp_path / "clicks.csv"
    pd.DataFrame(rows, columns=["user", "item", "timestamp", "category", "text"]).to_csv(
        csv_path, index=False
    )

    root = tmp_path / "inter"
    s = importers.import_format("interactions", csv_path, root / "raw", inter_params(), EPOCH)
    assert s["clicks"] + s["repeated_rows_dropped"] == len(rows) == 7_542
    assert s["users"] == b[b.impressions.str.contains("-1")].user.nunique()
    results = _validate_everything(root)
    assert all(r.status == LANDED for r in results), [
        f"{r.hour:03d}: {r.reason}" for r in results if r.status != LANDED
    ]
    assert len(results) == s["hours"] and sum(r.rows for r in results) == s["clicks"]
