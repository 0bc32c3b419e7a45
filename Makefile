# The README's two commands are `make quickstart` and `make test`; the rest are conveniences.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
TOOLS := .venv-tools

.PHONY: setup quickstart test lint airflow mlflow serve dashboard

$(PY):
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check uv

# PyTorch (the learned retrieval model, pipelines/learned.py) as its CPU build: a bare `torch` from PyPI is the
# multi-GB CUDA build. pip, not uv, installs it: pip also reads wheels from a local find-links folder when the
# machine has one; elsewhere it comes from PyTorch's CPU index. Its dependencies are pinned in requirements.lock.
TORCH := torch==2.13.0+cpu
TORCH_INDEX := https://download.pytorch.org/whl/cpu

setup: $(PY)  ## create .venv with the pinned stack and the project installed
	$(BIN)/uv pip install -q -p $(PY) -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps "$(TORCH)" 2>/dev/null || \
		$(PY) -m pip install -q --disable-pip-version-check --no-deps --extra-index-url $(TORCH_INDEX) "$(TORCH)"
	$(BIN)/uv pip install -q -p $(PY) --no-deps -e .
	$(BIN)/uv venv -q --allow-existing -p $(PY) $(TOOLS)  # checkov: its pins clash with the stack
	$(BIN)/uv pip install -q -p $(TOOLS)/bin/python -r tools/requirements.lock

# The stages' cmds call `newsrec`, so the venv's bin goes on PATH for DVC.
quickstart: setup  ## set up, reproduce the pipeline (dvc repro) on the synthetic demo data, show the result
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	@$(PY) -c 'import json; from pipelines.config import load_config; from pipelines.validate import summary_path; \
	p = summary_path(load_config()["paths"]["data"]); s = json.load(open(p)); \
	print("validation: {hours_total} hours, {landed} landed ({rows_landed:,} clicks), {quarantined} quarantined {quarantined_hours}".format(**s), "-", p)'
	@$(BIN)/newsrec report --eval-table metrics/eval_table.md --registered models/registered.json

# Airflow's dag.test() runs tasks inside the pytest process and leaves process-wide state behind (ORM
# sessions, signal handlers, cached settings), so the tests that run DAGs get a process of their own.
AIRFLOW_TESTS := tests/test_dags.py tests/test_airflow_postgres.py

# --durations: the slowest tests close each run's output, so a test that grows the suite's time is seen.
test:  ## the whole test suite
	$(BIN)/pytest -q --durations=20 $(addprefix --ignore=,$(AIRFLOW_TESTS))
	$(BIN)/pytest -q --durations=5 $(AIRFLOW_TESTS)

lint:
	$(BIN)/ruff check pipelines dags tests benchmarks serving dashboard

mlflow:  ## MLflow UI on the local registry (params mlflow.tracking_uri), http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri "$$($(PY) -c 'from pipelines.config import load_params; print(load_params("mlflow")["tracking_uri"])')" --host 127.0.0.1 --port 5000

airflow:  ## Airflow standalone on dags/ (UI http://127.0.0.1:8080, user admin; see README "Airflow")
	source config/airflow-env.sh && airflow standalone

serve:  ## the recommendation API on the registry's champion (params serve), http://127.0.0.1:8000/docs
	$(BIN)/newsrec serve

dashboard:  ## the Streamlit dashboard for product people, http://127.0.0.1:8501
	$(BIN)/streamlit run dashboard/app.py --server.address 127.0.0.1 --server.port 8501  # settings: .streamlit/config.toml
