"""How high NDCG@10 can go on a synthetic dataset: the as-served queries ranked by what the generator knew.

A synthetic dataset is drawn from a known story (pipelines/synth.py): each article's popularity and its age
curve, each user's favourite categories, sessions that stay in a sub-topic. `synth.ground_truth` draws that
world again from the seed, and each as-served query (one user in one hour of the test window, judged on the
articles clicked in that hour, read articles excluded: `pipelines.evaluate.evaluate_as_served`'s queries) is
ranked by its expected clicks under the story (`GroundTruth.odds`). No model can know the favourites and the
popularities exactly, so this is a ceiling, not a target; against it stand the methods of the same window in
the evaluation's eval.json. Four rankings:

- `generator`: the user's favourite categories and every article's pull (popularity x age curve);
- `generator, favourites from reads`: the same odds with each user's three most read categories, weighted by
  their share of the reads, standing in for the favourites (a plug-in estimate, what the ranker's user x
  category shares hold);
- `generator, favourites inferred`: the odds averaged over the favourites the user's reads make likely (Bayes'
  rule with the generator's own prior and click story, by importance sampling): the best use of the reads that
  knowing the whole story allows, so the ceiling for any ranking that learns users from their reads;
- `generator, no user`: the pull alone, the same list for everyone (the best a popularity list could do).

    .venv/bin/python benchmarks/bench_ceiling.py --data-root /tmp/bench/demo/data \
        --split /tmp/bench/demo/data/split.json --eval /tmp/bench/demo/metrics/eval.json \
        --markdown benchmarks/results/ceiling_demo.md

The data root must be `newsrec synth`'s output for `--profile`/`--seed` (params.yaml `synth`), validated
unchanged (the benchmark checks the target clicks against the generator's offer of their hour). Without
`--eval` (the seed's data alone: synth, validate, split) a `--jsonl` run adds the generator rankings to the
rows an earlier run of the same world recorded (`worlds`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines import lake
from pipelines.config import load_config
from pipelines.errors import InputError
from pipelines.metrics import per_user_metrics
from pipelines.split import eval_targets, get_snapshot, hour_start_ms, load_clicks

ROOT = Path(__file__).resolve().parents[1]

K = 10
SEGMENTS = ("all", "warm", "cold")
SHOWN = ("recent_popular", "trending", "learned", "fusion", "reranker")


def ceiling(data_root: Path, split_file: Path, truth, epoch_ms: int, snapshot: str = "test") -> dict:
    """NDCG@10 per segment of the four generator rankings over the snapshot's as-served queries."""
    from pipelines.catalogue import delivered_hours, known_at, read_catalogue

    snap = get_snapshot(split_file, snapshot)
    catalogue, _ = read_catalogue(data_root)
    delivered = delivered_hours(data_root, catalogue)
    clicks = load_clicks(lake.validated_dir(data_root), None, snap.end_ms)
    ts = clicks[C.CLICK_TIMESTAMP].to_numpy()
    recs: dict[str, list[pd.DataFrame]] = {"generator": [], "generator, favourites from reads": [],
                                           "generator, favourites inferred": [], "generator, no user": []}
    jumps = _jump_reads(clicks, truth)
    rng = np.random.default_rng(0)
    truths, offset, outside = [], 0, 0
    for hour in range(snap.cutoff_hour, snap.end_hour):
        cutoff = hour_start_ms(hour, epoch_ms)
        start, end = np.searchsorted(ts, [cutoff, cutoff + C.HOUR_MS])
        history, target = clicks.iloc[:start], clicks.iloc[start:end]
        targets = eval_targets(history, target, known_at(catalogue, delivered, hour), cutoff)
        if targets.empty:
            continue
        users = np.unique(targets[C.USER_ID].to_numpy())
        articles, odds = truth.odds(hour, users)
        outside += int((~targets[C.ARTICLE_ID].isin(articles)).sum())
        read = history[history[C.USER_ID].isin(users)]
        order = np.argsort(articles)
        read_articles = read[C.CLICK_ARTICLE_ID].to_numpy()
        pos = np.clip(np.searchsorted(articles[order], read_articles), 0, len(articles) - 1)
        hit = articles[order][pos] == read_articles
        read_at = (np.searchsorted(users, read[C.USER_ID].to_numpy())[hit], order[pos[hit]])
        favourites = _favourites(read, users, catalogue, cutoff)
        estimated = truth.with_favourites(*favourites).odds(hour, np.arange(len(users)))[1]
        inferred = truth.with_favourites(*_inferred_favourites(jumps.iloc[:np.searchsorted(
            jumps[C.CLICK_TIMESTAMP].to_numpy(), cutoff)], users, truth, rng)).odds(hour, np.arange(len(users)))[1]
        rankings = (("generator", odds), ("generator, favourites from reads", estimated),
                    ("generator, favourites inferred", inferred),
                    ("generator, no user", np.tile(_pull(truth, hour), (len(users), 1))))
        for name, scores in rankings:
            scores[read_at] = -np.inf  # read before the hour: never proposed
            top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
            recs[name].append(pd.DataFrame({C.USER_ID: offset + np.repeat(np.arange(len(users)), K),
                                            C.ARTICLE_ID: articles[top].ravel(),
                                            C.RANK: np.tile(np.arange(1, K + 1), len(users))}))
        truths.append(targets.assign(**{C.USER_ID: offset + np.searchsorted(users, targets[C.USER_ID].to_numpy())}))
        offset += len(users)
    if not truths:
        raise InputError(f"snapshot {snapshot!r}: no hour of its window has a query")
    truth_frame = pd.concat(truths, ignore_index=True)
    if outside > 0.01 * len(truth_frame):
        raise InputError(f"{outside} of {len(truth_frame)} target clicks are on articles the generator did not offer "
                         "in their hour: the data root is not this profile and seed's synth output")
    warm = truth_frame.groupby(C.USER_ID)[C.WARM].first()
    out = {"queries": {"all": len(warm), "warm": int(warm.sum()), "cold": int((~warm).sum())}, "ndcg@10": {}}
    for name, parts in recs.items():
        per_user = per_user_metrics(pd.concat(parts, ignore_index=True), truth_frame, K)["ndcg"]
        out["ndcg@10"][name] = {"all": float(per_user.mean()), "warm": float(per_user[warm[per_user.index]].mean()),
                                "cold": float(per_user[~warm[per_user.index]].mean())}
    return out


def _favourites(read: pd.DataFrame, users: np.ndarray, catalogue: pd.DataFrame,
                cutoff_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's three most read categories (rows in `users` order) weighted by their share of the reads,
    the user x category shares the ranker reads (`features.fit_user_tables`): the favourites a model could
    estimate. A user without reads gets none (the front page only)."""
    from pipelines.features import fit_user_tables

    fav_cat = np.zeros((len(users), 3), dtype=np.int64)
    fav_weight = np.zeros((len(users), 3))
    if read.empty:
        return fav_cat, fav_weight
    shares = fit_user_tables(read, catalogue, cutoff_ms)[1].sort_values(
        [C.USER_ID, "share", C.CATEGORY_ID], ascending=[True, False, True])
    slot = shares.groupby(C.USER_ID).cumcount().to_numpy()
    top = shares[slot < 3]
    rows, slot = np.searchsorted(users, top[C.USER_ID].to_numpy()), slot[slot < 3]
    fav_cat[rows, slot] = top[C.CATEGORY_ID].to_numpy()
    fav_weight[rows, slot] = top["share"].to_numpy()
    return fav_cat, fav_weight


def _jump_reads(clicks: pd.DataFrame, truth) -> pd.DataFrame:
    """The clicks that left the session's sub-topic (a session's first click, or one in another sub-topic than
    the click before it: in the generator's story, a jump to a favourite category or to the front page), in
    time order, each with what its likelihood needs under favourites v (a vector over categories):
    P(article | v) = fav * v[category] + front * (1 - sum_c g[hour, c] * v[c]), g[hour] = `g_hour` row.
    The other clicks follow the sub-topic and say nothing more about the favourites."""
    from pipelines.synth import _Offers

    p, arts = truth.profile, truth.articles
    c = clicks[[C.USER_ID, C.SESSION_ID, C.CLICK_ARTICLE_ID, C.CLICK_TIMESTAMP]].sort_values(
        [C.SESSION_ID, C.CLICK_TIMESTAMP], kind="stable")
    article = c[C.CLICK_ARTICLE_ID].to_numpy()
    sub = arts.subtopic[article]
    same_session = np.r_[False, c[C.SESSION_ID].to_numpy()[1:] == c[C.SESSION_ID].to_numpy()[:-1]]
    jump = ~same_session | np.r_[True, sub[1:] != sub[:-1]]
    first_ts = c.groupby(C.SESSION_ID)[C.CLICK_TIMESTAMP].transform("min").to_numpy()
    hour = (first_ts - truth.epoch_ms) // C.HOUR_MS  # the session's hour: its offer
    c = c.assign(hour=hour)[jump]
    offers = _Offers(p, arts, truth.epoch_ms)
    hours = np.unique(c["hour"].to_numpy())
    g = np.zeros((int(hours.max(initial=0)) + 1, p.categories))
    fav = np.zeros(len(c))
    front = np.zeros(len(c))
    art, hr = c[C.CLICK_ARTICLE_ID].to_numpy(), c["hour"].to_numpy()
    for h in hours:
        offer = offers.at(int(h))
        w = np.zeros(len(arts.category))
        w[offer.articles] = offer.weight / offer.total
        cat_mass = np.bincount(arts.category[offer.articles], weights=w[offer.articles], minlength=p.categories)
        g[h] = p.p_favourite * offer.favourite_accept(p)
        rows = np.flatnonzero(hr == h)
        a = art[rows]
        cat = arts.category[a]
        with np.errstate(divide="ignore", invalid="ignore"):
            fav[rows] = np.where(cat_mass[cat] > 0, g[h][cat] * w[a] / cat_mass[cat], 0.0)
        front[rows] = w[a]
    c = c.assign(fav=fav, front=front, category=arts.category[art])
    c = c[(c["fav"] > 0) | (c["front"] > 0)]  # off the hour's offer (a late click, a redraw): no evidence
    c.attrs["g_hour"] = g
    return c.sort_values(C.CLICK_TIMESTAMP, kind="stable").reset_index(drop=True)


def _inferred_favourites(jumps: pd.DataFrame, users: np.ndarray, truth, rng: np.random.Generator,
                         samples: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Each user's favourites averaged over their posterior given the jump reads (`_jump_reads` before the hour),
    as `samples` x 3 weighted favourite slots (rows in `users` order): drawn from the generator's prior (three
    categories by their share of production, one to three of them used, Dirichlet weights) with the read
    categories' shares mixed into the proposal, and weighted by prior / proposal x likelihood."""
    from pipelines.synth import favourite_weights

    p, prior = truth.profile, truth.articles.category_weight
    g = jumps.attrs["g_hour"]
    mine = jumps[jumps[C.USER_ID].isin(users)]
    by_user = dict(tuple(mine.groupby(C.USER_ID)))
    out_cat = np.zeros((len(users), samples * 3), dtype=np.int64)
    out_weight = np.zeros((len(users), samples * 3))
    for i, user in enumerate(users):
        reads = by_user.get(user)
        if reads is None:
            proposal = prior
        else:
            shares = np.bincount(reads["category"].to_numpy(), minlength=p.categories) / len(reads)
            proposal = 0.2 * prior + 0.8 * shares
        cats = rng.choice(p.categories, size=(samples, 3), p=proposal)
        w = favourite_weights(rng, samples)
        log_w = np.log(prior[cats] / proposal[cats]).sum(axis=1)
        if reads is not None:
            cat, hour = reads["category"].to_numpy(), reads["hour"].to_numpy()
            on_fav = (w[None] * (cats[None] == cat[:, None, None])).sum(axis=2)
            taken = (w[None] * g[hour[:, None, None], cats[None]]).sum(axis=2)
            like = reads["fav"].to_numpy()[:, None] * on_fav + reads["front"].to_numpy()[:, None] * (1.0 - taken)
            log_w += np.log(np.maximum(like, 1e-300)).sum(axis=0)
        post = np.exp(log_w - log_w.max())
        post /= post.sum()
        out_cat[i], out_weight[i] = cats.ravel(), (w * post[:, None]).ravel()
    return out_cat, out_weight


def _pull(truth, hour: int) -> np.ndarray:
    """Every readable article's odds for a reader without favourites: its pull, the same list for everyone."""
    nobody = truth.with_favourites(truth.fav_cat[:1], np.zeros_like(truth.fav_weight[:1]))
    return nobody.odds(hour, np.zeros(1, dtype=np.int64))[1][0]


def record(result: dict, evaluation: dict | None, profile: str, seed: int) -> dict:
    """One run: the generator rankings' and (from eval.json) the evaluation methods' NDCG@10 by segment."""
    rows = dict(result["ndcg@10"])
    if evaluation is not None:
        served = evaluation["as_served"]
        rows.update({m: {s: served["methods"][m][s]["ndcg@10"] for s in SEGMENTS}
                     for m in SHOWN if m in served["methods"]})
    return {"profile": profile, "seed": seed, "queries": result["queries"], "ndcg@10": rows}


def _best_baseline(rows: dict, segment: str = "all") -> tuple[str, float] | None:
    """The best method of the evaluation other than the reranker on `segment` (None without eval.json)."""
    baselines = {m: v[segment] for m, v in rows.items() if m in SHOWN and m != "reranker"}
    return max(baselines.items(), key=lambda kv: kv[1]) if baselines else None


def markdown(run: dict) -> str:
    """One run's table."""
    rows, q = run["ndcg@10"], run["queries"]
    best = _best_baseline(rows)
    title = (f"{run['profile']} profile (seed {run['seed']}), test window: {q['all']} as-served queries "
             f"({q['warm']} warm, {q['cold']} cold), NDCG@10.")
    lines = [title, "",
             "| ranking | all | warm | cold |" + (f" all, x {best[0]} |" if best else ""),
             "|---|---:|---:|---:|" + ("---:|" if best else "")]
    for name, v in rows.items():
        ratio = f" {v['all'] / best[1]:.3f} |" if best else ""
        lines.append(f"| {name} | {v['all']:.4f} | {v['warm']:.4f} | {v['cold']:.4f} |{ratio}")
    return "\n".join(lines) + "\n"


def worlds(runs: list[dict]) -> dict[tuple[str, int], dict]:
    """Each world's (profile, seed) figures: its runs merged in order, a later figure of a ranking replacing an
    earlier one, so a run without eval.json adds generator rankings beside the methods an earlier run recorded.
    Runs that judged other queries than the world's latest (other data or split) are left out."""
    out: dict[tuple[str, int], dict] = {}
    for run in reversed(runs):
        world = out.setdefault((run["profile"], run["seed"]), {"queries": run["queries"], "ndcg@10": {}})
        if run["queries"] == world["queries"]:
            world["ndcg@10"] = {**run["ndcg@10"], **world["ndcg@10"]}
    return out


COLUMNS = (("reranker", "all"), ("reranker", "warm"), ("generator, favourites from reads", "all"),
           ("generator, favourites inferred", "all"), ("generator", "all"))


def seeds_markdown(runs: list[dict]) -> str:
    """One line per world: the reranker (all and warm queries), the generator's odds with the favourites
    estimated from the reads, inferred from them, and the true ones, each against the best baseline of its
    segment ("-" where no run recorded it)."""
    header = "| profile | seed | queries | " + " | ".join(f"{r}, {s}" for r, s in COLUMNS) + " |"
    lines = [header, "|---|---:|---:|" + "---:|" * len(COLUMNS)]
    for (profile, seed), world in sorted(worlds(runs).items()):
        rows = world["ndcg@10"]
        if not _best_baseline(rows):
            continue
        cells = []
        for ranking, segment in COLUMNS:
            name, best = _best_baseline(rows, segment)
            cells.append(f"{rows[ranking][segment]:.4f} = {rows[ranking][segment] / best:.3f}x {name}"
                         if ranking in rows else "-")
        lines.append(f"| {profile} | {seed} | {world['queries']['all']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, required=True, help="a synthetic data root, validated")
    ap.add_argument("--split", type=Path, required=True, help="the split file of the evaluation")
    ap.add_argument("--eval", type=Path, help="eval.json of the same data and split (methods to compare)")
    ap.add_argument("--profile", help="synth profile (default: params.yaml synth.profile)")
    ap.add_argument("--seed", type=int, help="synth seed (default: params.yaml synth.seed)")
    ap.add_argument("--hours", type=int, help="synth --hours, when the data was written with it")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--markdown", type=Path, help="write this run's table here")
    ap.add_argument("--jsonl", type=Path, help="append this run here as one JSON line")
    ap.add_argument("--seeds-markdown", type=Path, help="rewrite this file as a table of the --jsonl runs, one line "
                    "per profile and seed")
    args = ap.parse_args(argv)
    from pipelines.synth import Profile, ground_truth

    params = load_config(args.params)
    name = args.profile or params["synth"]["profile"]
    seed = params["synth"]["seed"] if args.seed is None else args.seed
    epoch_ms = int(params["data"]["epoch_ms"])
    truth = ground_truth(Profile.from_params(params["synth"], name), seed, epoch_ms, args.hours)
    result = ceiling(args.data_root, args.split, truth, epoch_ms)
    evaluation = json.loads(args.eval.read_text()) if args.eval else None
    if evaluation is not None and evaluation["as_served"]["users"]["all"] != result["queries"]["all"]:
        raise InputError(f"{args.eval} judged {evaluation['as_served']['users']['all']} as-served queries, this "
                         f"window has {result['queries']['all']}: not the same data and split")
    run = record(result, evaluation, name, seed)
    table = markdown(run)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.jsonl:
        with args.jsonl.open("a") as f:
            f.write(json.dumps(run) + "\n")
    if args.seeds_markdown:
        if not args.jsonl:
            raise InputError("--seeds-markdown tabulates the --jsonl runs: give --jsonl")
        runs = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
        args.seeds_markdown.write_text(seeds_markdown(runs))
        print(seeds_markdown(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
