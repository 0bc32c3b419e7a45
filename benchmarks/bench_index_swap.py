"""What one hourly index swap costs a serving worker: load, combine with the ranker, and how long requests stall.

The API's poller thread loads each new serving index (pipelines.serving_index) and combines it with the
model's ranker (`FolderIndexSource.load` + `.combine`) while the event loop serves requests; whatever
of that holds the GIL delays them. This measures, in process and without HTTP, each phase's wall and CPU
time, and the longest gap a 1-ms ticker thread sees while it runs (the stall a request queued then would
wait). CPU time and the ticker's gaps hardly depend on what else the machine runs; wall time does.

    .venv/bin/python benchmarks/bench_index_swap.py --bundle /tmp/bench/demo/models/bundle \\
        --index-root /tmp/bench/globo/serving_index [--repeat 3] [--json-out benchmarks/results/index_swap.jsonl]

Any model bundle whose ranker's features the index provides will do (the ranker is only combined, and a
request for one known user is served from the result to check it works).

`--holder-swaps N` then runs N more swaps the way the API does (`serving.models.ModelHolder` polling the
folder, the model as if registered an hour before the index) and prints the worker's resident memory after
each: VmRSS, its anonymous part (the worker's own) and its file-backed part (memory-mapped index files, whose
pages the workers of one host share).

`--user-store-url URL` (a version published with that user store) reads the index's users from Redis, as a
replica with `serve.user_store_url` does: only the article side is loaded, the model keeps only its ranker,
and each row adds the worker's memory after the swap and after `--requests` recommendations for random known
users (pages of the memory-mapped user files are read as requests touch them).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[1]


class Ticker:
    """A thread that wakes every millisecond and records the longest time it could not run."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            last = now

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def timed(fn):
    """(result, wall s, CPU s of the process, all threads, longest ticker gap ms) of fn()."""
    with Ticker() as ticker:
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return out, wall, cpu, ticker.max_gap * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a serving bundle folder (models/bundle)")
    parser.add_argument("--index-root", type=Path, required=True, help="a folder `newsrec refresh` published to")
    parser.add_argument("--repeat", type=int, default=3, help="swaps to measure (the live version, reloaded)")
    parser.add_argument("--holder-swaps", type=int, default=0, help="then this many swaps through a ModelHolder")
    parser.add_argument("--label", default="")
    parser.add_argument("--user-store-url", help="users from this Redis (serve.user_store_url)")
    parser.add_argument("--user-store-prefix", default="newsrec:users:")
    parser.add_argument("--requests", type=int, default=0, help="recommendations after each swap (memory)")
    parser.add_argument("--markdown", type=Path, help="rewrite this file as a table of the --json-out rows that "
                        "compare user stores (docs, tools/render_docs.py)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from pipelines.bundle import ServingBundle
    from pipelines.user_store import UserStoreConfig
    from serving import recommend as rec
    from serving.index_source import FolderIndexSource
    from serving.models import ServedModel, VersionRef

    store = UserStoreConfig(args.user_store_url, args.user_store_prefix, 3600) if args.user_store_url else None
    bundle = ServingBundle.load(args.bundle)
    if store is None:
        model = ServedModel(ref=VersionRef("bench", "1", "", str(args.bundle)), bundle=rec.prepare(bundle),
                            loaded_at=time.time(), base=bundle)
    else:  # as MlflowBundleSource(own_state=False): the ranker only
        model = ServedModel(ref=VersionRef("bench", "1", "", str(args.bundle)), bundle=None,
                            loaded_at=time.time(), base=bundle.ranker_only())
    del bundle
    source = FolderIndexSource(args.index_root, user_store=store)
    pointer = source.current()
    if pointer is None:
        parser.error(f"no index published in {args.index_root}")
    rows = []
    for i in range(args.repeat):
        index, load_wall, load_cpu, load_gap = timed(lambda: source.load(pointer))
        served, comb_wall, comb_cpu, comb_gap = timed(lambda index=index: source.combine(model, index))
        user = served.bundle.users.listing([served.bundle.users.n_users // 2])[0][0]
        result = rec.recommend(served.bundle, user, [], rec.Context(), served.bundle.cutoff_ms, 10)
        row = {"label": args.label, "swap": i, "index_hour": index.cutoff_hour, "users": index.meta.get("users"),
               "clicks": index.meta.get("clicks"), "load_s": round(load_wall, 3), "load_cpu_s": round(load_cpu, 3),
               "load_max_stall_ms": round(load_gap, 1), "combine_s": round(comb_wall, 3),
               "combine_cpu_s": round(comb_cpu, 3), "combine_max_stall_ms": round(comb_gap, 1),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               "served_items": len(result.article_ids), "user_store": "redis" if store else "files",
               "after_swap": memory_mb()}
        if args.requests:
            import numpy as np

            users = served.bundle.users
            picks = np.random.default_rng(i).choice(users.n_users, args.requests)
            started = time.perf_counter()
            for known, _ in users.listing(picks):
                rec.recommend(served.bundle, known, [], rec.Context(), served.bundle.cutoff_ms, 10)
            row["requests"] = args.requests
            row["requests_s"] = round(time.perf_counter() - started, 2)
            row["after_requests"] = memory_mb()
        rows.append(row)
        print(json.dumps(row), flush=True)
        del index, served
    rows += holder_swaps(args.bundle, args.index_root, args.holder_swaps, args.label)
    if args.json_out:
        with args.json_out.open("a") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")
        if args.markdown:
            args.markdown.write_text(user_store_table(args.json_out))
    return 0


def user_store_table(results: Path) -> str:
    """The rows of `results` measured with --requests, as a markdown table: one worker's memory by user store."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "after_requests" in r]
    header = ("| run | user state | swap | index load s | combine s | RSS after the swap MB (private / file) "
              "| RSS after the requests MB (private / file) | requests | ms per request |")
    lines = [header, "|---|---|---:|---:|---:|---|---|---:|---:|"]
    for r in rows:
        a, b = r["after_swap"], r["after_requests"]
        lines.append(f"| {r['label']} | {r['user_store']} | {r['swap']} | {r['load_s']} | {r['combine_s']} "
                     f"| {a['rss_mb']:,} ({a['anon_mb']:,} / {a['file_mb']:,}) "
                     f"| {b['rss_mb']:,} ({b['anon_mb']:,} / {b['file_mb']:,}) | {r['requests']:,} "
                     f"| {1000 * r['requests_s'] / r['requests']:.1f} |")
    return "\n".join(lines) + "\n"


def memory_mb() -> dict[str, int]:
    """This process's resident memory (MB): total, anonymous, file-backed."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(status[field].split()[0]) // 1024
            for key, field in (("rss_mb", "VmRSS"), ("anon_mb", "RssAnon"), ("file_mb", "RssFile"))}


def holder_swaps(bundle_dir: Path, index_root: Path, n: int, label: str) -> list[dict]:
    """`n` index swaps through a ModelHolder, as the API's poller runs them; resident memory after each."""
    if n <= 0:
        return []
    import dataclasses

    from pipelines.bundle import ServingBundle
    from serving import recommend as rec
    from serving.index_source import FolderIndexSource
    from serving.models import ModelHolder, ServedModel, VersionRef

    class Registered:  # the bundle as champion v1, registered an hour before the index's cutoff
        def resolve(self, alias):
            return VersionRef("bench", "1", "", str(bundle_dir)) if alias == "champion" else None

        def load(self, ref):
            bundle = ServingBundle.load(bundle_dir)
            pointer = FolderIndexSource(index_root).current()
            early = dataclasses.replace(bundle.tables, cutoff_ms=int(pointer["cutoff_ms"]) - 3_600_000)
            bundle = dataclasses.replace(bundle, tables=early)
            return ServedModel(ref=ref, bundle=rec.prepare(bundle), loaded_at=time.time(), base=bundle)

    class EveryPollNew(FolderIndexSource):  # the live version, published again before every poll
        polls = 0

        def current(self):
            EveryPollNew.polls += 1
            return {**super().current(), "poll": EveryPollNew.polls}

    holder = ModelHolder(Registered(), "champion", "challenger", index_source=EveryPollNew(index_root))
    rows = []
    for i in range(n + 1):
        _, wall, cpu, gap = timed(holder.refresh)
        row = {"label": label, "holder_swap": i, "what": "model + index" if i == 0 else "index swap",
               "s": round(wall, 2), "cpu_s": round(cpu, 2), "max_stall_ms": round(gap, 1), **memory_mb(),
               "last_error": holder.last_error}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
