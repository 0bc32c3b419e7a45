"""Latency of GET /v1/users/{id}/recommendations under a fixed request rate, with the real champion.

Starts `newsrec serve` on loopback against a registry (its champion is what gets measured), then an
open-loop async load generator sends requests at a fixed rate (default 200/s) for a bounded time and
count. Latency is measured from each request's *scheduled* send time, so a server that falls behind
shows it (no coordinated omission). The warm-up's requests go through the same connections as the measured
ones, so the window does not start by opening `--concurrency` connections at once. Prints throughput and
p50/p95/p99, optionally appends JSON; `--timeline FILE` writes each second's p99 and max (and whether the index
pointer moved in it), to see what a slow tail lines up with.

    benchmarks/champion.sh demo /tmp/bench/demo        # a champion on the demo profile
    .venv/bin/python benchmarks/bench_serve.py --tracking-uri sqlite:////tmp/bench/demo/mlflow.db --label demo

With --index-root (hourly serving indexes newer than the champion, e.g. `HOLD_BACK=4 champion.sh ...`), the
server follows them and, every --swap-every seconds of the measured load, the live pointer moves to the
next version, so the figures include index swaps (load + prepare in the server's poller) under load.

With --user-store-url (and --index-root holding versions `newsrec refresh` published with that user store),
the server reads each user's state from Redis instead of memory-mapping the index's user files. Every run
reports the cold start (`startup_s`: process start until /readyz answers 200, i.e. the registry's model and
the live index loaded, combined and warmed up) and each server process's resident memory after the load
(`memory`: VmRSS, its anonymous part, the worker's own, and its file-backed part, memory-mapped files whose
pages the workers of one host share). `--markdown FILE` rewrites FILE as a table of every run in --json
with a label starting with `--table-prefix` (the table docs/serving.md shows, tools/render_docs.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tracking_uri: str, port: int, workers: int, redis_url: str | None, logdir: Path,
                 state_prefix: str, index_root: Path | None = None, poll_seconds: float = 30.0,
                 user_store_url: str | None = None, user_store_prefix: str | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "NEWSREC__MLFLOW__TRACKING_URI": tracking_uri,
        "NEWSREC__PATHS__IMPRESSION_LOG": str(logdir / "impressions.jsonl"),
        "NEWSREC__PATHS__CLICK_LOG": str(logdir / "clicks.jsonl"),
        "NEWSREC__SERVE__CHALLENGER_SHARE": "0",
        "NEWSREC__SERVE__STATE_PREFIX": state_prefix,  # this run's own online state, whatever Redis holds
        "NEWSREC__SERVE__HOURLY_INDEX": "true" if index_root else "false",
    }
    if index_root:
        env["NEWSREC__REFRESH__INDEX_DIR"] = str(index_root)  # absolute: wins over paths.data
        env["NEWSREC__SERVE__POLL_SECONDS"] = str(poll_seconds)
    if user_store_url:
        env["NEWSREC__SERVE__USER_STORE_URL"] = user_store_url
        if user_store_prefix:
            env["NEWSREC__SERVE__USER_STORE_PREFIX"] = user_store_prefix
    cmd = [str(ROOT / ".venv/bin/newsrec"), "serve", "--port", str(port), "--workers", str(workers),
           "--log-level", "warning"]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    return subprocess.Popen(cmd, cwd=ROOT, env=env)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def process_memory(root_pid: int) -> list[dict]:
    """Resident memory (MB) of `root_pid` and its descendants: total, anonymous (private), file-backed."""
    def status(pid: int) -> dict[str, str]:
        text = Path(f"/proc/{pid}/status").read_text()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(status(int(entry.name))["PPid"].strip()), []).append(int(entry.name))
            except (OSError, KeyError):
                pass
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            st = status(pid)
        except OSError:
            continue
        mb = {k: int(st[f].split()[0]) // 1024 for k, f in (("rss_mb", "VmRSS"), ("anon_mb", "RssAnon"),
                                                              ("file_mb", "RssFile")) if f in st}
        if mb.get("rss_mb", 0) > 50:  # the worker processes, not the supervisor's tiny helpers
            out.append({"pid": pid, **mb})
    return out


def click_recommendations(url: str, users: list[int], clicks: int) -> int:
    """Each user clicks their top recommendation `clicks` times (each click excludes it from the next list)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for user in users:
            for _ in range(clicks):
                top = client.get(f"/v1/users/{user}/recommendations", params={"k": 1}).json()["items"][0]
                client.post("/v1/events", json={"user_id": user, "article_id": top["article_id"]}).raise_for_status()
            recent = client.get(f"/v1/users/{user}/history", params={"n": clicks}).json()["items"]
            if not all(item["online"] for item in recent):
                raise RuntimeError(f"user {user}: the service does not hold the clicks just posted")
    return len(users)


def point_at(index_root: Path, version: Path) -> None:
    """Make `version` the live serving index (what `newsrec refresh` does after building it)."""
    from pipelines.fileio import atomic_write

    meta = json.loads((version / "index.json").read_text())
    pointer = {"cutoff_hour": meta["cutoff_hour"], "cutoff_ms": meta["cutoff_ms"], "path": version.name,
               "format": meta["format"]}
    atomic_write(index_root / "CURRENT.json", lambda p: p.write_text(json.dumps(pointer)))


async def swapper(index_root: Path, every: float, stop: asyncio.Event, moved: list[float]) -> int:
    """Move the live pointer to the next version every `every` seconds until `stop`, appending each move's
    loop time to `moved`; returns the swaps."""
    versions = sorted(index_root.glob("hour=*"))
    loop = asyncio.get_running_loop()
    swaps = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
        except TimeoutError:
            swaps += 1
            point_at(index_root, versions[swaps % len(versions)])
            moved.append(loop.time())
    return swaps


async def open_loop(url: str, paths: list[str], rate: float, duration: float, max_requests: int,
                    concurrency: int, index_root: Path | None = None, swap_every: float = 0.0,
                    timeline: Path | None = None, warmup: float = 0.0) -> dict:
    """Send paths[i % len] at t0 + i/rate until duration or max_requests; latency from scheduled time.

    The first `warmup` seconds of load go through the same connections and are not measured (a measured
    window that began by opening `concurrency` new connections at once would time the generator's ramp, not
    the service's steady state); index swaps start after them.

    `timeline`: also write each second's request count, p99 and max latency there (CSV), and the seconds at
    which the live index pointer moved, to see what a slow tail lines up with.

    aiohttp rather than httpx: the generator shares the machine with the server, and aiohttp spends a
    fraction of httpx's CPU per request. The generator's own CPU time is reported with the result.
    """
    import aiohttp

    n = min(max_requests, int(rate * duration))
    warm = int(rate * warmup)
    latencies = np.full(n, np.nan)
    service = np.full(n, np.nan)
    statuses = np.zeros(n, dtype=np.int32)
    cpu0 = time.process_time()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05 + warm / rate  # the measured window's start

        async def one(i: int) -> None:  # i < 0: a warm-up request
            scheduled = t0 + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = loop.time()
            status = -1
            try:
                async with session.get(paths[i % len(paths)]) as r:
                    await r.read()
                    status = r.status
            except (TimeoutError, aiohttp.ClientError):
                pass
            if i < 0:
                return
            done = loop.time()
            statuses[i] = status
            latencies[i] = done - scheduled
            service[i] = done - sent

        stop = asyncio.Event()
        moved: list[float] = []
        async def swaps_after_warmup() -> int:
            await asyncio.sleep(max(0.0, t0 - loop.time()))
            return await swapper(index_root, swap_every, stop, moved)

        swapping = asyncio.create_task(swaps_after_warmup()) if index_root and swap_every else None
        await asyncio.gather(*(one(i) for i in range(-warm, n)))
        stop.set()
        swaps = await swapping if swapping else 0
        elapsed = loop.time() - t0
    cpu = time.process_time() - cpu0
    ok = statuses == 200
    lat = latencies[ok] * 1000
    svc = service[ok] * 1000
    if timeline is not None:
        write_timeline(timeline, np.arange(n)[ok] / rate, lat, svc, [m - t0 for m in moved])
    return {
        "requests": int(n),
        "ok": int(ok.sum()),
        "errors": int((~ok).sum()),
        "target_rps": rate,
        "achieved_rps": round(float(ok.sum() / elapsed), 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
        "service_p50_ms": round(float(np.percentile(svc, 50)), 2),
        "service_p99_ms": round(float(np.percentile(svc, 99)), 2),
        "generator_cpu_share": round(cpu / (elapsed + warm / rate), 2),  # cores the generator itself kept busy
        "index_swaps": swaps,
    }


def write_timeline(path: Path, offsets: np.ndarray, latency_ms: np.ndarray, service_ms: np.ndarray,
                   moves: list[float]) -> None:
    """One CSV row per second of load: requests scheduled in it, their p99 and max latency and p99 service time
    (ms, from the actual send), and whether the index pointer moved in it."""
    second = offsets.astype(np.int64)
    moved = {int(m) for m in moves}
    rows = ["second,requests,p99_ms,max_ms,service_p99_ms,pointer_moved"]
    for s in np.unique(second):
        lat, svc = latency_ms[second == s], service_ms[second == s]
        rows.append(f"{s},{len(lat)},{np.percentile(lat, 99):.1f},{lat.max():.1f},{np.percentile(svc, 99):.1f},"
                    f"{int(s in moved)}")
    path.write_text("\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True, help="registry whose champion is served")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (open loop)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=2000, help="distinct known users to cycle through")
    parser.add_argument("--cold-share", type=float, default=0.1, help="share of requests for unknown users")
    parser.add_argument("--online-share", type=float, default=0.0,
                        help="share of the known users who click --online-clicks of their recommendations first "
                             "(POST /v1/events), so their requests take the online refit path")
    parser.add_argument("--online-clicks", type=int, default=3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--redis-url", help="serve with user state in Redis (needed for --workers > 1)")
    parser.add_argument("--concurrency", type=int, default=200, help="max open connections of the generator")
    parser.add_argument("--label", default="", help="name of this run in the output (e.g. demo, globo)")
    parser.add_argument("--json", type=Path, help="append the result as one JSON line here")
    parser.add_argument("--index-root", type=Path, help="hourly serving indexes the server follows")
    parser.add_argument("--swap-every", type=float, default=10.0, help="seconds between index swaps (--index-root)")
    parser.add_argument("--poll-seconds", type=float, default=5.0, help="the server's poll interval (--index-root)")
    parser.add_argument("--user-store-url", help="users' state from this Redis (versions published with it)")
    parser.add_argument("--user-store-prefix", help="its key prefix (serve.user_store_prefix by default)")
    parser.add_argument("--timeline", type=Path, help="write each second's p99 and max latency here (CSV)")
    parser.add_argument("--markdown", type=Path, help="rewrite this file as a table of the --json runs")
    parser.add_argument("--table-prefix", default="", help="the runs --markdown shows: labels starting so")
    parser.add_argument("--latency-markdown", type=Path,
                        help="rewrite this file as a latency table of the --json runs (labels from --table-prefix)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from machine_speed import reference_ms

    speed_ms = reference_ms()  # before the server starts: the machine's speed, nothing else of ours running
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as logdir:
        state_prefix = f"newsrec-bench:{os.getpid()}:{port}:"
        if args.index_root:
            point_at(args.index_root, min(args.index_root.glob("hour=*")))
        proc = start_server(args.tracking_uri, port, args.workers, args.redis_url, Path(logdir), state_prefix,
                            args.index_root, args.poll_seconds, args.user_store_url, args.user_store_prefix)
        try:
            ready_s = wait_ready(url, proc, timeout=900)
            known = httpx.get(f"{url}/v1/users", params={"n": min(args.users, 1000), "order": "random"},
                              timeout=60).json()
            ids = [u["user_id"] for u in known]
            online = click_recommendations(url, ids[: int(len(ids) * args.online_share)], args.online_clicks)
            models = httpx.get(f"{url}/v1/models", timeout=60).json()
            rng = np.random.default_rng(0)
            n_paths = 5000
            cold = rng.random(n_paths) < args.cold_share
            users = np.where(cold, 10**12 + np.arange(n_paths), rng.choice(ids, n_paths))
            paths = [f"/v1/users/{int(u)}/recommendations?k={args.k}" for u in users]
            result = asyncio.run(open_loop(url, paths[::-1], args.rate, args.duration, args.max_requests,
                                           args.concurrency, args.index_root, args.swap_every, args.timeline,
                                           args.warmup))
            models_after = httpx.get(f"{url}/v1/models", timeout=60).json()
            memory = process_memory(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            if args.redis_url:
                import redis

                with redis.Redis.from_url(args.redis_url) as r:
                    for key in r.scan_iter(match=f"{state_prefix}*", count=1000):
                        r.delete(key)
    result = {"label": args.label, "model_version": models["champion"]["version"], "workers": args.workers,
              "index_hour_after": (models_after.get("index") or {}).get("cutoff_hour"),
              "cold_share": args.cold_share, "online_users": online, "online_clicks": args.online_clicks, "k": args.k, "startup_s": round(ready_s, 1),
              "user_store": "redis" if args.user_store_url else "files", "memory": memory,
              "machine_reference_ms": speed_ms, **result}
    print(f"{'label':<10}{'rps target':>11}{'rps got':>9}{'ok':>7}{'err':>5}{'p50 ms':>8}{'p95 ms':>8}"
          f"{'p99 ms':>8}{'max ms':>8}")
    print(f"{result['label']:<10}{result['target_rps']:>11.0f}{result['achieved_rps']:>9.1f}{result['ok']:>7}"
          f"{result['errors']:>5}{result['p50_ms']:>8.1f}{result['p95_ms']:>8.1f}{result['p99_ms']:>8.1f}"
          f"{result['max_ms']:>8.1f}")
    print(json.dumps(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as fh:
            fh.write(json.dumps(result) + "\n")
        if args.markdown:
            args.markdown.write_text(user_store_table(args.json, args.table_prefix))
        if args.latency_markdown:
            args.latency_markdown.write_text(latency_table(args.json, args.table_prefix))
    return 0


def labelled_runs(results: Path, prefix: str) -> list[dict]:
    """The runs appended to `results` (--json) whose label starts with `prefix`, in order."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("label", "").startswith(prefix)]


def user_store_table(results: Path, prefix: str) -> str:
    """The runs of `results` labelled `prefix...` as a markdown table: user store, cold start, memory, latency."""
    rows = [r for r in labelled_runs(results, prefix) if r.get("memory")]
    header = ("| run | user state | workers | cold start s | RSS per worker MB | of it private MB "
              "| of it file-backed MB | req/s | p50 ms | p99 ms |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        workers = sorted(r["memory"], key=lambda m: -m["rss_mb"])[: r["workers"]]

        def span(key: str, workers=workers) -> str:
            values = sorted(m.get(key, 0) for m in workers)
            return f"{values[0]}" if values[0] == values[-1] else f"{values[0]}-{values[-1]}"

        lines.append(f"| {r['label'][len(prefix):] or r['label']} | {r['user_store']} | {r['workers']} "
                     f"| {r['startup_s']} | {span('rss_mb')} | {span('anon_mb')} | {span('file_mb')} "
                     f"| {r['achieved_rps']} | {r['p50_ms']} | {r['p99_ms']} |")
    return "\n".join(lines) + "\n"


def latency_table(results: Path, prefix: str) -> str:
    """The runs of `results` labelled `prefix...` as a markdown table: index swaps, the machine's speed, latency."""
    rows = labelled_runs(results, prefix)
    lines = ["| run | measured s | index swaps | machine reference ms | req/s | p50 ms | p95 ms | p99 ms | max ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label'][len(prefix):] or r['label']} | {r['requests'] / r['target_rps']:.0f} "
                     f"| {r['index_swaps']} | {r.get('machine_reference_ms', '')} | {r['achieved_rps']} "
                     f"| {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
