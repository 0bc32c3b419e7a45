"""The synthetic generator: exact Globo format, the real files' session rules, and the structure
downstream models are meant to find (preferences, freshness, co-reading, embedding clusters)."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import columns as C
from pipelines.cli import main as cli
from pipelines.config import load_params
from pipelines.synth import Profile, main, parse_bad, synthesize

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
EPOCH = load_params("data", PARAMS)["epoch_ms"]


def tiny() -> Profile:
    return Profile.from_params(load_params("synth", PARAMS), "tiny")


def read_clicks(raw: Path) -> pd.DataFrame:
    files = sorted((raw / C.CLICKS_DIR).glob("clicks_hour_*.csv"))
    return pd.concat([pd.read_csv(f).assign(hour=int(f.stem[-3:])) for f in files], ignore_index=True)


@pytest.fixture(scope="module")
def raw(tiny_raw) -> Path:
    return tiny_raw / "raw"


@pytest.fixture(scope="module")
def clicks(raw) -> pd.DataFrame:
    return read_clicks(raw)


@pytest.fixture(scope="module")
def meta(raw) -> pd.DataFrame:
    return pd.read_csv(raw / C.METADATA_FILE)


# ------------------------------------------------------------------------------------------- format


@pytest.mark.data
def test_writes_exactly_the_globo_files(raw):
    top = sorted(p.name for p in raw.iterdir())
    assert top == [C.EMBEDDINGS_FILE, C.METADATA_FILE, C.CLICKS_DIR]
    hours = sorted(p.name for p in (raw / C.CLICKS_DIR).iterdir())
    assert hours == [C.hour_file_name(h) for h in range(tiny().hours)]


@pytest.mark.data
def test_columns_dtypes_and_pickle(raw, clicks, meta):
    header = (raw / C.CLICKS_DIR / C.hour_file_name(0)).read_text().splitlines()[0]
    assert header.split(",") == C.CLICK_COLUMNS
    assert list(meta.columns) == C.METADATA_COLUMNS
    assert all(str(t) == "int64" for t in meta.dtypes)
    assert all(str(t) == "int64" for t in clicks[C.CLICK_COLUMNS].dtypes)
    assert meta[C.ARTICLE_ID].tolist() == list(range(tiny().articles))
    assert meta[C.CATEGORY_ID].nunique() == tiny().categories
    assert (meta[C.PUBLISHER_ID] == 0).all() and (meta[C.WORDS_COUNT] > 0).all()
    assert (meta[C.CREATED_AT_TS] % 1000 == 0).all()  # real created_at_ts are whole seconds
    with (raw / C.EMBEDDINGS_FILE).open("rb") as fh:
        emb = pickle.load(fh)
    assert isinstance(emb, np.ndarray) and emb.dtype == np.float32
    assert emb.shape == (tiny().articles, C.EMBEDDING_DIM)
    assert np.isfinite(emb).all() and np.abs(emb).max() < 1.0


@pytest.mark.data
def test_same_seed_same_bytes_other_seed_other_data(raw, tmp_path):
    synthesize(tmp_path / "again", tiny(), seed=7, epoch_ms=EPOCH)
    synthesize(tmp_path / "other", tiny(), seed=8, epoch_ms=EPOCH)
    for f in [C.METADATA_FILE, C.EMBEDDINGS_FILE, f"{C.CLICKS_DIR}/{C.hour_file_name(0)}",
              f"{C.CLICKS_DIR}/{C.hour_file_name(23)}"]:
        assert (tmp_path / "again" / f).read_bytes() == (raw / f).read_bytes(), f
        assert (tmp_path / "other" / f).read_bytes() != (raw / f).read_bytes(), f


# ------------------------------------------------------------------------------------------- sessions


@pytest.mark.data
def test_session_rules_of_the_real_files(clicks):
    rows = clicks.groupby(C.SESSION_ID).size()
    assert (clicks[C.SESSION_SIZE] == clicks[C.SESSION_ID].map(rows)).all()
    assert rows.min() >= 2 and rows.max() > 5
    assert (clicks[C.CLICK_TIMESTAMP] >= clicks[C.SESSION_START]).all()
    assert (clicks[C.SESSION_START] % 1000 == 0).all()
    # session_id = start second * 1e6 + a 6-digit tail, 16 digits like the real ids
    assert (clicks[C.SESSION_ID] // 1_000_000 == clicks[C.SESSION_START] // 1000).all()
    assert clicks[C.SESSION_ID].astype(str).str.len().eq(16).all()
    # one session, one user, one file
    assert clicks.groupby(C.SESSION_ID)[[C.USER_ID, "hour"]].nunique().max().max() == 1
    # ~30 s steps dominate the gaps inside sessions
    gaps = clicks.sort_values([C.SESSION_ID, C.CLICK_TIMESTAMP]).groupby(C.SESSION_ID)[C.CLICK_TIMESTAMP].diff()
    assert (gaps.dropna() == 30_000).mean() > 0.4


@pytest.mark.data
def test_clicks_in_their_hour_with_rare_late_outliers(clicks):
    hour_start = EPOCH + clicks["hour"] * C.HOUR_MS
    offset = clicks[C.CLICK_TIMESTAMP] - hour_start
    assert (offset >= 0).all()
    assert (offset < C.HOUR_MS).mean() > 0.97
    assert offset.max() <= 49 * C.HOUR_MS
    first = clicks.groupby(C.SESSION_ID).agg(start=(C.SESSION_START, "first"), t0=(C.CLICK_TIMESTAMP, "min"))
    lead = first["t0"] - first["start"]
    assert lead.between(0, 30 * 60 * 1000 + 999).all()  # capped at 30 min, then rounded down to the second
    # some sessions start before their hour, as in the real hour 000
    assert (clicks[C.SESSION_START] < hour_start).any()


@pytest.mark.data
def test_users_keep_their_id_and_are_numbered_by_first_appearance(clicks):
    hours_per_user = clicks.groupby(C.USER_ID)["hour"].nunique()
    assert (hours_per_user > 1).mean() > 0.3
    first_seen = clicks.groupby(C.USER_ID)[C.SESSION_START].min().sort_index()
    assert first_seen.is_monotonic_increasing
    assert clicks[C.USER_ID].min() == 0 and clicks[C.USER_ID].nunique() == clicks[C.USER_ID].max() + 1
    # heavy-tailed activity: the busiest users read far more than the median one
    per_user = clicks.groupby(C.USER_ID).size()
    assert per_user.max() > 10 * per_user.median()


@pytest.mark.data
def test_context_fields_are_skewed_like_the_real_file(clicks):
    assert clicks[C.CLICK_ENVIRONMENT].value_counts(normalize=True).idxmax() == 4
    assert (clicks[C.CLICK_COUNTRY] == 1).mean() > 0.9
    assert set(clicks[C.CLICK_DEVICE_GROUP]) <= {1, 2, 3, 4, 5}
    assert clicks[C.CLICK_REFERRER_TYPE].value_counts(normalize=True).iloc[0] > 0.4
    assert clicks[C.CLICK_REGION].nunique() > 10
    # a session's context is constant
    assert clicks.groupby(C.SESSION_ID)[C.CONTEXT_COLUMNS].nunique().max().max() == 1


# ------------------------------------------------------------------------------------------- structure


@pytest.mark.data
def test_articles_are_read_after_publication_and_mostly_fresh(clicks, meta):
    created = meta[C.CREATED_AT_TS].to_numpy()[clicks[C.CLICK_ARTICLE_ID]]
    age_h = (clicks[C.CLICK_TIMESTAMP].to_numpy() - created) / C.HOUR_MS
    assert (age_h > 0).all()
    assert 0.4 < (age_h < 11).mean() < 0.65
    assert 0.82 < (age_h < 20).mean() < 0.97
    # published continuously over the hours, plus a back catalogue from years earlier
    pub_h = (meta[C.CREATED_AT_TS] - EPOCH) / C.HOUR_MS
    assert pub_h.between(0, 24).sum() > 300
    assert (pub_h < -24 * 365).sum() > 100


@pytest.mark.data
def test_popularity_is_heavy_tailed(clicks):
    per_article = clicks[C.CLICK_ARTICLE_ID].value_counts()
    top = per_article.iloc[: max(1, len(per_article) // 100)].sum() / len(clicks)
    assert top > 0.1  # the top 1% of clicked articles take well over 1% of clicks


@pytest.mark.data
def test_users_prefer_their_categories(clicks, meta):
    cat = meta[C.CATEGORY_ID].to_numpy()[clicks[C.CLICK_ARTICLE_ID]]
    df = pd.DataFrame({"u": clicks[C.USER_ID], "c": cat})
    heavy = df.groupby("u").filter(lambda g: len(g) >= 10)

    def top_share(frame: pd.DataFrame) -> float:
        return float((frame.groupby(["u", "c"]).size().groupby("u").max() / frame.groupby("u").size()).mean())

    shuffled = heavy.assign(c=np.random.default_rng(0).permutation(heavy["c"].to_numpy()))
    assert top_share(heavy) > top_share(shuffled) + 0.15

    # history predicts the future: later clicks fall in categories the user read before
    t = clicks[C.CLICK_TIMESTAMP].to_numpy()
    mid = np.median(t)
    early = df[t < mid].groupby("u")["c"].agg(set)
    late = df[t >= mid]
    late = late[late["u"].isin(early.index)]
    hit = np.array([c in early[u] for u, c in zip(late["u"], late["c"])])
    base = np.array([c in early[u] for u, c in zip(late["u"], np.random.default_rng(1).permutation(late["c"]))])
    assert hit.mean() > base.mean() + 0.1


@pytest.mark.data
def test_articles_read_together_recur_together(clicks):
    s = clicks.sort_values([C.SESSION_ID, C.CLICK_TIMESTAMP])
    a = s[C.CLICK_ARTICLE_ID].to_numpy()
    nxt = s.groupby(C.SESSION_ID)[C.CLICK_ARTICLE_ID].shift(-1)
    ok = nxt.notna().to_numpy()
    a, b = a[ok], nxt[ok].astype("int64").to_numpy()

    def recurring(x, y):
        key = pd.Series(np.minimum(x, y) * 10**7 + np.maximum(x, y))
        return float((key.map(key.value_counts()) >= 2).mean())

    # against pairs with the same popularity but no session link
    assert recurring(a, b) > 2 * recurring(a, np.random.default_rng(0).permutation(b))


@pytest.mark.data
def test_embeddings_cluster_by_category_and_find_the_next_read(raw, clicks, meta):
    with (raw / C.EMBEDDINGS_FILE).open("rb") as fh:
        emb = pickle.load(fh)
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cat = meta[C.CATEGORY_ID].to_numpy()
    rng = np.random.default_rng(0)
    probe = rng.choice(len(e), 200, replace=False)
    sims = e[probe] @ e.T
    sims[np.arange(len(probe)), probe] = -np.inf
    nn = np.argsort(-sims, axis=1)[:, :10]
    assert (cat[nn] == cat[probe][:, None]).mean() > 0.9

    # the article read next in a session is much closer than a random clicked article
    s = clicks.sort_values([C.SESSION_ID, C.CLICK_TIMESTAMP])
    nxt = s.groupby(C.SESSION_ID)[C.CLICK_ARTICLE_ID].shift(-1)
    ok = nxt.notna().to_numpy()
    a, b = s[C.CLICK_ARTICLE_ID].to_numpy()[ok], nxt[ok].astype("int64").to_numpy()
    together = (e[a] * e[b]).sum(axis=1)
    apart = (e[a] * e[rng.permutation(b)]).sum(axis=1)
    assert np.median(together) > np.median(apart) + 0.2


# ------------------------------------------------------------------------------------------- drift, zip, bad drops


@pytest.mark.data
@pytest.mark.parametrize("kind", ["context", "category"])
def test_drift_changes_what_it_should_and_nothing_before(raw, tmp_path, kind):
    summary = synthesize(tmp_path, tiny(), seed=7, epoch_ms=EPOCH, drift_from=12, drift_kind=kind)
    for h in (0, 11):
        f = f"{C.CLICKS_DIR}/{C.hour_file_name(h)}"
        assert (tmp_path / f).read_bytes() == (raw / f).read_bytes()
    plain, drifted = read_clicks(raw), read_clicks(tmp_path)
    after_plain, after = plain[plain["hour"] >= 12], drifted[drifted["hour"] >= 12]
    if kind == "context":
        assert (after[C.CLICK_DEVICE_GROUP] == 1).mean() > (after_plain[C.CLICK_DEVICE_GROUP] == 1).mean() + 0.15
        assert (after[C.CLICK_REFERRER_TYPE] == 2).mean() > (after_plain[C.CLICK_REFERRER_TYPE] == 2).mean() + 0.15
    else:
        meta = pd.read_csv(tmp_path / C.METADATA_FILE)
        surge = summary["drift"]["category"]
        cat = meta[C.CATEGORY_ID].to_numpy()
        share, share_plain = (cat[after[C.CLICK_ARTICLE_ID]] == surge).mean(), (cat[after_plain[C.CLICK_ARTICLE_ID]] == surge).mean()
        assert share > share_plain + 0.2
        assert (after[C.CLICK_DEVICE_GROUP] == 1).mean() == pytest.approx((after_plain[C.CLICK_DEVICE_GROUP] == 1).mean())


@pytest.mark.data
def test_zip_holds_the_same_hour_files(raw, tmp_path):
    synthesize(tmp_path, tiny(), seed=7, epoch_ms=EPOCH, zip_clicks=True)
    assert not (tmp_path / C.CLICKS_DIR).exists()
    with zipfile.ZipFile(tmp_path / C.CLICKS_ZIP) as zf:
        names = zf.namelist()
        assert names == [f"{C.CLICKS_DIR}/{C.hour_file_name(h)}" for h in range(24)]
        assert zf.read(names[5]) == (raw / names[5]).read_bytes()
    first = (tmp_path / C.CLICKS_ZIP).read_bytes()
    synthesize(tmp_path, tiny(), seed=7, epoch_ms=EPOCH, zip_clicks=True)
    assert (tmp_path / C.CLICKS_ZIP).read_bytes() == first  # fixed entry timestamps: same bytes


@pytest.mark.data
def test_bad_flag_turns_hours_into_bad_drops(raw, tmp_path):
    summary = synthesize(tmp_path, tiny(), seed=7, epoch_ms=EPOCH, hours=6, bad=parse_bad(["2:empty", "4:duplicated_rows"]))
    assert summary["bad"] == [{"hour": 2, "kind": "empty"}, {"hour": 4, "kind": "duplicated_rows"}]
    clicks_dir = tmp_path / C.CLICKS_DIR
    assert (clicks_dir / C.hour_file_name(2)).stat().st_size == 0
    dup = pd.read_csv(clicks_dir / C.hour_file_name(4))
    assert dup.duplicated().any()
    assert not pd.read_csv(clicks_dir / C.hour_file_name(3)).duplicated().any()


@pytest.mark.unit
def test_hours_flag_cuts_the_same_world(tmp_path, raw):
    summary = synthesize(tmp_path, tiny(), seed=7, epoch_ms=EPOCH, hours=6)
    assert summary["hours"] == 6
    assert sorted(p.name for p in (tmp_path / C.CLICKS_DIR).iterdir()) == [C.hour_file_name(h) for h in range(6)]
    assert (tmp_path / C.METADATA_FILE).read_bytes() == (raw / C.METADATA_FILE).read_bytes()


@pytest.mark.unit
@pytest.mark.parametrize("kwargs, message", [
    ({"drift_from": 3}, "go together"),
    ({"drift_from": 3, "drift_kind": "weather"}, "unknown drift kind"),
    ({"drift_from": 99, "drift_kind": "context"}, "outside hours"),
    ({"hours": 0}, "hours must be"),
    ({"bad": [(30, "empty")]}, "outside hours"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthesize(tmp_path, tiny(), seed=1, epoch_ms=EPOCH, **kwargs)
    assert not any(tmp_path.iterdir())


@pytest.mark.unit
def test_parse_bad_and_unknown_profile():
    assert parse_bad(["3:truncated", "10:volume_spike"]) == [(3, "truncated"), (10, "volume_spike")]
    with pytest.raises(ValueError, match="HOUR:KIND"):
        parse_bad(["three:empty"])
    with pytest.raises(ValueError, match="unknown synth profile 'huge'"):
        Profile.from_params(load_params("synth", PARAMS), "huge")
    section = load_params("synth", PARAMS)
    section["knobs"] = {k: v for k, v in section["knobs"].items() if k != "p_jump"}
    with pytest.raises(ValueError, match=r"missing \['p_jump'\]"):
        Profile.from_params(section, "tiny")


@pytest.mark.unit
def test_cli_prints_a_summary(tmp_path, capsys):
    assert main(["--profile", "tiny", "--seed", "3", "--hours", "3", "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["profile"] == "tiny" and out["hours"] == 3 and out["clicks"] > 0
    assert cli(["synth", "--profile", "tiny", "--out", str(tmp_path), "--drift-from", "1"]) == 1
    assert "go together" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- article drops


def _drop_files(raw: Path) -> list[str]:
    return sorted(p.name for p in (raw / C.ARTICLES_DIR).iterdir())


@pytest.mark.data
def test_article_drops_are_deterministic_and_leave_the_clicks_alone(raw, tiny_drops_raw, tmp_path):
    drops = tiny_drops_raw / "raw"
    again = tmp_path / "again"
    summary = synthesize(again, tiny(), seed=7, epoch_ms=EPOCH, article_drops=True)
    assert summary["article_drops"] == 24
    hours = range(tiny().hours)
    assert _drop_files(drops) == sorted([C.hour_file_name(h, C.ARTICLES_DIR) for h in hours]
                                        + [C.hour_file_name(h, C.EMBEDDINGS_HOUR) for h in hours])
    for f in [C.METADATA_FILE, C.EMBEDDINGS_FILE, *(f"{C.ARTICLES_DIR}/{n}" for n in _drop_files(drops))]:
        assert (again / f).read_bytes() == (drops / f).read_bytes(), f
    for h in hours:  # the same clicks, byte for byte
        f = f"{C.CLICKS_DIR}/{C.hour_file_name(h)}"
        assert (drops / f).read_bytes() == (raw / f).read_bytes(), f
    # Writing the same folder again without drops leaves no stale drop behind, and the default bytes.
    synthesize(again, tiny(), seed=7, epoch_ms=EPOCH)
    assert not (again / C.ARTICLES_DIR).exists()
    assert (again / C.METADATA_FILE).read_bytes() == (raw / C.METADATA_FILE).read_bytes()


@pytest.mark.data
def test_static_files_plus_drops_are_the_catalogue_without_drops(raw, meta, tiny_drops_raw):
    drops = tiny_drops_raw / "raw"
    static = pd.read_csv(drops / C.METADATA_FILE)
    assert (static[C.CREATED_AT_TS] < EPOCH).all()
    with (drops / C.EMBEDDINGS_FILE).open("rb") as fh:
        static_emb = pickle.load(fh)
    with (raw / C.EMBEDDINGS_FILE).open("rb") as fh:
        whole_emb = pickle.load(fh)
    assert static_emb.dtype == np.float32 and static_emb.shape[1] == C.EMBEDDING_DIM
    ids = static[C.ARTICLE_ID].to_numpy()
    assert np.array_equal(static_emb[ids], whole_emb[ids])
    assert not np.delete(static_emb, ids, axis=0).any()  # rows of later articles: not delivered yet

    parts, rows = [static], [whole_emb[ids]]
    for h in range(tiny().hours):
        frame = pd.read_csv(drops / C.ARTICLES_DIR / C.hour_file_name(h, C.ARTICLES_DIR))
        with (drops / C.ARTICLES_DIR / C.hour_file_name(h, C.EMBEDDINGS_HOUR)).open("rb") as fh:
            emb = pickle.load(fh)
        assert list(frame.columns) == C.METADATA_COLUMNS and len(frame) > 0
        assert ((frame[C.CREATED_AT_TS] - EPOCH) // C.HOUR_MS == h).all()  # published in its hour
        assert emb.dtype == np.float32 and np.array_equal(emb, whole_emb[frame[C.ARTICLE_ID]])  # row j = csv row j
        parts.append(frame)
        rows.append(emb)
    union = pd.concat(parts, ignore_index=True)
    order = np.argsort(union[C.ARTICLE_ID].to_numpy())
    pd.testing.assert_frame_equal(union.iloc[order].reset_index(drop=True), meta)
    assert np.array_equal(np.concatenate(rows)[order], whole_emb)


@pytest.mark.data
def test_validation_lands_every_synthetic_article_drop(tiny_drops_validated):
    root, results = tiny_drops_validated
    kinds = {r.kind for r in results}
    assert kinds == {C.ARTICLES_DIR, C.CLICKS_DIR} and {r.status for r in results} == {"landed"}
    assert len(list((root / "validated" / C.ARTICLES_DIR).glob("hour=*/part-0.parquet"))) == tiny().hours


@pytest.mark.unit
def test_cli_article_drops_flag_and_its_default(tmp_path, capsys):
    assert load_params("synth", PARAMS)["article_drops"] is False  # the default dataset has no drops
    argv = ["--profile", "tiny", "--seed", "3", "--hours", "2", "--out", str(tmp_path), "--article-drops"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    # the world's later hours publish too: their articles are drops of those hours, beyond the 2 click hours
    assert out["article_drops"] == tiny().hours
    assert (tmp_path / C.ARTICLES_DIR / C.hour_file_name(23, C.ARTICLES_DIR)).exists()


# ------------------------------------------------------------------------------------------- ground truth


@pytest.mark.data
def test_ground_truth_is_the_world_the_files_were_drawn_from(clicks, meta):
    from pipelines.synth import ground_truth

    truth = ground_truth(tiny(), 7, EPOCH)
    assert np.array_equal(truth.articles.category, meta[C.CATEGORY_ID].to_numpy())
    assert np.array_equal(truth.articles.created_at, meta[C.CREATED_AT_TS].to_numpy())
    # Every session's first click is a jump: mostly to one of its user's favourite categories (by the ids the
    # files hold); with the users' favourites shuffled among them, far fewer.
    first = clicks.sort_values(C.CLICK_TIMESTAMP).groupby(C.SESSION_ID).first()
    cat = meta[C.CATEGORY_ID].to_numpy()[first[C.CLICK_ARTICLE_ID]]
    users = first[C.USER_ID].to_numpy()

    def in_favourites(fav_cat: np.ndarray, fav_weight: np.ndarray) -> float:
        return float(((fav_cat[users] == cat[:, None]) & (fav_weight[users] > 0)).any(axis=1).mean())

    shuffled = np.random.default_rng(0).permutation(len(truth.fav_cat))
    assert in_favourites(truth.fav_cat, truth.fav_weight) > 0.6
    assert in_favourites(truth.fav_cat[shuffled], truth.fav_weight[shuffled]) < 0.3
    assert np.allclose(truth.fav_weight.sum(axis=1), 1.0)


@pytest.mark.data
def test_ground_truth_odds_are_each_articles_expected_clicks_in_a_session(clicks):
    from pipelines.synth import ground_truth

    p = tiny()
    truth = ground_truth(p, 7, EPOCH)
    hour = 12
    in_hour = clicks[(clicks["hour"] == hour)]
    users = np.unique(in_hour[C.USER_ID].to_numpy())
    articles, odds = truth.odds(hour, users)
    # Every click of the hour is on an article the hour offered, and each row adds up to a session's mean size.
    assert in_hour[C.CLICK_ARTICLE_ID].isin(articles).all()
    sizes = np.arange(2, p.max_session_size + 1, dtype=np.float64)
    share = sizes ** -p.session_size_exponent
    assert np.allclose(odds.sum(axis=1), (sizes * share).sum() / share.sum())
    # The clicked articles are far likelier under their own reader's odds than under another reader's.
    col = np.searchsorted(articles, in_hour[C.CLICK_ARTICLE_ID].to_numpy(), sorter=np.argsort(articles))
    col = np.argsort(articles)[col]
    row = np.searchsorted(users, in_hour[C.USER_ID].to_numpy())
    other = (row + 1) % len(users)
    assert np.log(odds[row, col]).mean() > np.log(odds[other, col]).mean() + 1.0
    # A user without favourites reads by pull alone: the same odds for everyone.
    nobody = truth.with_favourites(truth.fav_cat, np.zeros_like(truth.fav_weight)).odds(hour, users)[1]
    assert np.allclose(nobody, nobody[:1])
    # Favourites given as a mixture (more slots than the generator's three) score the mixture of the odds.
    roll = np.roll(np.arange(len(truth.fav_cat)), 1)
    other = truth.with_favourites(truth.fav_cat[roll], truth.fav_weight[roll])
    mixed = truth.with_favourites(np.hstack([truth.fav_cat, truth.fav_cat[roll]]),
                                  np.hstack([0.3 * truth.fav_weight, 0.7 * truth.fav_weight[roll]]))
    assert np.allclose(mixed.odds(hour, users)[1], 0.3 * odds + 0.7 * other.odds(hour, users)[1])
