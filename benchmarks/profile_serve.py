"""Where one recommendation spends its time: `serving.recommend.recommend` in process, no HTTP.

Loads a serving bundle folder (what `newsrec register` writes to models/bundle), times recommend() for
a sample of known and unknown users, then prints a pyinstrument profile of the same calls.

    .venv/bin/python benchmarks/profile_serve.py --bundle /tmp/bench/demo/models/bundle
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="serving bundle folder")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--cold-share", type=float, default=0.1)
    parser.add_argument("--online-clicks", type=int, default=0, help="clicks received online per user")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--lightgbm", action="store_true", help="score with LightGBM, not the compiled ranker")
    args = parser.parse_args(argv)

    from pipelines.bundle import ServingBundle
    from serving.recommend import Context, prepare, recommend
    from serving.state import Click

    t = time.perf_counter()
    prepared = prepare(ServingBundle.load(args.bundle), compile_ranker=not args.lightgbm)
    load_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    users = rng.choice([u for u, _ in prepared.users.listing(range(prepared.users.n_users))], args.requests)
    cold = rng.random(args.requests) < args.cold_share
    users = np.where(cold, 10**12 + np.arange(args.requests), users)
    pool = prepared.bundle.index.pool["article_id"].to_numpy()
    recent = [[Click(int(a), prepared.cutoff_ms - 1000 * j) for j, a in enumerate(rng.choice(pool, args.online_clicks))]
              for _ in range(args.requests)]

    def run() -> np.ndarray:
        times = np.empty(args.requests)
        for i, user in enumerate(users):
            s = time.perf_counter()
            recommend(prepared, int(user), recent[i], Context(), prepared.cutoff_ms, args.k)
            times[i] = time.perf_counter() - s
        return times * 1000

    run()  # warm caches (faiss index, lazy imports)
    times = run()
    print(f"bundle {args.bundle}: loaded and prepared in {load_s:.1f} s; {prepared.users.n_users:,} users with "
          f"history, pool {len(pool):,} articles, scored by {prepared.bundle.ranker.predictor}")
    print(f"recommend() x{args.requests} (cold share {args.cold_share}, {args.online_clicks} online clicks): "
          f"mean {times.mean():.2f} ms, p50 {np.percentile(times, 50):.2f}, p95 {np.percentile(times, 95):.2f}, "
          f"p99 {np.percentile(times, 99):.2f} ms")
    if not args.no_profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
        run()
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
