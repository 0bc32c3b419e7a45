"""Wall time and peak memory of one hourly serving-index refresh (`newsrec refresh`) on a validated dataset.

Each refresh runs as its own process, exactly the command the hourly DAG's task runs, measured from
outside (wall time, the child's peak resident memory from wait4's rusage). The dataset must be validated
and aggregated already (`dvc repro`, or bench_pipeline.py's work folder).

    .venv/bin/python benchmarks/bench_refresh.py --data-root data [--hours 117 118 119]
    .venv/bin/python benchmarks/bench_refresh.py --data-root /tmp/bench_globo/data --hours 380 381 382

Writes into a scratch index folder (never the live one): params `refresh.index_dir` is overridden.
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
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from pipelines.lake import landed_hours, validated_dir

    hours = args.hours or landed_hours(validated_dir(args.data_root))[-3:]
    with tempfile.TemporaryDirectory() as tmp:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["refresh"]["index_dir"] = str(Path(tmp) / "index")
        params_path = Path(tmp) / "params.yaml"
        params_path.write_text(yaml.safe_dump(params))
        rows = []
        for hour in hours:
            cmd = [sys.executable, "-m", "pipelines.serving_index", "--data-root", str(args.data_root),
                   "--hour", str(hour), "--params", str(params_path)]
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
            rows.append({"hour": hour, "wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
                         "pool": meta["pool_size"], "users": meta["users"], "clicks": meta["clicks"],
                         "size_mb": round(size / 2**20, 1)})
    print(f"{'hour':>5} {'wall s':>7} {'peak MB':>8} {'pool':>7} {'users':>8} {'clicks':>9} {'size MB':>8}")
    for r in rows:
        print(f"{r['hour']:>5} {r['wall_s']:>7} {r['peak_rss_mb']:>8} {r['pool']:>7} {r['users']:>8} "
              f"{r['clicks']:>9} {r['size_mb']:>8}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
