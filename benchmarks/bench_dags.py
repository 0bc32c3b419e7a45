"""Wall time of one run of each Airflow DAG (`dag.test()`, tasks in this process) on a synthetic profile.

    .venv/bin/python benchmarks/bench_dags.py --profile demo [--hour 60] [--work /tmp/bench_dags]

Builds `<work>/data` (synth, validate every hour, aggregates: what a backfill of clicks_hourly leaves),
then times clicks_hourly for one hour (re-validating and re-aggregating it), train_ranker, and
drift_monitor, and prints each run's wall time and its tasks' durations. Airflow runs against a fresh
SQLite home under `<work>` configured by config/airflow.cfg, as `make airflow` does.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_data(work: Path, profile_name: str) -> Path:
    from pipelines.aggregates import aggregate_all
    from pipelines.config import load_params
    from pipelines.synth import Profile, synthesize
    from pipelines.validate import Settings, quiet_gx, validate_all

    params = ROOT / "params.yaml"
    epoch_ms = int(load_params("data", params)["epoch_ms"])
    root = work / "data"
    synth = load_params("synth", params)
    t = time.perf_counter()
    synthesize(root / "raw", Profile.from_params(synth, profile_name), seed=int(synth["seed"]), epoch_ms=epoch_ms)
    quiet_gx()
    results = validate_all(root, epoch_ms=epoch_ms, settings=Settings.from_params(load_params("validate", params)),
                           gx_dir=ROOT / "great_expectations", docs=False)
    aggregate_all(root, epoch_ms, int(load_params("aggregates", params)["coclick_max_distance"]))
    landed = sum(r.status == "landed" for r in results)
    print(f"data: {profile_name}, {landed}/{len(results)} hours landed, built in {time.perf_counter() - t:.0f} s")
    return root


def smtp_sink() -> tuple[object, int, list]:
    """A loopback SMTP server (aiosmtpd) that keeps what drift_monitor and clicks_hourly send."""
    import socket

    from aiosmtpd.controller import Controller

    received: list = []

    class Keep:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope.content)
            return "250 OK"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    return controller, port, received


def write_params(work: Path, root: Path, smtp_port: int) -> Path:
    import yaml

    from pipelines.config import load_params

    params = load_params(path=ROOT / "params.yaml")
    params["paths"]["data"] = str(root)
    params["alerts"].update(smtp_host="127.0.0.1", smtp_port=smtp_port, airflow_conn_id=None)
    params["paths"]["gx"] = str(ROOT / "great_expectations")
    params["paths"].update(drift_config=str(ROOT / "monitoring" / "drift.yaml"), drift_reports=str(work / "reports"))
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def timed_run(dag, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    run = dag.test(**kwargs)
    return time.perf_counter() - t, run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo", choices=["tiny", "demo", "globo"])
    ap.add_argument("--hour", type=int, default=60, help="the hour clicks_hourly re-runs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_dags"))
    ap.add_argument("--reuse", action="store_true", help="keep <work>/data from an earlier run")
    args = ap.parse_args()

    work = args.work.resolve()
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    home = work / "airflow_home"
    shutil.rmtree(home, ignore_errors=True)
    # Airflow reads its configuration when first imported: everything it needs goes into the env first.
    os.environ.update(AIRFLOW_HOME=str(home), AIRFLOW_CONFIG=str(ROOT / "config" / "airflow.cfg"),
                      NEWSREC_HOME=str(ROOT), AIRFLOW__API_AUTH__JWT_SECRET="bench-only",
                      AIRFLOW__API__SECRET_KEY="bench-only")
    root = work / "data" if args.reuse and (work / "data" / "validated").is_dir() else build_data(work, args.profile)
    controller, port, received = smtp_sink()
    os.environ["NEWSREC_PARAMS"] = str(write_params(work, root, port))

    from airflow.models.dagbag import DagBag
    from airflow.utils.db import initdb

    from pipelines import flows
    from pipelines.config import load_params

    initdb()
    bag = DagBag(dag_folder=str(ROOT / "dags"), include_examples=False)
    if bag.import_errors:
        print(bag.import_errors, file=sys.stderr)
        return 1
    epoch_ms = int(load_params("data", os.environ["NEWSREC_PARAMS"])["epoch_ms"])
    runs = [
        (f"clicks_hourly (hour {args.hour})", bag.dags["clicks_hourly"],
         {"logical_date": flows.hour_start(args.hour, epoch_ms)}),
        ("train_ranker", bag.dags["train_ranker"], {}),
        ("drift_monitor", bag.dags["drift_monitor"], {}),
    ]
    rows = []
    for name, dag, kwargs in runs:
        seconds, run = timed_run(dag, **kwargs)
        tasks = sorted(run.get_task_instances(), key=lambda ti: ti.start_date or ti.end_date)
        rows.append((name, seconds, str(run.state), [(ti.task_id, ti.duration, str(ti.state)) for ti in tasks]))

    print(f"\n{'run':<28} {'wall s':>7}  state")
    for name, seconds, state, tasks in rows:
        print(f"{name:<28} {seconds:7.1f}  {state}")
        for task_id, duration, state in tasks:
            print(f"    {task_id:<24} {duration or 0:7.1f}  {state}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"alert emails received: {len(received)}")
    controller.stop()
    return 0 if all(state == "success" for _, _, state, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
