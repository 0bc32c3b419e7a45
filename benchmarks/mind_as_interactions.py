"""A bare interactions log from real behaviour: MIND's timed clicks as `user,item,timestamp`, nothing else.

What a team's own click log often is: who read what and when, no categories, no text, no sessions, no
impressions. MIND's impressions carry the only timed clicks (its history lists have no times), so each
clicked article of an impression becomes one row at the impression's time; history lists, unclicked
articles and news.tsv are left out. `newsrec import --format interactions` then has to derive everything
else (sessions by gap, publication = first click, embeddings from co-reads alone):

    .venv/bin/python benchmarks/mind_as_interactions.py --in ../shared/realdata/mind-small-subset \\
        --out /tmp/bench/mind-interactions.csv
    .venv/bin/python benchmarks/bench_realdata.py --format interactions --in /tmp/bench/mind-interactions.csv \\
        --name mind-bare-interactions --work /tmp/bench/mind-bare
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def timed_clicks(behaviors: Path) -> pd.DataFrame:
    """user, item, timestamp (ISO 8601, UTC as MIND gives it) of every clicked article of every impression."""
    frame = pd.read_csv(behaviors, sep="\t", header=None, usecols=[1, 2, 4], names=["user", "time", "impressions"],
                        dtype=str, keep_default_na=False)
    shown = frame.assign(shown=frame["impressions"].str.split()).explode("shown").dropna(subset=["shown"])
    parts = shown["shown"].str.rsplit("-", n=1, expand=True)
    item, clicked = parts[0], parts[1].fillna("")
    if not clicked.isin(["0", "1"]).all():
        bad = shown.loc[~clicked.isin(["0", "1"]), "shown"].iloc[0]
        raise SystemExit(f"{behaviors}: an impression entry {bad!r} is not <news id>-<0|1>")
    out = shown.assign(item=item)[clicked == "1"]
    stamp = pd.to_datetime(out["time"], format="%m/%d/%Y %I:%M:%S %p")
    return pd.DataFrame({"user": out["user"].to_numpy(), "item": out["item"].to_numpy(),
                         "timestamp": stamp.dt.strftime("%Y-%m-%dT%H:%M:%S").to_numpy()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in", dest="src", type=Path, required=True, help="the MIND folder (behaviors.tsv)")
    parser.add_argument("--out", type=Path, required=True, help="the CSV to write")
    args = parser.parse_args(argv)
    behaviors = args.src / "behaviors.tsv"
    if not behaviors.exists():
        raise SystemExit(f"no behaviors.tsv in {args.src}")
    rows = timed_clicks(behaviors)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(args.out, index=False)
    print(f"{len(rows):,} clicks of {rows['user'].nunique():,} users on {rows['item'].nunique():,} articles "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
