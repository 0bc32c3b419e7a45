"""Offline evaluation on the test snapshot: every baseline and the reranker, all / warm / cold users.

The task is the one the service faces: for each user with a target click on an article available
at the cutoff, rank the catalogue available at the cutoff minus what the user already read, and
score the top k against the clicks of the target window (`split.eval_targets`; the truth is
computed from the validated clicks here, not taken from the candidate files).

Every method ranks the recommendable pool; articles outside it come after it, so only their
absence from the top k matters. Methods:

    popular    all-history clicks            trending   decayed recent clicks
    cocl       co-click source               emb_knn    embedding kNN source
    fusion     reciprocal-rank fusion of the four candidate sources
    reranker   the LightGBM ranker's scores over the candidate list (`pipelines.train.score_candidates`)

A source that runs out of articles for a user (a cold user has no co-clicks) continues with the
trending order, so every method shows k articles to everyone. candidate_recall is the share of the
user's relevant articles the method's list can reach at all: its own list for a single source, the
whole candidate list for fusion and the reranker (the reranker's ceiling).

Writes `eval.json` (DVC metrics), `eval_table.md`, and plot data under `plots/` (DVC plots).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.columns import (
    ARTICLE_ID,
    CREATED_AT_TS,
    EMBEDDINGS_FILE,
    FUSED,
    LABEL,
    METADATA_FILE,
    USER_ID,
    WARM,
    rank_col,
    score_col,
)
from pipelines.config import load_params
from pipelines.metrics import candidate_recall, coverage, per_user_metrics, rank_by_score, summarise

# method -> the candidate column it ranks by (None: scores come from a scorer, e.g. the reranker)
BASELINES = {"popular": "pop", "trending": "trend", "cocl": "cocl", "emb_knn": "emb", "fusion": FUSED}
RERANKER = "reranker"
SEGMENTS = ("all", "warm", "cold")
SCORE_CHUNK_ROWS = 500_000
_TIE = "_trend_tiebreak"

Scorer = Callable[[pd.DataFrame], np.ndarray]


def _segments(targets: pd.DataFrame) -> dict[str, np.ndarray]:
    users = targets.drop_duplicates(USER_ID)
    return {
        "all": users[USER_ID].to_numpy(),
        "warm": users.loc[users[WARM], USER_ID].to_numpy(),
        "cold": users.loc[~users[WARM], USER_ID].to_numpy(),
    }


def method_scores(
    candidates: pd.DataFrame, scorers: Mapping[str, Scorer], chunk_rows: int = SCORE_CHUNK_ROWS
) -> dict[str, np.ndarray]:
    """The score column each method ranks the candidate rows by (NaN where a source did not propose).

    Scorers see the rows without `label`, `chunk_rows` at a time: a scorer builds a feature matrix as wide
    as the model, which for a whole Globo-scale test window would not fit in memory at once.
    """
    scores = {m: candidates[score_col(src)].to_numpy(dtype=np.float64) for m, src in BASELINES.items()}
    blind = candidates.drop(columns=[LABEL], errors="ignore")
    for name, scorer in scorers.items():
        parts = []
        for start in range(0, len(blind), chunk_rows):
            chunk = blind.iloc[start : start + chunk_rows]
            s = np.asarray(scorer(chunk), dtype=np.float64)
            if s.shape != (len(chunk),):
                raise ValueError(f"scorer {name!r} returned {s.shape} scores for {len(chunk)} candidates")
            parts.append(s)
        scores[name] = np.concatenate(parts) if parts else np.zeros(0)
    return scores


def evaluate_snapshot(
    candidates: pd.DataFrame,
    targets: pd.DataFrame,
    trend: pd.Series,
    catalogue_size: int,
    k: int,
    scorers: Mapping[str, Scorer] | None = None,
    curve_k: int | None = None,
) -> dict:
    """Metrics of every method for all / warm / cold users of `targets` (user_id, article_id, warm).

    `candidates` is one snapshot's candidate frame, `trend` the pool's trend score by article id (the
    fill order), `catalogue_size` the number of articles available at the cutoff. With `curve_k`, also
    NDCG@j and Recall@j for j = 1..curve_k (all users) for the plots.
    """
    scorers = dict(scorers or {})
    segs = _segments(targets)
    frame = candidates[[USER_ID, ARTICLE_ID]].copy()
    frame[_TIE] = trend.reindex(frame[ARTICLE_ID]).fillna(0.0).to_numpy()
    depth = max(k, curve_k or 0)
    results: dict = {"k": int(k), "users": {s: len(u) for s, u in segs.items()}, "methods": {}, "curves": {}}
    for method, score in method_scores(candidates, scorers).items():
        frame["_s"] = score
        recs = rank_by_score(frame, "_s", k=depth, tiebreak=_TIE)
        per_user = per_user_metrics(recs, targets, k=k)
        src = BASELINES.get(method)
        reach = candidates if src in (None, FUSED) else candidates[candidates[rank_col(src)] > 0]
        reach_recall = candidate_recall(reach, targets)
        results["methods"][method] = {}
        for seg, users in segs.items():
            top = recs[recs[USER_ID].isin(users)]
            row = summarise(per_user.reindex(users), k)
            row.pop("users")
            row[f"coverage@{k}"] = coverage(top, catalogue_size, k) if len(top) else 0.0
            row["candidate_recall"] = (
                float(reach_recall.reindex(users).mean()) if len(users) else float("nan")
            )
            results["methods"][method][seg] = row
        if curve_k:
            curve = []
            for j in range(1, curve_k + 1):
                pj = per_user_metrics(recs, targets, k=j)
                curve.append({"k": j, "ndcg": float(pj["ndcg"].mean()), "recall": float(pj["recall"].mean())})
            results["curves"][method] = curve
    baselines = [m for m in BASELINES if m in results["methods"]]
    metric = f"ndcg@{k}"
    if RERANKER in results["methods"] and baselines:
        best = max(baselines, key=lambda m: results["methods"][m]["all"][metric])
        best_value = results["methods"][best]["all"][metric]
        mine = results["methods"][RERANKER]["all"][metric]
        results["reranker_vs_best_baseline"] = {
            "metric": metric,
            "best_baseline": best,
            "ratio": float(mine / best_value) if best_value > 0 else float("inf"),
            "beats_every_baseline": bool(all(mine > results["methods"][m]["all"][metric] for m in baselines)),
        }
    return results


def markdown_table(results: dict) -> str:
    """One table: a row per method and segment, a column per metric."""
    k = results["k"]
    cols = [f"recall@{k}", f"ndcg@{k}", f"mrr@{k}", f"hr@{k}", f"coverage@{k}", "candidate_recall"]
    lines = [
        (
            f"Test snapshot: {results['users']['all']} users ({results['users']['warm']} warm, "
            f"{results['users']['cold']} cold); full catalogue available at the cutoff, read articles excluded."
        ),
        "",
        "| method | users | " + " | ".join(cols) + " |",
        "|---|---|" + "---:|" * len(cols),
    ]
    for method, segs in results["methods"].items():
        for seg in SEGMENTS:
            cells = " | ".join(f"{segs[seg][c]:.4f}" for c in cols)
            lines.append(f"| {method} | {seg} | {cells} |")
    cmp = results.get("reranker_vs_best_baseline")
    if cmp:
        verdict = "beats every baseline" if cmp["beats_every_baseline"] else "does NOT beat every baseline"
        lines += [
            "",
            (
                f"reranker / best baseline ({cmp['best_baseline']}) on {cmp['metric']}, all users: "
                f"{cmp['ratio']:.3f} ({verdict})"
            ),
        ]
    return "\n".join(lines) + "\n"


def write_reports(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """eval.json and eval_table.md under `out_dir`, and plot data, one CSV per series so DVC overlays them:
    plots/ndcg_at_k/<method>.csv (k, ndcg, recall; all users) and plots/ndcg_by_method/<segment>.csv."""
    out = Path(out_dir)
    at_k, by_method = out / "plots" / "ndcg_at_k", out / "plots" / "ndcg_by_method"
    for folder in (at_k, by_method):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.csv"):  # a method dropped since the last run must not linger in the plot
            stale.unlink()
    paths = {"json": out / "eval.json", "table": out / "eval_table.md", "at_k": at_k, "by_method": by_method}
    metrics = {key: value for key, value in results.items() if key != "curves"}
    paths["json"].write_text(json.dumps(metrics, indent=2) + "\n")
    paths["table"].write_text(markdown_table(results))
    k = results["k"]
    for method, curve in results.get("curves", {}).items():
        pd.DataFrame(curve, columns=["k", "ndcg", "recall"]).to_csv(at_k / f"{method}.csv", index=False)
    for seg in SEGMENTS:
        rows = [{"method": m, f"ndcg@{k}": v[seg][f"ndcg@{k}"]} for m, v in results["methods"].items()]
        pd.DataFrame(rows).to_csv(by_method / f"{seg}.csv", index=False)
    return paths


def reranker_scorer(model_dir: str | Path, features_dir: str | Path, embeddings: np.ndarray) -> Scorer:
    """Scores from the trained ranker with the snapshot's feature tables (R's `score_candidates`)."""
    from pipelines.features import FeatureTables, normalise_embeddings
    from pipelines.train import Ranker, score_candidates

    ranker = Ranker.load(model_dir)
    tables = FeatureTables.load(features_dir, normalise_embeddings(embeddings))
    return lambda cands: score_candidates(ranker, cands, tables)


def evaluate(
    data_root: str | Path,
    split_file: str | Path,
    candidates_dir: str | Path,
    index_dir: str | Path,
    params: dict,
    model_dir: str | Path | None = None,
    features_dir: str | Path | None = None,
) -> dict:
    """Evaluate the `params["snapshot"]` snapshot (normally "test") from the stage outputs on disk."""
    from pipelines.candidates import TREND, CandidateIndex
    from pipelines.features import read_articles, read_embeddings
    from pipelines.split import eval_targets, get_snapshot, snapshot_clicks

    root = Path(data_root)
    snap = get_snapshot(split_file, params["snapshot"])
    if snap.role == "serve":
        raise ValueError(f"snapshot {snap.name!r} has no target window to evaluate on")
    articles = read_articles(root / "raw" / METADATA_FILE)
    history, target = snapshot_clicks(root / "validated" / "clicks", snap)
    targets = eval_targets(history, target, articles, snap.cutoff_ms)
    if targets.empty:
        raise ValueError(f"snapshot {snap.name!r} has no user with a target click on an available article")
    cand_path = Path(candidates_dir) / f"{snap.name}.parquet"
    if not cand_path.exists():
        raise FileNotFoundError(
            f"no candidates for snapshot {snap.name!r}: {cand_path} (run `newsrec candidates`)"
        )
    candidates = pd.read_parquet(cand_path)
    index = CandidateIndex.load(Path(index_dir) / snap.name)
    trend = index.pool.set_index(ARTICLE_ID)[TREND]
    scorers: dict[str, Scorer] = {}
    if model_dir is not None:
        if features_dir is None:
            raise ValueError("the reranker needs the feature tables folder (--features)")
        embeddings = read_embeddings(root / "raw" / EMBEDDINGS_FILE)
        scorers[RERANKER] = reranker_scorer(model_dir, Path(features_dir) / snap.name, embeddings)
    catalogue = int((articles[CREATED_AT_TS] < snap.cutoff_ms).sum())
    results = evaluate_snapshot(
        candidates, targets, trend, catalogue, int(params["k"]), scorers, curve_k=int(params["curve_k"])
    )
    results["snapshot"] = snap.name
    results["catalogue"] = catalogue
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="newsrec evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="data root with raw/ and validated/")
    parser.add_argument("--split", type=Path, required=True, help="snapshot file written by `newsrec split`")
    parser.add_argument(
        "--candidates", type=Path, required=True, help="folder of <snapshot>.parquet candidates"
    )
    parser.add_argument("--indexes", type=Path, required=True, help="folder of <snapshot>/ candidate indexes")
    parser.add_argument(
        "--model", type=Path, help="trained ranker folder (`newsrec train`); omit: baselines only"
    )
    parser.add_argument("--features", type=Path, help="folder of <snapshot>/ feature tables (with --model)")
    parser.add_argument("--out", type=Path, required=True, help="folder for eval.json, eval_table.md, plots/")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params("evaluate", args.params)
    try:
        results = evaluate(
            args.data_root, args.split, args.candidates, args.indexes, params, args.model, args.features
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"newsrec evaluate: {exc}", file=sys.stderr)
        return 1
    paths = write_reports(results, args.out)
    print(markdown_table(results), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
