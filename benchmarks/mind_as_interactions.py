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

from pipelines.errors import NewsrecError
from pipelines.importers import MindSource, read_mind


def timed_clicks(source: MindSource) -> pd.DataFrame:
    """user, item, timestamp (ISO 8601 without a zone, as MIND gives it; the importer reads it as UTC) of every
    clicked article of every impression, in the file's order."""
    b = source.behaviors
    shown = b[["user", "time"]].assign(entry=b.impressions.str.split()).explode("entry")
    clicked = shown[shown.entry.str.endswith("-1")]  # read_mind checked every entry is N<digits>-0 or -1
    return pd.DataFrame({"user": clicked.user.to_numpy(), "item": clicked.entry.str[:-2].to_numpy(),
                         "timestamp": clicked.time.dt.strftime("%Y-%m-%dT%H:%M:%S").to_numpy()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in", dest="src", type=Path, required=True, help="the MIND folder (behaviors.tsv, news.tsv)")
    parser.add_argument("--out", type=Path, required=True, help="the CSV to write")
    args = parser.parse_args(argv)
    try:
        source = read_mind(args.src)  # the importer's reader: the same checks, errors naming the file's line
    except NewsrecError as exc:
        raise SystemExit(str(exc)) from None
    rows = timed_clicks(source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(args.out, index=False)
    print(f"{len(rows):,} clicks of {rows['user'].nunique():,} users on {rows['item'].nunique():,} articles "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
