"""Wall time and peak memory per process of `newsrec learned`, `newsrec features` and `newsrec train`: one process
vs a Dask cluster.

Each step runs as the command the DVC stage and the Airflow task run, in its own process, measured from
outside (wall time) and inside (its peak resident memory, VmHWM, written when it exits). For the Dask rows a fresh
`distributed.LocalCluster` of 1 or 2 worker processes (`cluster.local_cluster`: the workers' environment as
deployed) is started first and the command is pointed at it with
`NEWSREC__DASK__SCHEDULER` (as a deployment sets it); each worker's peak resident memory is read on the worker
before the cluster closes. Every configuration gets the same cores: the one worker has 2 threads, the two workers
1 thread each; the single process trains with 2 threads. The learned models are fitted with params
`learned.threads` (1) everywhere, as the product runs them: the single process fits them one after another, a
cluster as many at once as it has worker processes (a process fits one at a time). The scheduler runs in this script's process (not counted).

The work folder must hold a dataset through `newsrec features` (benchmarks/champion.sh's steps; `--steps learned`
needs only the split):

    .venv/bin/newsrec synth --profile demo --out DIR/data/raw && .venv/bin/newsrec validate --data-root DIR/data --all
    ... split, aggregates, candidates, features (as champion.sh) ...
    .venv/bin/python benchmarks/bench_dask.py --data-root DIR/data [--steps learned features train] [--out FILE.md]

Features and learned models of every configuration must equal the single process's bit for bit (checked);
training reports the val NDCG@10 of each model and its difference from the single process's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
CORES = 2
STEPS = ("learned", "features", "train")


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: a forked child starts with its
    parent's figure there, so every process this script starts would report at least this script's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# Runs `newsrec ...` and writes its peak memory to $BENCH_PEAK_FILE when it exits.
_WRAPPER = """import atexit, os, sys
sys.path.insert(0, {bench!r})
from bench_dask import _peak_mb
atexit.register(lambda: open(os.environ["BENCH_PEAK_FILE"], "w").write(str(_peak_mb())))
from pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, output) of `newsrec <cmd>`; raises with its output when it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        wrapper = [sys.executable, "-c", _WRAPPER.format(bench=str(Path(__file__).resolve().parent))]
        log = (Path(tmp) / "log").open("w+")
        started = time.perf_counter()
        proc = subprocess.run([*wrapper, *cmd], cwd=ROOT, env={**env, "BENCH_PEAK_FILE": str(peak_file)},
                              stdout=log, stderr=subprocess.STDOUT, check=False)
        wall = time.perf_counter() - started
        log.seek(0)
        output = log.read()
        if proc.returncode != 0:
            raise RuntimeError(f"newsrec {' '.join(cmd)} failed:\n{output}")
        return wall, float(peak_file.read_text()), output


def _measure(step: list[str], workers: int, params: Path) -> dict:
    """One step on one configuration: 0 workers = the single process."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [*step, "--params", str(params)]
    if workers == 0:
        wall, peak, output = _run(cmd, env)
        return {"wall_s": wall, "client_mb": peak, "worker_mb": [], "output": output}
    from distributed import Client

    from pipelines.cluster import local_cluster

    with local_cluster(workers, CORES // workers, silence_logs=50) as cluster, Client(cluster) as client:
        env["NEWSREC__DASK__SCHEDULER"] = cluster.scheduler_address
        wall, peak, output = _run(cmd, env)
        worker_mb = sorted(client.run(_peak_mb).values())
    return {"wall_s": wall, "client_mb": peak, "worker_mb": worker_mb, "output": output}


def _same_features(a: Path, b: Path) -> bool:
    """Every snapshot's user-side tables equal bit for bit (parquet read back, profiles as arrays)."""
    import pandas as pd

    for snap in sorted(p.name for p in a.iterdir()):
        for name in ("users.parquet", "user_categories.parquet", "articles.parquet"):
            if not pd.read_parquet(a / snap / name).equals(pd.read_parquet(b / snap / name)):
                return False
        if not np.array_equal(np.load(a / snap / "profiles.npy"), np.load(b / snap / "profiles.npy")):
            return False
    return True


def _same_files(a: Path, b: Path) -> bool:
    """The same files under both folders, byte for byte."""
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="a data root through `newsrec features`")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="steps to measure")
    parser.add_argument("--workers", nargs="+", type=int, choices=(0, 1, 2), default=[0, 1, 2],
                        help="configurations: 0 = the single process, 1 or 2 Dask workers (results are compared "
                             "with the single process's only when it runs)")
    args = parser.parse_args()
    root = args.data_root.resolve()
    labels = {0: "one process", 1: "Dask, 1 worker", 2: "Dask, 2 workers"}
    configs = [(labels[w], w) for w in sorted(set(args.workers))]
    compared = 0 in args.workers
    rows, ndcg, equal = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["train"]["lgb"]["num_threads"] = CORES
        params_path = tmp / "params.yaml"
        params_path.write_text(yaml.safe_dump(params))
        for label, workers in configs:
            out = tmp / str(workers)
            features = ["features", "--data-root", str(root), "--split", str(root / "split.json"),
                        "--out", str(out / "features")]
            learned = ["learned", "--data-root", str(root), "--split", str(root / "split.json"),
                       "--out", str(out / "learned")]
            # Training reads the dataset's own feature tables, so every configuration trains on the same input.
            train = ["train", "--split", str(root / "split.json"), "--candidates", str(root / "candidates"),
                     "--features", str(root / "features"), "--data-root", str(root), "--out", str(out / "ranker"),
                     "--no-mlflow"]
            for step, cmd in (("learned", learned), ("features", features), ("train", train)):
                if step not in args.steps:
                    continue
                m = _measure(cmd, workers, params_path)
                rows.append((step, label, m))
                print(f"{step:<9} {label:<16} {m['wall_s']:7.1f} s  client {m['client_mb']:6.0f} MB  "
                      f"workers {[round(w) for w in m['worker_mb']]} MB", file=sys.stderr)
            if "train" in args.steps:
                meta = json.loads((out / "ranker" / "ranker.json").read_text())
                ndcg[label] = (meta["val_ndcg_at_10"], meta["best_iteration"])
            if "features" in args.steps and compared:
                equal[("features", label)] = _same_features(tmp / "0" / "features", out / "features")
            if "learned" in args.steps and compared:
                equal[("learned", label)] = _same_files(tmp / "0" / "learned", out / "learned")
    base = ndcg.get("one process", (0.0, 0))[0]
    header = f"| step | configuration ({CORES} cores in all) | wall time | peak RSS, command | peak RSS per worker | result |"
    lines = [header, "|---|---|---|---|---|---|"]
    for step, label, m in rows:
        workers = ", ".join(f"{w:.0f} MB" for w in m["worker_mb"]) or "-"
        if step in ("features", "learned"):
            result = ("equal bit for bit" if equal[(step, label)] else "DIFFERS") if compared else "not compared"
            if step == "learned":  # each daily model's own fit time, where it ran
                fits = re.findall(r"^hour=\d+\s+\d+ examples\s+loss \S+\s+([\d.]+) s$", m["output"], re.MULTILINE)
                result += f"; fits {', '.join(fits)} s"
        else:
            value, best = ndcg[label]
            result = f"val NDCG@10 {value:.4f} ({value - base:+.4f}), {best} trees"
        lines.append(f"| {step} | {label} | {m['wall_s']:.1f} s | {m['client_mb']:.0f} MB | {workers} | {result} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0 if all(equal.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
