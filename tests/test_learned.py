"""The learned two-tower model: it learns topics from clicks, serves articles published after it was trained,
reads order, round-trips through save/load, and runs as a stage (fit at daily cutoffs, carried by indexes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from clickdata import EPOCH, articles, at, clicks, write_raw, write_validated

from pipelines import columns as C
from pipelines.aggregates import aggregate_all
from pipelines.candidates import CandidateIndex
from pipelines.learned import LearnedModel, fit_hours, fit_learned, model_for

PARAMS = {"refit_hours": 24, "dim": 8, "hidden": 16, "state_dim": 4, "history": 5, "dropout": 0.0, "epochs": 40, "batch": 64,
          "lr": 0.01, "weight_decay": 0.0, "logq_correction": True, "max_examples": None, "seed": 3, "threads": 1,
          "warm_start": False, "incremental_epochs": 1}
INDEX_PARAMS = {
    "pool_fresh_hours": 48, "pool_active_hours": 6, "windows": [1, 6, 24], "trend_half_life_hours": 1,
    "cocl_half_life_hours": 6, "cocl_top_k": 50, "recent_clicks": 10, "cocl_recency": 0.7, "profile_clicks": 20,
    "profile_half_life_hours": 24, "emb_trend_boost": 0.0, "similar_k": 3,
    "per_source": {"emb": 5, "cocl": 5, "pop": 5, "trend": 5, "learned": 5}, "rrf_k": 5,
    "fusion_weights": {"emb": 1.0, "cocl": 0.5, "pop": 0.1, "trend": 0.5, "learned": 1.0},
}
TOPICS, PER_TOPIC, DIM = 3, 8, 12
CUTOFF_H = 24  # the model is trained on clicks before this hour
NEW = TOPICS * PER_TOPIC  # article published at hour 25, after the model was trained: topic 0


def _world_embeddings() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.eye(DIM)[:TOPICS] * 4.0
    topic = [i // PER_TOPIC for i in range(NEW)] + [0]
    return np.stack([centres[t] + rng.normal(0, 0.4, DIM) for t in topic]).astype(np.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Readers who each follow one topic (user u reads topic u % 3): a topic's articles are published every
    2.5 hours from hour 0.5, and a reader's one session (hours 9-22) clicks four of the five newest published
    before it. Article NEW (topic 0) is published at hour 25, after the model's cutoff."""
    root = tmp_path_factory.mktemp("learned_world")
    rng = np.random.default_rng(1)
    created = [0.5 + 2.5 * (i % PER_TOPIC) for i in range(NEW)] + [25.0]
    rows = []
    for user in range(90):  # one session each: session id = user id
        topic = user % TOPICS
        start = rng.uniform(9, 22)
        published = [i for i in range(topic * PER_TOPIC, (topic + 1) * PER_TOPIC) if created[i] < start][-5:]
        rows += [(user, user, int(a), start + 0.05 * i)
                 for i, a in enumerate(rng.choice(published, size=4, replace=False))]
    rows.sort(key=lambda r: r[3])
    frame = clicks(rows)
    write_validated(root, frame)
    meta = articles(created, categories=[i // PER_TOPIC for i in range(NEW)] + [0])
    write_raw(root, meta, _world_embeddings())
    aggregate_all(root, EPOCH, 5)
    model = fit_learned(frame, meta, _world_embeddings(), at(CUTOFF_H), PARAMS, 1.0, log=lambda _: None)
    return {"root": root, "meta": meta, "clicks": frame, "model": model}


def _index(world, hour: int, learned=True) -> CandidateIndex:
    return CandidateIndex.fit(world["root"], world["meta"], _world_embeddings(), at(hour), INDEX_PARAMS, EPOCH,
                              given={"learned": world["model"]} if learned else None)


def _learned_list(cands: pd.DataFrame, user: int) -> list[int]:
    mine = cands[(cands[C.USER_ID] == user) & (cands[C.rank_col(C.LEARNED)] > 0)]
    return mine.sort_values(C.rank_col(C.LEARNED))[C.ARTICLE_ID].tolist()


@pytest.mark.unit
def test_the_model_learns_each_readers_topic(world):
    index = _index(world, CUTOFF_H)
    cands = index.candidates(world["clicks"], users=range(90))
    hits = []
    for user in range(90):
        top = _learned_list(cands, user)[:4]  # four unread articles of their topic are left
        hits.append(np.mean([a // PER_TOPIC == user % TOPICS for a in top]))
    assert np.mean(hits) > 0.75  # chance: 1/3
    # learned_sim scores every candidate, whichever source proposed it, and equals the source's own score
    assert cands[C.LEARNED_SIM].notna().all()
    own = cands[cands[C.rank_col(C.LEARNED)] > 0]
    np.testing.assert_allclose(own[C.LEARNED_SIM], own[C.score_col(C.LEARNED)], rtol=1e-5, atol=1e-5)


@pytest.mark.unit
def test_an_article_published_after_training_is_proposed_at_the_next_refresh(world):
    before = _index(world, CUTOFF_H)
    assert NEW not in set(before.pool_ids)
    after = _index(world, 26)  # the hourly refresh after hour 25: same model, new pool
    assert NEW in set(after.pool_ids)
    cands = after.candidates(world["clicks"], users=range(90))
    readers = [u for u in range(90) if u % TOPICS == 0]
    others = [u for u in range(90) if u % TOPICS != 0]
    # NEW has no click at all: only the article tower can put it at the top of the topic-0 readers' lists
    assert sum(NEW in _learned_list(cands, u)[:3] for u in readers) >= 0.9 * len(readers)
    # and its content puts it higher for them than for the other topics' readers (to whom it is merely fresh)
    def position(u: int) -> int:
        mine = _learned_list(cands, u)
        return mine.index(NEW) if NEW in mine else len(mine)

    assert np.mean([position(u) for u in readers]) + 1 < np.mean([position(u) for u in others])


@pytest.mark.unit
def test_the_user_tower_reads_the_order_of_clicks(world):
    index = _index(world, CUTOFF_H)
    history = np.array([0, PER_TOPIC, 2 * PER_TOPIC, 1])  # four topics' worth of reading, oldest first
    times = np.array([at(h) for h in (2, 3, 4, 5)])
    users, forward = index.sources["learned"].user_vectors(index, np.zeros(4, np.int64), history, times)
    _, backward = index.sources["learned"].user_vectors(index, np.zeros(4, np.int64), history[::-1].copy(), times)
    assert users.tolist() == [0]
    assert not np.allclose(forward, backward, atol=1e-4)
    # and the same clicks in the same order give the same vector
    _, again = index.sources["learned"].user_vectors(index, np.zeros(4, np.int64), history, times)
    np.testing.assert_array_equal(forward, again)


@pytest.mark.unit
def test_the_user_tower_reads_how_long_ago_the_newest_click_was():
    """Readers who each have a home topic: every visit starts with two reads there, then two or three reads a
    minute apart in the next topic (a detour). After two detour reads, the next read is a third one a minute
    later, or home at the next visit hours later: one history, two answers, told apart by the time since its
    newest click alone (a tower blind to it can favour one of the topics, not both)."""
    rng = np.random.default_rng(5)
    created = [0.5] * NEW
    rows, session = [], 0
    for user in range(90):
        home, detour = user % TOPICS, (user + 1) % TOPICS
        for visit, start in enumerate((2.0, 8.0, 14.0, 20.0)):
            start += rng.uniform(0, 2)
            reads = [home * PER_TOPIC + int(a) for a in rng.choice(PER_TOPIC, 2, replace=False)]
            reads += [detour * PER_TOPIC + int(a) for a in rng.choice(PER_TOPIC, rng.integers(2, 4), replace=False)]
            rows += [(user, session, a, start + i / 60) for i, a in enumerate(reads)]
            session += 1
    rows.sort(key=lambda r: r[3])
    frame, meta, emb = clicks(rows), articles(created, categories=[i // PER_TOPIC for i in range(NEW)]), \
        _world_embeddings()[:NEW]
    model = fit_learned(frame, meta, emb, at(CUTOFF_H), PARAMS, 1.0, log=lambda _: None)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    vectors = model.article_vectors(unit, meta[C.CATEGORY_ID].to_numpy(), meta[C.WORDS_COUNT].to_numpy(),
                                    meta[C.CREATED_AT_TS].to_numpy(), np.zeros(NEW), at(CUTOFF_H))
    topic = np.arange(NEW) // PER_TOPIC
    wins = {"minute": 0, "hours": 0}
    for user in range(TOPICS):  # a history that ends with a detour click, read at hour 22
        home, detour = user % TOPICS, (user + 1) % TOPICS
        hist = np.array([detour * PER_TOPIC + 1, detour * PER_TOPIC, home * PER_TOPIC + 1, home * PER_TOPIC])
        ts = np.array([at(22 - i / 60) for i in range(4)])
        args = (unit[hist][None], topic[hist][None], np.full((1, 4), 300), ts[None], np.ones((1, 4), bool))
        for name, later in (("minute", 1 / 60), ("hours", 6.0)):
            score = vectors @ model.user_vectors(*args, at(22 + later))[0]
            wins[name] += int(score[topic == (detour if name == "minute" else home)].mean()
                              > score[topic == (home if name == "minute" else detour)].mean())
    assert wins == {"minute": TOPICS, "hours": TOPICS}


@pytest.mark.unit
def test_the_request_time_reaches_the_user_tower(world):
    index = _index(world, CUTOFF_H)
    frame = world["clicks"][world["clicks"][C.USER_ID] < 6]

    def learned_sim(**at):
        return index.candidates(frame, users=range(6), **at)[C.LEARNED_SIM].to_numpy()

    np.testing.assert_array_equal(learned_sim(), learned_sim(at_ms=at(CUTOFF_H)))  # default: the index's hour
    assert not np.allclose(learned_sim(), learned_sim(at_ms=int(frame[C.CLICK_TIMESTAMP].max()) + 60_000))


@pytest.mark.unit
def test_save_load_round_trip_gives_identical_scores(world, tmp_path):
    model = world["model"]
    loaded = LearnedModel.load(model.save(tmp_path / "model"))
    meta = world["meta"]
    emb = _world_embeddings()
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    args = (emb, meta[C.CATEGORY_ID].to_numpy(), meta[C.WORDS_COUNT].to_numpy(), meta[C.CREATED_AT_TS].to_numpy(),
            np.linspace(0, 50, len(meta)), at(30))
    np.testing.assert_array_equal(model.article_vectors(*args), loaded.article_vectors(*args))

    index = _index(world, 26)
    back = CandidateIndex.load(index.save(tmp_path / "index"))
    assert back.learned is not None
    np.testing.assert_array_equal(back.sources["learned"].pool_vectors, index.sources["learned"].pool_vectors)
    pd.testing.assert_frame_equal(back.candidates(world["clicks"], users=range(90)),
                                  index.candidates(world["clicks"], users=range(90)))


@pytest.mark.unit
def test_scoring_in_numpy_is_the_trained_network(world):
    import torch

    from pipelines.learned import _build_network, _scaled_words, age_bucket, staleness_bucket

    model = world["model"]
    net = _build_network(model.emb_dim, len(model.categories), model.params)
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in model.weights.items()})
    net.eval()
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 5, DIM)).astype(np.float32)
    cats, words = rng.integers(0, 4, size=(6, 5)), rng.integers(0, 900, size=(6, 5))  # category 3: unknown
    ts = np.sort(rng.integers(0, 50 * C.HOUR_MS, size=(6, 5)), axis=1)[:, ::-1].copy()
    mask = np.arange(5)[None, :] < np.array([1, 2, 3, 4, 5, 5])[:, None]
    gap = np.where(mask, age_bucket((ts[:, :1] - ts) / C.HOUR_MS), 0)
    request = ts[:, 0] + np.array([0, 90_000, 20 * 60_000, 3 * C.HOUR_MS, 30 * C.HOUR_MS, -5_000])  # -: a skew
    stale = staleness_bucket((request - ts[:, 0]) / C.HOUR_MS)
    assert len(set(stale.tolist())) == 5 and stale[-1] == 0
    codes = model.category_codes(cats.ravel()).reshape(cats.shape)
    scaled = _scaled_words(words.ravel()).reshape(words.shape)
    with torch.no_grad():
        users = net.users(*(torch.from_numpy(a) for a in (emb, codes, scaled, gap, mask, stale))).numpy()
        items = net.articles(*(torch.from_numpy(a) for a in (emb[:, 0], codes[:, 0], scaled[:, 0]))).numpy()
    np.testing.assert_allclose(model.user_vectors(emb, cats, words, ts, mask, request), users, rtol=1e-5,
                               atol=1e-5)
    vectors = model.article_vectors(emb[:, 0], cats[:, 0], words[:, 0], ts[:, 0], np.zeros(6), int(ts.max()))
    np.testing.assert_allclose(vectors[:, : model.params["dim"]], items, rtol=1e-5, atol=1e-6)


@pytest.mark.unit
def test_a_warm_start_updates_the_earlier_model_on_the_clicks_since_its_cutoff_only(world):
    from pipelines.learned import training_examples

    frame, meta, emb = world["clicks"], world["meta"], _world_embeddings()
    early = fit_learned(frame, meta, emb, at(16), PARAMS, 1.0, log=lambda _: None)
    # a tiny learning rate: the update stays next to the weights it started from (a fit from scratch does not)
    update = fit_learned(frame, meta, emb, at(CUTOFF_H), PARAMS | {"lr": 1e-9}, 1.0, log=lambda _: None, init=early)
    scratch = fit_learned(frame, meta, emb, at(CUTOFF_H), PARAMS | {"lr": 1e-9}, 1.0, log=lambda _: None)
    for key, value in early.weights.items():
        np.testing.assert_allclose(update.weights[key], value, atol=1e-5, err_msg=key)
    assert any(not np.allclose(scratch.weights[k], v, atol=1e-3) for k, v in early.weights.items())
    before = frame[frame[C.CLICK_TIMESTAMP] < at(CUTOFF_H)]
    since = training_examples(before, PARAMS["history"], None, at(16))[1]
    assert 0 < len(since) < len(training_examples(before, PARAMS["history"], None)[1])
    assert update.meta["examples"] == len(since) and update.meta["warm_start_from_ms"] == at(16)
    assert len(update.meta["losses"]) == PARAMS["incremental_epochs"] and scratch.meta["warm_start_from_ms"] is None
    np.testing.assert_array_equal(update.categories, early.categories)
    with pytest.raises(ValueError, match="fitted before the cutoff"):
        fit_learned(frame, meta, emb, at(16), PARAMS, 1.0, log=lambda _: None, init=world["model"])
    with pytest.raises(ValueError, match="same shape"):
        fit_learned(frame, meta, emb, at(CUTOFF_H), PARAMS | {"dim": 4}, 1.0, log=lambda _: None, init=early)


@pytest.mark.unit
def test_fit_is_deterministic_and_bad_input_is_a_clear_error(world):
    again = fit_learned(world["clicks"], world["meta"], _world_embeddings(), at(CUTOFF_H), PARAMS,
                        1.0, log=lambda _: None)
    for key, value in world["model"].weights.items():
        np.testing.assert_array_equal(value, again.weights[key], err_msg=key)
    with pytest.raises(ValueError, match="lacks columns"):
        fit_learned(world["clicks"].drop(columns=[C.CLICK_TIMESTAMP]), world["meta"], _world_embeddings(),
                    at(CUTOFF_H), PARAMS, 1.0)
    with pytest.raises(ValueError, match="training example"):
        fit_learned(world["clicks"], world["meta"], _world_embeddings(), at(2), PARAMS, 1.0)
    with pytest.raises(ValueError, match="learned.dim"):
        fit_learned(world["clicks"], world["meta"], _world_embeddings(), at(CUTOFF_H), PARAMS | {"dim": 0}, 1.0)
    with pytest.raises(ValueError, match="learned params lack"):
        fit_learned(world["clicks"], world["meta"], _world_embeddings(), at(CUTOFF_H),
                    {k: v for k, v in PARAMS.items() if k != "history"}, 1.0)


@pytest.mark.unit
def test_daily_fit_hours_cover_every_snapshot():
    from pipelines.split import plan_snapshots

    snaps = plan_snapshots(list(range(120)), EPOCH, test_hours=24, val_hours=24, label_hours=1,
                           train_snapshots=48, min_history_hours=24)
    hours = fit_hours(snaps, 24)
    assert hours == [24, 48, 72, 96, 120]
    for snap in snaps:  # each snapshot has a model fitted at or before its cutoff, at most a day old
        usable = [h for h in hours if h <= snap.cutoff_hour]
        assert usable and snap.cutoff_hour - usable[-1] < 24
    # a short history: the earliest fit is the earliest snapshot's cutoff, never before the data
    short = plan_snapshots(list(range(24)), EPOCH, test_hours=3, val_hours=3, label_hours=3, train_snapshots=3,
                           min_history_hours=9)
    assert fit_hours(short, 24) == [min(s.cutoff_hour for s in short), 21, 24]


@pytest.mark.integration
def test_stage_fits_daily_models_that_the_candidate_indexes_carry(tiny_validated, tmp_path):
    from pipelines.candidates import build_candidates
    from pipelines.config import load_params
    from pipelines.lake import landed_hours
    from pipelines.learned import main
    from pipelines.split import plan_snapshots, write_snapshots

    epoch = load_params("data")["epoch_ms"]
    work = tmp_path / "root"
    work.mkdir()
    for sub in ("raw", "validated"):
        (work / sub).symlink_to(tiny_validated / sub)
    aggregate_all(work, epoch, load_params("aggregates")["coclick_max_distance"])
    snaps = plan_snapshots(landed_hours(tiny_validated / "validated" / "clicks"), epoch, test_hours=4,
                           val_hours=4, label_hours=4, train_snapshots=1, min_history_hours=8)
    split = write_snapshots(snaps, tmp_path / "split.json")
    params = tmp_path / "params.yaml"
    import yaml

    all_params = yaml.safe_load(Path("params.yaml").read_text())
    all_params["learned"] |= {"epochs": 1, "dim": 16, "hidden": 32, "warm_start": True}
    params.write_text(yaml.safe_dump(all_params))
    assert main(["--data-root", str(work), "--split", str(split), "--out", str(tmp_path / "learned"),
                 "--params", str(params)]) == 0
    hours = fit_hours(snaps, 24)
    assert sorted(p.name for p in (tmp_path / "learned").glob("hour=*")) == [f"hour={h:03d}" for h in hours]
    fits = json.loads((tmp_path / "learned" / "fits.json").read_text())  # the earliest from scratch, then updates
    assert [fits[f"hour={h:03d}"]["warm_start"] for h in hours] == [False] + [True] * (len(hours) - 1)
    test = next(s for s in snaps if s.role == "test")
    assert model_for(tmp_path / "learned", test.cutoff_hour).meta["cutoff_ms"] == test.cutoff_ms

    build_candidates(work, snaps, tmp_path / "cands", tmp_path / "idx", load_params("candidates"), epoch,
                     learned_dir=tmp_path / "learned")
    cands = pd.read_parquet(tmp_path / "cands" / "test.parquet")
    assert (cands[C.rank_col(C.LEARNED)] > 0).any()
    assert cands.loc[cands[C.rank_col(C.LEARNED)] > 0, C.LEARNED_SIM].notna().all()
    served = CandidateIndex.load(tmp_path / "idx" / "serve")
    assert served.learned is not None and served.learned.meta["cutoff_ms"] == snaps[-1].cutoff_ms
    assert len(served.sources["learned"].pool_vectors) == len(served.pool)


@pytest.mark.integration
def test_a_rerun_keeps_the_daily_models_fitted_from_unchanged_inputs_and_refits_the_rest(
        tiny_validated, tmp_path, monkeypatch):
    """The daily retrain fits the new day's model only: an earlier day's model whose inputs did not change is
    kept (byte for byte what a refit writes); a model whose clicks changed, whose files were altered, or
    whose params changed is refitted; a folder of an hour no longer fitted goes."""
    import shutil

    from pipelines import learned as L
    from pipelines.config import load_params
    from pipelines.lake import landed_hours, partition_file
    from pipelines.split import hour_start_ms, plan_snapshots

    epoch = load_params("data")["epoch_ms"]
    work = tmp_path / "root"
    work.mkdir()
    (work / "raw").symlink_to(tiny_validated / "raw")
    shutil.copytree(tiny_validated / "validated", work / "validated")
    snaps = plan_snapshots(landed_hours(work / "validated" / "clicks"), epoch, test_hours=4, val_hours=4,
                           label_hours=4, train_snapshots=1, min_history_hours=8)
    params = load_params("learned") | {"epochs": 1, "dim": 16, "hidden": 32}
    half_life = load_params("candidates")["trend_half_life_hours"]
    out = tmp_path / "learned"
    hours = fit_hours(snaps, 24)
    assert len(hours) >= 3
    fitted = []
    real_fit = L.fit_learned

    def counting_fit(clicks, articles, embeddings, cutoff_ms, *args, **kwargs):
        fitted.append(int(cutoff_ms))
        return real_fit(clicks, articles, embeddings, cutoff_ms, *args, **kwargs)

    monkeypatch.setattr(L, "fit_learned", counting_fit)

    def run(p=params) -> dict[str, bytes]:
        fitted.clear()
        L.fit_daily(work, snaps, out, p, epoch, half_life)
        return {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}

    first = run()
    assert len(fitted) == len(hours)
    shutil.rmtree(L.fit_keys_dir(out))  # without its notes every model is refitted: the same bytes
    assert run() == first and len(fitted) == len(hours)
    (out / "hour=999").mkdir()  # a model of an hour the flow no longer fits, and its note
    (L.fit_keys_dir(out) / "hour=999.json").write_text("{}")
    assert run() == first and fitted == []
    assert not (out / "hour=999").exists() and not (L.fit_keys_dir(out) / "hour=999.json").exists()
    assert sorted(p.stem for p in L.fit_keys_dir(out).glob("*.json")) == [f"hour={h:03d}" for h in hours]

    # clicks of an hour between the second and third cutoff change: the models from the third on are refitted
    changed_hour = hours[1] + 1
    part = partition_file(work, changed_hour)
    frame = pd.read_parquet(part)
    frame.iloc[: len(frame) // 2].to_parquet(part, index=False)
    run()
    assert fitted == [hour_start_ms(h, epoch) for h in hours[2:]]

    # a model file altered since its fit is refitted, and the params are part of the key
    (out / f"hour={hours[0]:03d}" / "weights.npz").write_bytes(b"not the fitted weights")
    run()
    assert len(fitted) == 1
    run(params | {"seed": int(params["seed"]) + 1})
    assert len(fitted) == len(hours)


@pytest.mark.unit
def test_the_as_served_replay_keeps_the_learned_lists_in_an_hour_whose_readers_are_all_new(world, tmp_path):
    """Hour 24's readers have never clicked, so the learned source proposes nothing to any of them; its method
    must still rank them, by the trending order every method falls back to, not drop out of that hour (its
    queries then scored 0 and the learned baseline read lower than it is)."""
    from pipelines.evaluate import evaluate_as_served
    from pipelines.split import Snapshot

    top = int(_index(world, CUTOFF_H).trending()[C.ARTICLE_ID].iloc[0])
    new_readers = [(1000 + u, 1000 + u, top, CUTOFF_H + 0.1 + 0.01 * u) for u in range(6)]
    returning = [(u, 2000 + u, u % TOPICS * PER_TOPIC, CUTOFF_H + 1.2 + 0.01 * u) for u in range(6)]
    frame = clicks(sorted(list(zip(world["clicks"][C.USER_ID], world["clicks"][C.SESSION_ID],
                                   world["clicks"][C.CLICK_ARTICLE_ID],
                                   (world["clicks"][C.CLICK_TIMESTAMP] - EPOCH) / C.HOUR_MS, strict=True))
                          + new_readers + returning, key=lambda r: r[3]))
    write_validated(tmp_path, frame)
    write_raw(tmp_path, world["meta"], _world_embeddings())
    aggregate_all(tmp_path, EPOCH, 5)
    snap = Snapshot("test", "test", CUTOFF_H, CUTOFF_H + 2, at(CUTOFF_H), at(CUTOFF_H + 2))
    res = evaluate_as_served(tmp_path, snap, frame, (world["meta"], np.full(len(world["meta"]), -1)),
                             _world_embeddings(), INDEX_PARAMS, {"profile_half_life_h": 24}, EPOCH, 3, 6,
                             learned=world["model"])
    assert res["users"]["cold"] == 6 and res["users"]["warm"] > 0
    learned, trending = res["methods"]["learned"], res["methods"]["trending"]
    assert trending["cold"]["ndcg@3"] == 1.0  # each new reader read the top trending article
    def ranked(segment: dict) -> dict:  # what the lists scored (candidate_recall is what the source reached)
        return {k: v for k, v in segment.items() if k != "candidate_recall"}

    assert ranked(learned["cold"]) == ranked(trending["cold"])
    assert learned["cold"]["candidate_recall"] == 0.0
    # the rows keep the frozen protocol's order (each source's, then fusion), whichever hour a method came in
    assert list(res["methods"]).index("learned") < list(res["methods"]).index("fusion")


@pytest.mark.unit
@pytest.mark.parametrize("max_examples, since", [(None, None), (7, None), (None, 40_000), (3, 40_000)])
def test_training_examples_match_each_users_reads_taken_one_by_one(max_examples, since):
    """The vectorised examples equal a per-user walk: a click is an example when the same user read something
    before it and it is not a re-read of one of their `history` previous clicks; its history is those clicks,
    newest first, -1 padded; `since` keeps clicks from then on, `max_examples` the newest."""
    from pipelines.learned import training_examples

    rng = np.random.default_rng(5)
    n, history = 60, 3
    frame = pd.DataFrame({C.USER_ID: rng.integers(0, 6, n), C.CLICK_ARTICLE_ID: rng.integers(0, 9, n),
                          C.CLICK_TIMESTAMP: rng.permutation(n) * 1_000})
    hist, pos, ts, art, art_ts = training_examples(frame, history, max_examples, since)
    ordered = frame.sort_values([C.USER_ID, C.CLICK_TIMESTAMP], kind="stable").reset_index(drop=True)
    np.testing.assert_array_equal(art, ordered[C.CLICK_ARTICLE_ID].to_numpy())
    np.testing.assert_array_equal(art_ts, ordered[C.CLICK_TIMESTAMP].to_numpy())
    expected = []
    for _, reads in ordered.groupby(C.USER_ID, sort=True):
        rows = reads.index.to_list()
        for i, row in enumerate(rows):
            before = rows[max(0, i - history): i][::-1]
            if not before or ordered.loc[row, C.CLICK_ARTICLE_ID] in ordered.loc[before, C.CLICK_ARTICLE_ID].to_list():
                continue
            if since is not None and ordered.loc[row, C.CLICK_TIMESTAMP] < since:
                continue
            expected.append((row, before + [-1] * (history - len(before))))
    if max_examples is not None:
        newest = sorted(expected, key=lambda e: ordered.loc[e[0], C.CLICK_TIMESTAMP])[-max_examples:]
        expected = sorted(newest)
    assert len(expected) > (0 if max_examples is None else max_examples - 1)
    np.testing.assert_array_equal(hist, np.array([h for _, h in expected], dtype=np.int64).reshape(-1, history))
    np.testing.assert_array_equal(pos, ordered.loc[[r for r, _ in expected], C.CLICK_ARTICLE_ID].to_numpy())
    np.testing.assert_array_equal(ts, ordered.loc[[r for r, _ in expected], C.CLICK_TIMESTAMP].to_numpy())


@pytest.mark.unit
def test_learned_row_scores_are_the_same_a_block_at_a_time(world, monkeypatch):
    from pipelines.sources import learned as source

    index = _index(world, 26)
    whole = index.candidates(world["clicks"], users=range(90))
    assert whole[C.LEARNED_SIM].notna().sum() > 7  # more rows than the blocks below hold
    monkeypatch.setattr(source, "ROW_CHUNK", 7)
    pd.testing.assert_frame_equal(index.candidates(world["clicks"], users=range(90)), whole)
