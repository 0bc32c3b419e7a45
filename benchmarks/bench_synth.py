"""Time and peak memory of `newsrec synth` per profile and of `newsrec stats` on its output.

Each command runs in its own process (as the CLI/DVC stage runs it); peak memory is that process's
max RSS from wait4. Prints a table, then the same rows as JSON.

    .venv/bin/python benchmarks/bench_synth.py [--profiles tiny demo globo] [--seed 42] [--zip]
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

ROOT = Path(__file__).resolve().parents[1]


def run_measured(args: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of `python -m pipelines.cli <args>` in a child process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"newsrec {' '.join(args)} failed ({proc.returncode}): {err.read()[-2000:]}")
        return seconds, usage.ru_maxrss / 1024, out.read()  # ru_maxrss is in KiB on Linux


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", nargs="+", default=["tiny", "demo"], help="profiles to time (globo: ~1 min, ~1 GB)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--zip", action="store_true", help="also time stats on a clicks.zip copy")
    ap.add_argument("--workdir", help="where to write the datasets (default: a temp folder, removed after)")
    args = ap.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for profile in args.profiles:
            out = Path(tmp) / profile
            s, mb, text = run_measured(["synth", "--profile", profile, "--seed", str(args.seed), "--out", str(out)])
            summary = json.loads(text)
            rows.append({"step": "synth", "profile": profile, "seconds": round(s, 1), "peak_mb": round(mb),
                         "clicks": summary["clicks"], "output_mb": round(folder_mb(out))})
            s, mb, text = run_measured(["stats", str(out)])
            stats = json.loads(text)
            rows.append({"step": "stats", "profile": profile, "seconds": round(s, 1), "peak_mb": round(mb),
                         "clicks": stats["counts"]["clicks"], "output_mb": None})
            if args.zip:
                zout = Path(tmp) / f"{profile}-zip"
                run_measured(["synth", "--profile", profile, "--seed", str(args.seed), "--out", str(zout), "--zip"])
                s, mb, _ = run_measured(["stats", str(zout)])
                rows.append({"step": "stats(zip)", "profile": profile, "seconds": round(s, 1), "peak_mb": round(mb),
                             "clicks": stats["counts"]["clicks"], "output_mb": round(folder_mb(zout))})
            for p in out.rglob("*"):
                if p.is_file():
                    p.unlink()

    print(f"{'step':<11}{'profile':<8}{'seconds':>9}{'peak MB':>9}{'clicks':>11}{'files MB':>10}")
    for r in rows:
        files = "" if r["output_mb"] is None else r["output_mb"]
        print(f"{r['step']:<11}{r['profile']:<8}{r['seconds']:>9}{r['peak_mb']:>9}{r['clicks']:>11,}{files:>10}")
    print(json.dumps({"cpus": os.cpu_count(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
