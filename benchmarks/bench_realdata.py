"""The whole offline flow on a real dataset imported unchanged: the evaluation table, and each stage's cost.

Imports the dataset (`newsrec import --format F`), then runs the stages exactly as `dvc repro` would
(validate, split, aggregates, features, learned, candidates, train, evaluate), each as its own process, in a work
folder with its own MLflow registry, and copies the evaluation (both protocols, every baseline) to
`benchmarks/results/<name>/` (eval.json, eval_table.md, stages.json), which docs/evaluation.md embeds.

    .venv/bin/python benchmarks/bench_realdata.py --format mind --in ../shared/realdata/mind-small-subset \\
        --name mind-small-subset --work /tmp/bench/mind

`-S section.key=value` overrides params.yaml for this run only (YAML values), like `dvc exp run -S`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def override(params: dict, assignments: list[str]) -> dict:
    for item in assignments:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        node = params
        for part in path:
            node = node[part]
        if last not in node:
            raise KeyError(f"-S {item}: params.yaml has no key {key}")
        node[last] = yaml.safe_load(value)
    return params


def run(name: str, cmd: list[str], env: dict) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        print(out[-4000:], file=sys.stderr)
        raise SystemExit(f"{name} failed ({proc.returncode})")
    print(f"  {name:<11} {wall:7.1f} s", flush=True)
    return {"stage": name, "wall_s": round(wall, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", required=True, help="importer format (newsrec import --format)")
    parser.add_argument("--in", dest="src", type=Path, required=True, help="the dataset's files, unchanged")
    parser.add_argument("--name", required=True, help="results go to benchmarks/results/<name>/")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (data, models, registry)")
    parser.add_argument("-S", dest="sets", action="append", default=[], help="params override key=value")
    args = parser.parse_args()
    if not args.src.exists():
        raise SystemExit(f"dataset not found: {args.src}")
    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    data = work / "data"
    (data / "quarantine" / "clicks").mkdir(parents=True)
    params = override(yaml.safe_load((ROOT / "params.yaml").read_text()), args.sets)
    # The copy lives in the scratch folder, and params paths are read against their file's folder: anchor them
    # to the checkout (its GX project, drift config); the data and every output are passed to each step.
    params["paths"] = {key: str(ROOT / value) for key, value in params["paths"].items()}
    params_path = work / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "NEWSREC__MLFLOW__TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "NEWSREC__MLFLOW__ARTIFACT_ROOT": str(work / "mlartifacts"), "PYTHONHASHSEED": "0"}
    py = [sys.executable, "-m"]
    d, split, p = str(data), str(data / "split.json"), ["--params", str(params_path)]
    stages = [
        ("import", py + ["pipelines.importers", "--format", args.format, "--in", str(args.src.resolve()),
                         "--out", str(data / "raw"), *p]),
        ("validate", py + ["pipelines.validate", "--data-root", d, "--all", *p]),
        ("split", py + ["pipelines.split", "--data-root", d, "--out", split, *p]),
        ("aggregates", py + ["pipelines.aggregates", "--data-root", d, "--all", *p]),
        ("features", py + ["pipelines.features", "--data-root", d, "--split", split, "--out", f"{d}/features", *p]),
        ("learned", py + ["pipelines.learned", "--data-root", d, "--split", split, "--out",
                          str(work / "models" / "learned"), *p]),
        ("candidates", py + ["pipelines.candidates", "--data-root", d, "--split", split, "--out", f"{d}/candidates",
                             "--index-out", f"{d}/indexes", "--metrics", str(work / "metrics" / "candidates.json"),
                             "--learned", str(work / "models" / "learned"), *p]),
        ("train", py + ["pipelines.train", "--split", split, "--candidates", f"{d}/candidates", "--features",
                        f"{d}/features", "--data-root", d, "--out", str(work / "models" / "ranker"), *p]),
        ("evaluate", py + ["pipelines.evaluate", "--data-root", d, "--split", split, "--candidates",
                           f"{d}/candidates", "--indexes", f"{d}/indexes", "--model", str(work / "models" / "ranker"),
                           "--features", f"{d}/features", "--out", str(work / "metrics"), *p]),
    ]
    print(f"{args.name}: {args.format} from {args.src}")
    timings = [run(name, cmd, env) for name, cmd in stages]
    out = ROOT / "benchmarks" / "results" / args.name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "metrics" / "eval.json", out / "eval.json")
    shutil.copy(work / "metrics" / "eval_table.md", out / "eval_table.md")
    ranker = json.loads((work / "models" / "ranker" / "ranker.json").read_text())
    (out / "stages.json").write_text(json.dumps({"dataset": args.name, "format": args.format,
                                                 "overrides": args.sets, "stages": timings,
                                                 "ranker": {k: v for k, v in ranker.items() if k != "features"
                                                            and k != "train_snapshots"}}, indent=2) + "\n")
    print((out / "eval_table.md").read_text())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
