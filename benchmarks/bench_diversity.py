"""The diversity re-rank's trade-off on the validation snapshots: the reranker's NDCG@10 against its intra-list
diversity (ILD@10) and distinct categories in the top 10, for several MMR lambdas (params `rank`).

Reads the stage outputs of a finished run (candidates, indexes, features of the `val_*` snapshots and the
trained ranker); the truth is each snapshot's labelled candidates, so the figures compare lambdas with each
other, not with the test tables. Every third val snapshot is read, to keep it short.

    .venv/bin/python benchmarks/bench_diversity.py --data-root data --ranker models/ranker \
        --out benchmarks/results/diversity/demo

writes demo.json and demo.md (the table docs/evaluation.md embeds). `--compare OFF ON --out X` instead writes
X.md: the reranker's rows of two evaluations (eval.json with `rank.diversity` none, then on) side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines.candidates import TREND, CandidateIndex
from pipelines.catalogue import read_catalogue
from pipelines.diversity import index_vectors, lookup
from pipelines.evaluate import RERANKER, rank_methods, reranker_scorer
from pipelines.features import normalise_embeddings
from pipelines.metrics import list_diversity, per_user_metrics
from pipelines.train import Ranker


def sweep_table(out: dict) -> str:
    """The sweep as markdown: a row per lambda, NDCG@10 with its change against lambda 1 (the ranker's order)."""
    rows = out["by_lambda"]
    base = rows.get("1.0", {}).get("ndcg@10")
    lines = [f"{out['queries']} queries, val snapshots {', '.join(out['snapshots'])}.", "",
             "| lambda | ndcg@10 | vs lambda 1 | ild@10 | categories@10 |", "|---:|---:|---:|---:|---:|"]
    for lam, row in rows.items():
        change = f"{row['ndcg@10'] / base - 1:+.1%}" if base else "-"
        lines.append(f"| {lam} | {row['ndcg@10']:.4f} | {change} | {row['ild@10']:.3f} | {row['categories@10']:.2f} |")
    return "\n".join(lines) + "\n"


def compare_table(off: dict, on: dict) -> str:
    """The reranker's rows (all queries) of two evaluations, the re-rank off then on, both protocols."""
    k = on["k"]
    cols = [f"ndcg@{k}", f"recall@{k}", f"coverage@{k}", f"ild@{k}", f"categories@{k}"]
    lam = on.get("rank", {}).get("mmr_lambda")
    lines = ["| protocol | rank | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for name in ("frozen", "as_served"):
        for label, res in (("off", off), (f"mmr, lambda {lam}", on)):
            block = res if name == "frozen" else res.get("as_served")
            if not block:
                continue
            row = block["methods"]["reranker"]["all"]
            lines.append(f"| {name.replace('_', ' ')} | {label} | " + " | ".join(f"{row[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--ranker", type=Path)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7, 0.5])
    parser.add_argument("--depth", type=int, default=50, help="rank.mmr_depth")
    parser.add_argument("--out", type=Path, required=True, help="results path without extension (.json, .md)")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("OFF", "ON"), help="two eval.json files")
    args = parser.parse_args()
    if args.compare:
        off, on = (json.loads(p.read_text()) for p in args.compare)
        args.out.with_suffix(".md").write_text(compare_table(off, on))
        print(args.out.with_suffix(".md").read_text())
        return 0
    if args.data_root is None or args.ranker is None:
        parser.error("--data-root and --ranker are needed (or --compare)")
    root = args.data_root
    catalogue, embeddings = read_catalogue(root)
    normalised = normalise_embeddings(embeddings)
    measure = (lookup(normalised), catalogue.set_index(C.ARTICLE_ID)[C.CATEGORY_ID])
    ranker = Ranker.load(args.ranker)
    acc: dict[float, dict[str, list]] = {lam: {"ndcg@10": [], "ild@10": [], "categories@10": []} for lam in args.lambdas}
    snaps = sorted(p.stem for p in (root / "candidates").glob("val_*.parquet"))[::3]
    if not snaps:
        raise SystemExit(f"no val snapshots under {root / 'candidates'}")
    for snap in snaps:
        cands = pd.read_parquet(root / "candidates" / f"{snap}.parquet")
        targets = cands.loc[cands[C.LABEL] == 1, [C.USER_ID, C.ARTICLE_ID]]
        cands = cands[cands[C.USER_ID].isin(targets[C.USER_ID])]
        index = CandidateIndex.load(root / "indexes" / snap)
        scores = reranker_scorer(ranker, root / "features" / snap, normalised)(cands.drop(columns=[C.LABEL]))
        trend = index.pool.set_index(C.ARTICLE_ID)[TREND]
        for lam in args.lambdas:
            params = {"diversity": "mmr", "mmr_lambda": lam, "mmr_depth": args.depth}
            recs = rank_methods(cands, trend, 10, {RERANKER: lambda _, s=scores: s}, params, index_vectors(index))
            per = per_user_metrics(recs[RERANKER], targets, 10)
            div = list_diversity(recs[RERANKER], *measure, k=10)
            acc[lam]["ndcg@10"].append(per["ndcg"].to_numpy())
            acc[lam]["ild@10"].append(div["ild"].to_numpy())
            acc[lam]["categories@10"].append(div["categories"].to_numpy())
    out = {"snapshots": snaps, "queries": int(sum(len(x) for x in acc[args.lambdas[0]]["ndcg@10"])),
           "by_lambda": {str(lam): {m: round(float(np.nanmean(np.concatenate(v))), 4) for m, v in acc[lam].items()}
                         for lam in args.lambdas}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(sweep_table(out))
    print(sweep_table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
