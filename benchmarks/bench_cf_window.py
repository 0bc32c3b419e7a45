"""The CF peer's fitting window on the validation snapshots: NDCG@10 of its lists (params `evaluate.cf`) fitted on
all history or on the last N hours only, every fourth val snapshot, each user's list continued in trending
order as in the evaluation; the truth is `split.eval_targets` of the snapshot's target window.

    .venv/bin/python benchmarks/bench_cf_window.py --data-root data --out benchmarks/results/cf_window/demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipelines import columns as C
from pipelines.candidates import TREND, CandidateIndex
from pipelines.catalogue import read_catalogue
from pipelines.config import load_params
from pipelines.evaluate import cf_peer_lists
from pipelines.metrics import per_user_metrics
from pipelines.peers import CFPeer
from pipelines.split import eval_targets, get_snapshot, load_clicks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="a finished run's data root")
    parser.add_argument("--windows", nargs="+", default=["null", "24", "72"], help="hours, or null = all")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="results path without extension (.json, .md)")
    args = parser.parse_args()
    root, cf = args.data_root, load_params("evaluate", args.params)["cf"]
    catalogue, _ = read_catalogue(root)
    clicks = load_clicks(root / "validated" / "clicks", None, None)
    ts = clicks[C.CLICK_TIMESTAMP].to_numpy()
    snaps = sorted(p.stem for p in (root / "candidates").glob("val_*.parquet"))[::4]
    if not snaps:
        raise SystemExit(f"no val snapshots under {root / 'candidates'}")
    by_window = {}
    for window in args.windows:
        hours = None if window == "null" else float(window)
        ndcg = []
        for name in snaps:
            snap = get_snapshot(root / "split.json", name)
            history = clicks[ts < snap.cutoff_ms]
            target = clicks[(ts >= snap.cutoff_ms) & (ts < snap.end_ms)]
            available = catalogue[catalogue[C.CREATED_AT_TS] < snap.cutoff_ms]
            targets = eval_targets(history, target, available, snap.cutoff_ms)
            users = targets[C.USER_ID].unique()
            index = CandidateIndex.load(root / "indexes" / name)
            peer = CFPeer.fit(history, snap.cutoff_ms, {**cf, "window_hours": hours})
            ranked, _ = cf_peer_lists(peer, users, history[history[C.USER_ID].isin(users)],
                                      available[C.ARTICLE_ID].to_numpy(), index.trending()[[C.ARTICLE_ID, TREND]], 10)
            ndcg.append(per_user_metrics(ranked, targets, 10)["ndcg"].to_numpy())
        by_window[window] = round(float(np.concatenate(ndcg).mean()), 4)
    queries = int(sum(len(x) for x in ndcg))
    out = {"snapshots": snaps, "queries": queries, "ndcg@10_by_window_hours": by_window}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    table = [f"{queries} queries, val snapshots {', '.join(snaps)}.", "", "| window_hours | als ndcg@10 |",
             "|---|---:|"] + [f"| {w} | {v:.4f} |" for w, v in by_window.items()]
    args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
