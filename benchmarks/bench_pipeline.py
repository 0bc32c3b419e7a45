"""Wall time and peak memory of each offline stage after validation, at demo or globo scale.

Every stage runs as its own process, exactly the command DVC runs, and is measured from outside:
wall time, and the child's peak resident memory from wait4's rusage. The dataset is made first
(`newsrec synth` + `newsrec validate`, timed as preparation) unless --reuse finds it already validated.

    .venv/bin/python benchmarks/bench_pipeline.py --profile demo --work /tmp/bench_demo
    .venv/bin/python benchmarks/bench_pipeline.py --profile globo --work /tmp/bench_globo [--hours 100]

Prints one table and writes <work>/bench_pipeline.json. The trained ranker is written to <work>/models
without MLflow logging, so the figures are the stages' own; register logs into <work>/mlflow.db.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _cmd(module: str, *args: str) -> list[str]:
    # `python -m` and not the `newsrec` entry point, so a stage is timed even before its CLI line exists.
    return [PY, "-m", f"pipelines.{module}", *args]


def stages(root: Path, work: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of each stage after validation, in flow order (the dvc.yaml commands)."""
    d, split = str(root), str(root / "split.json")
    return [
        ("split", _cmd("split", "--data-root", d, "--out", split)),
        ("aggregates", _cmd("aggregates", "--data-root", d, "--all")),
        ("learned", _cmd("learned", "--data-root", d, "--split", split, "--out", str(work / "models" / "learned"))),
        ("features", _cmd("features", "--data-root", d, "--split", split, "--out", str(root / "features"))),
        ("candidates", _cmd("candidates", "--data-root", d, "--split", split, "--learned", str(work / "models" / "learned"),
                            "--out", str(root / "candidates"),
                            "--index-out", str(root / "indexes"), "--metrics", str(work / "metrics" / "candidates.json"))),
        ("train", _cmd("train", "--split", split, "--candidates", str(root / "candidates"), "--features",
                       str(root / "features"), "--data-root", str(root), "--out", str(work / "models" / "ranker"),
                       "--no-mlflow")),
        ("evaluate", _cmd("evaluate", "--data-root", d, "--split", split, "--candidates", str(root / "candidates"),
                          "--indexes", str(root / "indexes"), "--model", str(work / "models" / "ranker"), "--features",
                          str(root / "features"), "--out", str(work / "metrics"))),
        # Into a registry under <work> (see main): bundle at the serve cutoff, MLflow logging, promotion gate.
        ("register", _cmd("registry", "--data-root", d, "--split", split, "--ranker", str(work / "models" / "ranker"),
                          "--features", str(root / "features"), "--indexes", str(root / "indexes"),
                          "--eval", str(work / "metrics" / "eval.json"), "--eval-table",
                          str(work / "metrics" / "eval_table.md"), "--bundle-out", str(work / "bundle"),
                          "--out", str(work / "registered.json"))),
    ]


def measure(name: str, argv: list[str], log_dir: Path) -> dict:
    """Run one stage to completion; its wall seconds and peak RSS in MiB. A failing stage stops the run."""
    log = log_dir / f"{name}.log"
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"stage {name} failed ({proc.returncode}); log {log}:\n{tail}")
    return {"stage": name, "wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=["tiny", "demo", "globo"], default="demo")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (data root is <work>/data)")
    ap.add_argument("--hours", type=int, help="hourly files to synthesise (default: the profile's)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--reuse", action="store_true", help="keep an already validated <work>/data")
    ap.add_argument("--only", nargs="*", help="run only these stages (their inputs must exist)")
    ap.add_argument("--record", action="store_true",
                    help="also write the table to benchmarks/results/pipeline_<profile>.md (docs include it)")
    args = ap.parse_args()

    work = args.work.resolve()
    root = work / "data"
    # Params overridden for this run (NEWSREC__SECTION__KEY, pipelines/config.py): each stage's row keeps them, so a
    # table never passes a cheaper setting off as the default flow's.
    overrides = {k: v for k, v in sorted(os.environ.items()) if k.startswith("NEWSREC__")}
    # The register stage writes to a throwaway registry, never to the project's mlflow.db.
    os.environ["NEWSREC__MLFLOW__TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["NEWSREC__MLFLOW__ARTIFACT_ROOT"] = str(work / "mlartifacts")
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (work / "metrics").mkdir(exist_ok=True)
    rows = []
    if not (args.reuse and (root / "validated" / "clicks").is_dir()):
        synth = _cmd("synth", "--profile", args.profile, "--seed", str(args.seed), "--out", str(root / "raw"))
        if args.hours:
            synth += ["--hours", str(args.hours)]
        rows.append({**measure("synth", synth, logs), "prep": True})
        rows.append({**measure("validate", _cmd("validate", "--data-root", str(root), "--all"), logs), "prep": True})
    for name, argv in stages(root, work):
        if args.only and name not in args.only:
            continue
        rows.append({**measure(name, argv, logs), "overrides": overrides})
        print(f"{name:<11} {rows[-1]['wall_s']:>8.1f} s {rows[-1]['peak_rss_mib']:>9.1f} MiB", file=sys.stderr)

    import duckdb

    glob = str(root / "validated" / "clicks" / "*" / "*.parquet")
    clicks = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0][0]
    if args.reuse and (work / "bench_pipeline.json").exists():
        # Stages not run this time keep their figures from the last run on this data (--only reruns a few).
        ran = {r["stage"] for r in rows}
        earlier = [r for r in json.loads((work / "bench_pipeline.json").read_text())["stages"] if r["stage"] not in ran]
        order = ["synth", "validate"] + [name for name, _ in stages(root, work)]
        rows = sorted(earlier + rows, key=lambda r: order.index(r["stage"]))
    from machine_speed import reference_ms

    # The shared machine's speed drifts by 3x from day to day: the walls are read against this figure.
    summary = {"profile": args.profile, "hours": args.hours, "clicks": int(clicks), "cpus": os.cpu_count(),
               "machine_reference_ms": reference_ms(), "stages": rows}
    (work / "bench_pipeline.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown(summary)
    print(table)
    if args.record:
        out = ROOT / "benchmarks" / "results" / f"pipeline_{args.profile}.md"
        out.write_text(table + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


def markdown(summary: dict) -> str:
    """The run as a markdown table: each stage, then the flow from validate to register (synth is the data's
    making, not the flow's)."""
    rows = summary["stages"]
    flow = [r for r in rows if r["stage"] != "synth"]
    speed = (f" (`benchmarks/machine_speed.py` {summary['machine_reference_ms']} ms after the run; lower is faster)"
             if summary.get("machine_reference_ms") else "")
    lines = [(f"{summary['profile']} profile: {summary['clicks']:,} validated clicks, {summary['cpus']} CPUs{speed}, "
             f"{time.strftime('%Y-%m-%d')}; every stage its own process, as DVC runs it."), "",
             "| stage | wall s | peak RSS MiB |", "|---|---:|---:|"]
    lines += [f"| {r['stage']}{' (data)' if r['stage'] == 'synth' else ''} | {r['wall_s']:.1f} | "
              f"{r['peak_rss_mib']:.0f} |" for r in rows]
    if {r["stage"] for r in flow} >= {"validate", "register"}:
        lines.append(f"| **flow, validate to register** | **{sum(r['wall_s'] for r in flow):.1f}** "
                     f"({sum(r['wall_s'] for r in flow) / 60:.1f} min) | **{max(r['peak_rss_mib'] for r in flow):.0f}** |")
    changed = [(r["stage"], r["overrides"]) for r in rows if r.get("overrides")]
    if changed:
        lines += ["", "Run with params other than params.yaml's: " + "; ".join(
            f"{stage} {', '.join(f'{k}={v}' for k, v in o.items())}" for stage, o in changed) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
