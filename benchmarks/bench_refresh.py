"""Wall time and peak memory of one hourly serving-index refresh (`newsrec refresh`) on a validated dataset.

Each refresh runs as its own process, exactly the command the hourly DAG's task runs, measured from
outside (wall time, the child's peak resident memory from wait4's rusage). The dataset must be validated
and aggregated already (`dvc repro`, or bench_pipeline.py's work folder).

    .venv/bin/python benchmarks/bench_refresh.py --data-root data [--hours 117 118 119]
    .venv/bin/python benchmarks/bench_refresh.py --data-root /tmp/bench_globo/data --hours 380 381 382

Writes into a scratch index folder (never the live one): params `refresh.index_dir` is overridden.

With --user-store-url, each refresh also writes the version's per-user state to that Redis (what
`serve.user_store_url` does; a key prefix of the run's own), and the figures add what that costs: the Redis
server's memory before and after (`used_memory`, so use a Redis nothing else writes to meanwhile), the
version's bytes per user (`MEMORY USAGE` over a sample of user keys, key overhead included), and the packed
payload. `--json-out` appends the rows; `--markdown` rewrites a table of them (docs, tools/render_docs.py).

    .venv/bin/python benchmarks/bench_refresh.py --data-root DIR --hours 383 --user-store-url redis://127.0.0.1:6379/14

With --publish-uri (params `refresh.publish_uri`: s3://bucket/prefix, or a folder), each refresh also mirrors
its version there, and the figures add what an API replica on another machine then pays: copying that
version to a local folder of its own (`serving_index.fetch`; without the per-user files when a user store is
given), its wall time and megabytes. The mirror's own cost is the refresh's wall time against a run without it.

    AWS_ENDPOINT_URL_S3=http://127.0.0.1:5055 .venv/bin/python benchmarks/bench_refresh.py --data-root DIR \
        --publish-uri s3://bench-index/serving_index --json-out R.jsonl --markdown R.md --table mirror
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--hours", type=int, nargs="+", help="landed hours to refresh after (default: the last 3)")
    parser.add_argument("--user-store-url", help="also materialise each version's users in this Redis")
    parser.add_argument("--publish-uri", help="also mirror each version there and time a replica's copy of it")
    parser.add_argument("--label", default="")
    parser.add_argument("--json-out", type=Path, help="append the rows (JSON lines) here")
    parser.add_argument("--markdown", type=Path, help="rewrite this file as a table of the --json-out rows")
    parser.add_argument("--table", choices=["user-store", "mirror"], default="user-store",
                        help="which table --markdown writes: the user store's cost, or the mirror's (every row)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from pipelines.lake import landed_hours, validated_dir

    hours = args.hours or landed_hours(validated_dir(args.data_root))[-3:]
    with tempfile.TemporaryDirectory() as tmp:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["refresh"]["index_dir"] = str(Path(tmp) / "index")
        client = None
        if args.user_store_url:
            import redis

            params["serve"]["user_store_url"] = args.user_store_url
            params["serve"]["user_store_prefix"] = f"newsrec-bench:{os.getpid()}:users:"
            client = redis.Redis.from_url(args.user_store_url)
        if args.publish_uri:
            from pipelines import storage

            params["refresh"]["publish_uri"] = args.publish_uri
            if storage.parse(args.publish_uri).is_s3:
                storage.make_buckets([storage.parse(args.publish_uri).bucket])
        params_path = Path(tmp) / "params.yaml"
        params_path.write_text(yaml.safe_dump(params))
        rows = []
        for hour in hours:
            cmd = [sys.executable, "-m", "pipelines.serving_index", "--data-root", str(args.data_root),
                   "--hour", str(hour), "--params", str(params_path)]
            redis_before = client.info("memory")["used_memory"] if client else 0
            started = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - started
            out = proc.stdout.read().strip()
            if os.waitstatus_to_exitcode(status) != 0:
                print(out, file=sys.stderr)
                return 1
            meta = json.loads((Path(tmp) / "index" / f"hour={hour + 1:03d}" / "index.json").read_text())
            size = sum(f.stat().st_size for f in (Path(tmp) / "index" / f"hour={hour + 1:03d}").rglob("*")
                       if f.is_file())
            rows.append({"label": args.label, "hour": hour, "wall_s": round(wall, 2),
                         "peak_rss_mb": round(usage.ru_maxrss / 1024), "pool": meta["pool_size"],
                         "users": meta["users"], "clicks": meta["clicks"], "size_mb": round(size / 2**20, 1)})
            if args.publish_uri:
                rows[-1] |= replica_copy(args.publish_uri, Path(tmp) / "replica", user_side=client is None)
            if client:
                rows[-1] |= redis_cost(client, params["serve"]["user_store_prefix"], meta["user_store"], redis_before)
                rows[-1]["materialise_s"] = materialise_seconds(out)
        if client:
            for key in client.scan_iter(match=f"{params['serve']['user_store_prefix']}*", count=10_000):
                client.unlink(key)
    print(f"{'hour':>5} {'wall s':>7} {'peak MB':>8} {'pool':>7} {'users':>8} {'clicks':>9} {'size MB':>8}")
    for r in rows:
        print(f"{r['hour']:>5} {r['wall_s']:>7} {r['peak_rss_mb']:>8} {r['pool']:>7} {r['users']:>8} "
              f"{r['clicks']:>9} {r['size_mb']:>8}")
    print(json.dumps(rows))
    if args.json_out:
        with args.json_out.open("a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
        if args.markdown:
            args.markdown.write_text((mirror_table if args.table == "mirror" else user_store_table)(args.json_out))
    return 0


def replica_copy(uri: str, local: Path, user_side: bool) -> dict:
    """What a replica on another machine pays to take the mirror's live version: `fetch` into `local`."""
    from pipelines.serving_index import fetch, remote_current

    started = time.perf_counter()
    version = fetch(uri, remote_current(uri), local, user_side=user_side)
    wall = time.perf_counter() - started
    size = sum(f.stat().st_size for f in version.rglob("*") if f.is_file())
    return {"publish_uri": uri, "replica_fetch_s": round(wall, 2), "replica_mb": round(size / 2**20, 1)}


def materialise_seconds(output: str) -> float | None:
    """The user store's share of the refresh, from `newsrec refresh`'s last line."""
    import re

    found = re.search(r"written in ([0-9.]+) s", output)
    return float(found.group(1)) if found else None


def redis_cost(client, prefix: str, stored: dict, before: int, sample: int = 2000) -> dict:
    """What one version's user state costs Redis: the server's memory growth and bytes per user by key."""
    import numpy as np

    namespace = stored["namespace"]
    directory = np.frombuffer(client.get(f"{prefix}{namespace}:dir"), np.int64).reshape(-1, 2)
    rng = np.random.default_rng(0)
    users = directory[rng.choice(len(directory), min(sample, len(directory)), replace=False), 0]
    pipe = client.pipeline(transaction=False)
    for user in users:
        pipe.memory_usage(f"{prefix}{namespace}:u:{int(user)}", samples=0)
    per_user = float(np.mean(pipe.execute()))
    shared = sum(client.memory_usage(f"{prefix}{namespace}:{part}", samples=0) or 0 for part in ("dir", "active", "meta"))
    grown = client.info("memory")["used_memory"] - before
    return {"redis_users": stored["users"], "payload_bytes_per_user": round(stored["payload_bytes"] / stored["users"]),
            "redis_bytes_per_user": round(per_user + shared / stored["users"]),
            "redis_used_memory_growth_mb": round(grown / 2**20), "redis_gb_per_million_users":
            round((per_user + shared / stored["users"]) * 1e6 / 1e9, 2)}


def user_store_table(results: Path) -> str:
    """The rows of `results` that wrote a user store, as a markdown table."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "redis_users" in r]
    header = ("| run | users | clicks | refresh wall s | of it writing Redis s | peak MB | payload B/user "
              "| Redis B/user | Redis growth MB | Redis GB per million users |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['label']} hour {r['hour']} | {r['redis_users']:,} | {r['clicks']:,} | {r['wall_s']} "
              f"| {r['materialise_s']} | {r['peak_rss_mb']:,} | {r['payload_bytes_per_user']:,} "
              f"| {r['redis_bytes_per_user']:,} | {r['redis_used_memory_growth_mb']:,} "
              f"| {r['redis_gb_per_million_users']} |" for r in rows]
    return "\n".join(lines) + "\n"


def mirror_table(results: Path) -> str:
    """Every row of `results` as a markdown table: the refresh with and without the mirror, a replica's copy."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    lines = ["| run | hour | users in | mirror | refresh wall s | peak MB | index MB | replica copy s | replica MB |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['label']} | {r['hour']} | {'Redis' if 'redis_users' in r else 'files'} "
              f"| {r.get('publish_uri', '-')} | {r['wall_s']} | {r['peak_rss_mb']:,} | {r['size_mb']} "
              f"| {r.get('replica_fetch_s', '-')} | {r.get('replica_mb', '-')} |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
