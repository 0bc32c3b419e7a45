"""Time and peak memory of `newsrec import`: MovieLens 100K's size, or the real MIND subset.

movielens: the real files cannot be fetched here, so this writes files of the same shape (943 users, 1682
movies, 100,000 ratings, every user >= 20 ratings, sign-up bursts, seven months of seconds timestamps, 19
genre flags, titles with years), then times the import the CLI runs.
mind: imports the real MIND-small subset in ../shared/realdata (5,000 impressions, 146k clicks, 22.6k
articles) with params.yaml `import`. Prints JSON.

    .venv/bin/python benchmarks/bench_import.py [--ratings 100000] [--hours 168]
    .venv/bin/python benchmarks/bench_import.py --format mind [--in ../shared/realdata/mind-small-subset]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from pipelines import importers
from pipelines.config import load_params

MIND_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "mind-small-subset"


def write_movielens_like(path: Path, n_users: int, n_items: int, n_ratings: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(3000)]
    with (path / "u.item").open("w", encoding="latin-1") as fh:
        for i in range(1, n_items + 1):
            title = " ".join(rng.choice(words, rng.integers(1, 6)))
            year = int(rng.integers(1930, 1998))
            flags = (rng.random(19) < 0.12).astype(int)
            date = f"01-Jan-{year}" if rng.random() > 0.01 else ""
            fh.write("|".join([str(i), f"{title} ({year})", date, "", "http://x", *map(str, flags)]) + "\n")

    # Heavy-tailed activity between MovieLens' floor of 20 and its most active user's 737 ratings.
    weights = rng.pareto(1.3, n_users) + 0.2
    per_user = np.clip((weights * n_ratings / weights.sum()).astype(int), 20, min(737, n_items))
    while (missing := n_ratings - int(per_user.sum())) != 0:
        room = per_user < min(737, n_items) if missing > 0 else per_user > 20
        idx = rng.choice(np.flatnonzero(room), min(abs(missing), int(room.sum())), replace=False)
        per_user[idx] += np.sign(missing)
    t0, span = 874_724_710, 215 * 86_400
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    pop /= pop.sum()
    with (path / "u.data").open("w") as fh:
        for u, n in enumerate(per_user, start=1):
            items = rng.choice(n_items, size=n, replace=False, p=pop) + 1
            start = t0 + rng.integers(0, span)
            # A sign-up burst of 20 ratings seconds apart, then sittings spread over the following weeks.
            gaps = np.where(
                np.arange(len(items)) < 20,
                rng.integers(1, 40, len(items)),
                rng.choice([30, 120, 86_400 * 3], len(items), p=[0.6, 0.3, 0.1]),
            )
            ts = np.minimum(start + np.cumsum(gaps), t0 + span)
            for i, t in zip(items, ts):
                fh.write(f"{u}\t{i}\t{rng.integers(1, 6)}\t{t}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--format", choices=["movielens", "mind"], default="movielens")
    ap.add_argument("--users", type=int, default=943)
    ap.add_argument("--items", type=int, default=1682)
    ap.add_argument("--ratings", type=int, default=100_000)
    ap.add_argument("--hours", type=int, default=load_params("import")["movielens"]["hours"])
    ap.add_argument("--in", dest="in_dir", type=Path, default=MIND_SUBSET, help="mind: the MIND folder")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw"
        params = importers.format_params(load_params("import"), args.format)
        if args.format == "movielens":
            src = Path(tmp) / "ml-100k"
            src.mkdir()
            write_movielens_like(src, args.users, args.items, args.ratings)
            params["hours"] = args.hours
        else:
            src = args.in_dir
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        summary = importers.import_format(args.format, src, out, params, load_params("data")["epoch_ms"])
        seconds = time.perf_counter() - t
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(json.dumps({
        "import_seconds": round(seconds, 2),
        "peak_rss_mib": round(rss / 1024, 1),
        "peak_rss_mib_before_import": round(rss_before / 1024, 1),
        "output_mib": round(size / 2**20, 1),
        **summary,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
