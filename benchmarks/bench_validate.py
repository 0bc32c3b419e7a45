"""Time and peak memory of `newsrec validate`: one hour, and every hour in one process.

Each measurement runs in a fresh Python process, so its peak RSS and its start-up (GX import, context,
metadata suite) are its own. Validation writes into a scratch data root whose raw/ hard-links the dataset's
files, so the dataset itself is never changed. Without --data-root the synthetic profile is written
once under --cache and reused. Prints one line per measurement and a JSON summary.

    .venv/bin/python benchmarks/bench_validate.py --profile demo
    .venv/bin/python benchmarks/bench_validate.py --profile globo [--hours 100]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float:
    """This process's peak RSS. Not getrusage: Linux carries ru_maxrss across exec, so a child started by a
    parent that had just synthesised globo would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def ensure_dataset(profile: str, cache: Path, hours: int | None) -> Path:
    """A data root holding the profile's raw files (written once, then reused)."""
    from pipelines.config import load_params
    from pipelines.synth import Profile, synthesize

    root = cache / (profile if hours is None else f"{profile}-{hours}h")
    if (root / "raw" / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    params = ROOT / "params.yaml"
    synthesize(root / "raw", Profile.from_params(load_params("synth", params), profile),
               seed=load_params("synth", params)["seed"], epoch_ms=load_params("data", params)["epoch_ms"],
               hours=hours)
    (root / "raw" / ".complete").touch()
    print(f"synth {profile}: {time.perf_counter() - t:.1f} s -> {root}", file=sys.stderr)
    return root


def scratch_root(dataset: Path, into: Path) -> Path:
    """A data root whose raw/ files are links to `dataset`'s: landing and quarantine happen here only."""
    from pipelines import columns as C

    raw = into / "raw"
    (raw / C.CLICKS_DIR).mkdir(parents=True)
    _link(dataset / "raw" / C.METADATA_FILE, raw / C.METADATA_FILE)
    for f in sorted((dataset / "raw" / C.CLICKS_DIR).glob("clicks_hour_*.csv")):
        _link(f, raw / C.CLICKS_DIR / f.name)
    return into


def _link(src: Path, dst: Path) -> None:
    """A hard link (a copy across file systems): validation refuses a symlink out of raw/ unread."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _validator(root: Path):
    from pipelines.config import load_params
    from pipelines.validate import HourValidator, Settings, quiet_gx

    quiet_gx()
    params = ROOT / "params.yaml"
    return HourValidator(root, epoch_ms=load_params("data", params)["epoch_ms"],
                         settings=Settings.from_params(load_params("validate", params)),
                         gx_dir=ROOT / "great_expectations")


def phase_one(root: Path, hour: int) -> dict:
    """Fresh process: start-up, then one hour."""
    t = time.perf_counter()
    v = _validator(root)
    init_s = time.perf_counter() - t
    t = time.perf_counter()
    r = v.validate(hour)
    return {"phase": "one", "hour": hour, "rows": r.rows, "status": r.status, "init_s": init_s,
            "hour_s": time.perf_counter() - t, "peak_rss_mb": _peak_rss_mb()}


def phase_all(root: Path) -> dict:
    """Fresh process: start-up, every hour in order (as validate_all), the summary, then data docs."""
    from pipelines.validate import LANDED, list_hours, update_summary

    t = time.perf_counter()
    v = _validator(root)
    init_s = time.perf_counter() - t
    per_hour, results = [], []
    t_all = time.perf_counter()
    for hour in list_hours(root):
        t = time.perf_counter()
        results.append(v.validate(hour))
        per_hour.append(time.perf_counter() - t)
    update_summary(root, results, v.epoch_ms)
    hours_s = time.perf_counter() - t_all
    t = time.perf_counter()
    v.build_docs()
    docs_s = time.perf_counter() - t
    return {"phase": "all", "hours": len(results), "landed": sum(r.status == LANDED for r in results),
            "rows": sum(r.rows or 0 for r in results), "init_s": init_s, "hours_s": hours_s,
            "hour_mean_s": statistics.mean(per_hour), "hour_p50_s": statistics.median(per_hour),
            "hour_max_s": max(per_hour), "docs_s": docs_s, "peak_rss_mb": _peak_rss_mb()}


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark phase failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="demo", help="synth profile to measure on (default: demo)")
    ap.add_argument("--hours", type=int, help="only the first N hours of the profile")
    ap.add_argument("--data-root", type=Path, help="measure on this dataset instead (its raw/ is only read)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "newsrec-bench")
    ap.add_argument("--phase", choices=["one", "all"], help=argparse.SUPPRESS)
    ap.add_argument("--hour", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.phase == "one":
        print(json.dumps(phase_one(args.data_root, args.hour)))
        return 0
    if args.phase == "all":
        print(json.dumps(phase_all(args.data_root)))
        return 0

    import pandas as pd

    from pipelines import columns as C

    dataset = args.data_root or ensure_dataset(args.profile, args.cache, args.hours)
    files = sorted((dataset / "raw" / C.CLICKS_DIR).glob("clicks_hour_*.csv"))
    sizes = {int(f.stem.rsplit("_", 1)[1]): sum(1 for _ in f.open()) - 1 for f in files}
    busiest = max(sizes, key=sizes.get)
    report = {"dataset": str(dataset), "hours": len(sizes), "clicks": sum(sizes.values()),
              "articles": len(pd.read_csv(dataset / "raw" / C.METADATA_FILE, usecols=[C.ARTICLE_ID]))}
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        one = _child("--phase", "one", "--data-root", str(scratch_root(dataset, Path(tmp) / "one")),
                     "--hour", str(busiest))
        print(f"one hour ({one['rows']:,} rows, the busiest, {one['status']}): start-up {one['init_s']:.1f} s, "
              f"hour {one['hour_s']:.2f} s, peak RSS {one['peak_rss_mb']:.0f} MB")
        every = _child("--phase", "all", "--data-root", str(scratch_root(dataset, Path(tmp) / "all")))
        print(f"all {every['hours']} hours ({every['rows']:,} rows, {every['landed']} landed): start-up "
              f"{every['init_s']:.1f} s, hours {every['hours_s']:.1f} s (mean {every['hour_mean_s']:.2f} s, "
              f"max {every['hour_max_s']:.2f} s), data docs {every['docs_s']:.1f} s, "
              f"peak RSS {every['peak_rss_mb']:.0f} MB")
    print(json.dumps({**report, "one_hour": one, "all_hours": every}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
