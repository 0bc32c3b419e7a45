"""drift_monitor: Evidently drift of the latest hours against the champion's training window.

windows -> report -> alert_drift (email only when drift is detected)

Runs after every train_ranker run (the `newsrec_ranker` asset), and on params.yaml `schedule.drift_monitor`
when set (a cron, e.g. every 6 h; off by default, and then it starts unpaused). The reference window
is every validated hour before the champion's test window (what it was trained and early-stopped on;
without a champion, the `drift.reference_hours` before the current window); the current window is the
latest `drift.current_hours` validated hours. Input features always; the candidate lists' scores and the
trained ranker's scores of them (train snapshots vs the test snapshot) when the training outputs exist.
Reports land in `<drift.out>/<run id>/` and are kept per run.

Timing: a report takes about a minute, so tasks time out after 20 min and retry once; the alert is tried
once and never decides the run's outcome (without a reachable mail server it is skipped with one log line
saying so; the report is on disk either way); a run that takes over an hour fails, and every failed run is
emailed (`on_failure_callback`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, dag, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from pipelines import flows
from pipelines.alerts import run_failed
from pipelines.config import load_params

PARAMS = load_params(path=flows.params_file())
MODEL = Asset(name=flows.MODEL_ASSET, uri=flows.model_asset_uri(PARAMS))
CRON = flows.scheduled(PARAMS, "drift_monitor")


@dag(
    dag_id="drift_monitor",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(CRON, timezone="UTC"), assets=[MODEL])
    if CRON else [MODEL],
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=None if CRON else False,
    dagrun_timeout=timedelta(hours=1),
    on_failure_callback=run_failed,
    default_args={
        "owner": "newsrec",
        "retries": 1,
        "retry_delay": timedelta(minutes=2),
        "execution_timeout": timedelta(minutes=20),
    },
    tags=["newsrec", "monitoring"],
    doc_md=__doc__,
)
def drift_monitor():
    @task
    def windows() -> dict:
        p = flows.project(flows.params_file())
        return flows.drift_windows(p)

    @task
    def report(windows: dict, run_id=None) -> str:
        p = flows.project(flows.params_file())
        return str(flows.drift_run(p, windows, flows.run_folder(run_id)))

    @task(retries=0, execution_timeout=timedelta(minutes=2))
    def alert_drift(run_dir: str) -> str:
        from airflow.exceptions import AirflowSkipException

        from pipelines.alerts import deliver_alert, settings_for_airflow

        p = flows.project(flows.params_file())
        summary = flows.read_json(f"{run_dir}/summary.json")
        if not summary["drift_detected"]:
            raise AirflowSkipException(f"no drift: {len(summary['columns'])} columns within thresholds")
        subject, body, files = flows.drift_alert(summary, run_dir)
        failure = deliver_alert(subject, body, settings_for_airflow(p["alerts"]), files)
        if failure:
            raise AirflowSkipException(f"{failure} (report: {run_dir})")
        return subject

    alert_drift(report(windows()))


drift_monitor()
