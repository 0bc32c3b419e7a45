"""train_ranker: daily retraining on every validated hour.

split -> learned -> candidates, features -> train -> evaluate -> register -> lineage -> promote -> publish

Each task runs the DVC stage of the same name (the command and paths dvc.yaml declares, so `dvc repro`
and this DAG produce the same files) with the params file the DAGs run with. `register` leaves the
promotion gate to its own task, so the grid shows the decision: `promote` succeeds when the challenger
became champion and is skipped when the champion was kept, its log saying why ("kept champion v4: ...");
a refused challenger is an answer, not a failure. `publish` then updates the `newsrec_ranker` asset either
way, which triggers drift_monitor.

Between `register` and `promote`, `lineage` leaves what `dvc repro` would have left: it commits the stages this DAG ran to dvc.lock
(`dvc status` reports nothing stale for them), pushes the data to the default DVC remote when there is one, and
tags the registered version with the DVC md5 of every data input of train and evaluate
(pipelines.flows.record_lineage; docs/deployment.md says how to reproduce a version from them). A version is
gated only once its lineage is recorded.

When it runs: when triggered, or on params.yaml `schedule.train_ranker` (a cron, e.g. "@daily"; off by
default, so switching the DAG on starts no retrain by itself; without a schedule it starts unpaused).

Timing: one run at a time (each retrains on everything); stages retry once after 5 min (MLflow's SQLite
or the file system may be briefly busy) within a 1 h execution timeout each. Airflow 3 removed SLAs; the
bound used instead is `dagrun_timeout` (a run still going after 4 h is failed) with an
`on_failure_callback` that emails every failed run. (3.1's DeadlineAlert is experimental and breaks a
succeeding run when pruning its deadline, so it is not used.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, dag, task

from pipelines import flows
from pipelines.alerts import run_failed
from pipelines.config import load_params

PARAMS = load_params(path=flows.params_file())
MODEL = Asset(name=flows.MODEL_ASSET, uri=flows.model_asset_uri(PARAMS))
SCHEDULE = flows.scheduled(PARAMS, "train_ranker")


def _stage(name: str, **overrides) -> None:
    p = flows.project(flows.params_file())
    flows.run_stage(name, p, flows.params_file(), overrides)


@dag(
    dag_id="train_ranker",
    schedule=SCHEDULE,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=None if SCHEDULE else False,
    dagrun_timeout=timedelta(hours=4),
    on_failure_callback=run_failed,
    default_args={
        "owner": "newsrec",
        "retries": 1,
        "retry_delay": timedelta(minutes=5),
        "execution_timeout": timedelta(hours=1),
    },
    tags=["newsrec", "training"],
    doc_md=__doc__,
)
def train_ranker():
    @task
    def split() -> None:
        _stage("split")

    @task
    def learned() -> None:
        _stage("learned")

    @task
    def candidates() -> None:
        _stage("candidates")

    @task
    def features() -> None:
        _stage("features")

    @task
    def train() -> None:
        _stage("train")

    @task
    def evaluate() -> None:
        _stage("evaluate")

    @task
    def register() -> None:
        _stage("register", **{"register.auto_promote": False})

    @task
    def lineage() -> None:
        # Nothing returned: the tags are keyed by data path, and a returned dict would become one XCom per key.
        p = flows.project(flows.params_file())
        flows.record_lineage(p, flows.params_file())

    @task
    def promote() -> dict:
        import logging

        from airflow.exceptions import AirflowSkipException

        p = flows.project(flows.params_file())
        decision = flows.promotion_gate(p)
        if not decision["promoted"]:
            raise AirflowSkipException(flows.promotion_summary(decision))
        logging.getLogger(__name__).info("%s", flows.promotion_summary(decision))
        return decision

    @task(outlets=[MODEL], trigger_rule="none_failed")
    def publish() -> None:
        """A new ranker was trained and gated (champion moved or not): drift_monitor runs on it."""

    s = split()
    c, f = candidates(), features()
    s >> learned() >> c
    s >> f
    t = train()
    [c, f] >> t
    t >> evaluate() >> register() >> lineage() >> promote() >> publish()


train_ranker()
