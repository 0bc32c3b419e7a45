"""clicks_hourly: one run per hour of click data.

wait_for_drop -> stage_drop -> validate -> aggregates -> refresh_index  (landed)
                                        -> alert_quarantined                (quarantined: email, the run stays green)

`refresh_index` rebuilds the serving index at the end of the hour (pipelines.serving_index) and publishes
it; the API swaps to it at its next poll, so what it recommends is never more than an hour behind.

The hour's article drop (its new articles, raw/articles/) rides along when there is one: stage_drop copies
it, validate judges it before the clicks (which may click those articles) and hands on the clicks' result
with the article drop's under `articles`, and alert_quarantined reports either drop when it is quarantined.
An hour without new articles has no article drop; that is normal.

Which hour: the run's `hour` param (the Trigger form, `airflow dags trigger clicks_hourly --conf
'{"hour": 5}'`), else its logical date, `data.epoch_ms + N h` for hour N.

When it runs: params.yaml `schedule.clicks_hourly`. Off (the default: the demo and Globo data replay
October 2017) the DAG has no schedule and starts unpaused: it runs the hours it is asked for, one run at
a time in the order they were triggered, and nothing else. On (live hourly drops, `data.epoch_ms` when
they began) it runs every hour on hourly data intervals from the epoch, so scheduled and backfilled runs
map to hours exactly; catchup is off.

Timing, chosen per task: the sensor pokes every minute in reschedule mode (no worker slot held while
waiting), logs the hour and the path it waits for, and fails after 3 h without a drop; work tasks retry
twice (transient I/O) within a 15 min execution timeout. The alert is tried once and never decides the
run's outcome: without a reachable mail server it is skipped with one log line saying so, and the
quarantine stays visible in the grid (`aggregates` and `refresh_index` skipped, their logs give the
reason). Airflow 3 removed SLAs; the bound used instead is `dagrun_timeout`: a run not finished 4 h after
it started is failed, and `on_failure_callback` emails every failed run (a drop that never came included).
`validate` depends on its previous run: the volume check compares an hour with the hours before it,
so hours are judged in order even when a backfill runs several at once.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, PokeReturnValue, dag, task
from airflow.timetables.interval import DeltaDataIntervalTimetable

from pipelines import flows
from pipelines.alerts import run_failed
from pipelines.config import load_params

PARAMS = load_params(path=flows.params_file())
EPOCH_MS = int(PARAMS["data"]["epoch_ms"])
LIVE = bool(flows.scheduled(PARAMS, "clicks_hourly"))


@dag(
    dag_id="clicks_hourly",
    schedule=DeltaDataIntervalTimetable(timedelta(hours=1)) if LIVE else None,
    start_date=flows.epoch_datetime(EPOCH_MS),
    catchup=False,
    # Triggered hours run one after another in trigger order, so each is validated after the one before.
    max_active_runs=4 if LIVE else 1,
    is_paused_upon_creation=None if LIVE else False,
    params={"hour": Param(None, type=["null", "integer"], minimum=0, title="Hour",
                          description="Hour number to process (hour N starts at data.epoch_ms + N h). "
                                      "Empty: the hour the logical date starts.")},
    default_args={
        "owner": "newsrec",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "execution_timeout": timedelta(minutes=15),
    },
    dagrun_timeout=timedelta(hours=4),
    on_failure_callback=run_failed,
    tags=["newsrec", "hourly"],
    doc_md=__doc__,
)
def clicks_hourly():
    @task.sensor(mode="reschedule", poke_interval=60, timeout=3 * 3600, retries=0)
    def wait_for_drop(params=None, logical_date=None) -> PokeReturnValue:
        import logging

        p = flows.project(flows.params_file())
        hour = flows.run_hour((params or {}).get("hour"), logical_date, p["data"]["epoch_ms"])
        raw_uri = p.get("storage", {}).get("raw_uri")
        landed = flows.drop_available(p["paths"]["data"], hour, raw_uri)
        where = flows.drop_location(p["paths"]["data"], hour, raw_uri)
        logging.getLogger(__name__).info("hour %03d: %s %s", hour, "drop found at" if landed else "waiting for",
                                         where)
        return PokeReturnValue(is_done=landed, xcom_value=hour)

    @task
    def stage_drop(hour: int) -> int:
        p = flows.project(flows.params_file())
        flows.stage_drop(p["paths"]["data"], hour, p.get("storage", {}).get("raw_uri"))
        return hour

    @task(depends_on_past=True)
    def validate(hour: int) -> dict:
        from pipelines.validate import Settings, quiet_gx, validate_hour_drops

        quiet_gx()
        p = flows.project(flows.params_file())
        results = validate_hour_drops(p["paths"]["data"], hour, epoch_ms=p["data"]["epoch_ms"],
                                      settings=Settings.from_params(p["validate"]),
                                      gx_dir=p["paths"]["gx"])
        return flows.hour_outcome(results)

    @task
    def aggregates(result: dict) -> dict[str, str]:
        from airflow.exceptions import AirflowSkipException

        from pipelines.aggregates import aggregate_hour, drop_hour

        p = flows.project(flows.params_file())
        if result["status"] != "landed":
            # A replayed hour that is quarantined now must not leave its earlier aggregates behind.
            removed = drop_hour(p["paths"]["data"], result["hour"])
            raise AirflowSkipException(f"hour {result['hour']:03d} was quarantined ({result['reason']}): "
                                       "nothing to aggregate"
                                       + (f", removed {len(removed)} stale partitions" if removed else ""))
        outs = aggregate_hour(p["paths"]["data"], result["hour"], p["data"]["epoch_ms"],
                              p["aggregates"]["coclick_max_distance"])
        return {kind: str(path) for kind, path in outs.items()}

    @task(retries=0, execution_timeout=timedelta(minutes=2))
    def alert_quarantined(result: dict) -> str:
        from airflow.exceptions import AirflowSkipException

        from pipelines.alerts import deliver_alert, settings_for_airflow

        if not flows.quarantined_drops(result):
            raise AirflowSkipException(f"hour {result['hour']} landed: nothing to report")
        p = flows.project(flows.params_file())
        subject, body, files = flows.quarantine_alert(p["paths"]["data"], result, p["data"]["epoch_ms"],
                                                      flows.params_file())
        failure = deliver_alert(subject, body, settings_for_airflow(p["alerts"]), files)
        if failure:
            raise AirflowSkipException(failure)
        return subject

    @task(execution_timeout=timedelta(minutes=10))
    def refresh_index(result: dict, outs: dict[str, str]) -> str:
        from pipelines.serving_index import refresh
        from pipelines.user_store import UserStoreConfig

        p = flows.project(flows.params_file())
        out = refresh(p["paths"]["data"], result["hour"], p["refresh"], p["candidates"], p["features"],
                      p["data"]["epoch_ms"], UserStoreConfig.from_serve(p["serve"]))
        return str(out)

    result = validate(stage_drop(wait_for_drop()))
    refresh_index(result, aggregates(result))
    alert_quarantined(result)


clicks_hourly()
