"""Where one recommendation spends its time: `serving.recommend.recommend` in process, no HTTP.

Loads a serving bundle folder (what `newsrec register` writes to models/bundle), times recommend() for
a sample of known and unknown users, then prints a pyinstrument profile of the same calls.

    .venv/bin/python benchmarks/profile_serve.py --bundle /tmp/bench/demo/models/bundle

`--index-root DIR` serves the bundle's ranker over the live hourly index published there (as the API does),
and `--user-store-url URL` reads its users from Redis (a version published with that user store), so the
two user stores can be timed side by side: `--compare` runs both, interleaved, `--rounds` times each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from machine_speed import reference_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="serving bundle folder")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--cold-share", type=float, default=0.1)
    parser.add_argument("--online-clicks", type=int, default=0, help="clicks received online per user")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--lightgbm", action="store_true", help="score with LightGBM, not the compiled ranker")
    parser.add_argument("--index-root", type=Path, help="serve over the live index published here")
    parser.add_argument("--user-store-url", help="with --index-root: its users from this Redis")
    parser.add_argument("--user-store-prefix", default="newsrec:users:")
    parser.add_argument("--compare", action="store_true", help="time the index files and Redis, interleaved")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args)

    from pipelines.bundle import ServingBundle
    from serving.recommend import Context, prepare, recommend
    from serving.state import Click

    t = time.perf_counter()
    if args.index_root:
        from pipelines.user_store import UserStoreConfig

        store = UserStoreConfig(args.user_store_url, args.user_store_prefix, 3600) if args.user_store_url else None
        prepared = served_over_index(args.bundle, args.index_root, store, not args.lightgbm)
    else:
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
    print(reference_line())
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


def served_over_index(bundle_dir: Path, index_root: Path, user_store, compile_ranker: bool):
    """The bundle's ranker over the live index at `index_root` (users from `user_store`, None: the files)."""
    from pipelines.bundle import ServingBundle
    from serving.index_source import FolderIndexSource
    from serving.models import VersionRef
    from serving.registry_source import ServedModel

    bundle = ServingBundle.load(bundle_dir)
    model = ServedModel(ref=VersionRef("bench", "1", "", str(bundle_dir)), bundle=None, loaded_at=0,
                        base=bundle.ranker_only())
    source = FolderIndexSource(index_root, compile_ranker, user_store)
    return source.combine(model, source.load(source.current())).bundle


def compare(args) -> int:
    """recommend() for the same requests over the index files and over Redis, in alternating rounds."""
    from pipelines.user_store import UserStoreConfig
    from serving.recommend import Context, recommend

    store = UserStoreConfig(args.user_store_url, args.user_store_prefix, 3600)
    served = {name: served_over_index(args.bundle, args.index_root, cfg, not args.lightgbm)
              for name, cfg in (("files", None), ("redis", store))}
    users_store = served["files"].users
    rng = np.random.default_rng(0)
    known = [u for u, _ in users_store.listing(rng.choice(users_store.n_users, args.requests))]
    cold = rng.random(args.requests) < args.cold_share
    users = [10**12 + i if c else u for i, (u, c) in enumerate(zip(known, cold, strict=True))]
    times = {name: [] for name in served}
    for _ in range(args.rounds):
        for name, prepared in served.items():
            for user in users:
                started = time.perf_counter()
                recommend(prepared, int(user), [], Context(), prepared.cutoff_ms, args.k)
                times[name].append(time.perf_counter() - started)
    print(reference_line())
    for name, values in times.items():
        ms = np.array(values[len(users):]) * 1000  # the first round warms caches
        print(f"{name:<6} recommend() x{len(ms)}: mean {ms.mean():.2f} ms, p50 {np.percentile(ms, 50):.2f}, "
              f"p95 {np.percentile(ms, 95):.2f}, p99 {np.percentile(ms, 99):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
