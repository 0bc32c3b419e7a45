#!/usr/bin/env bash
# MWAA runs this on every Airflow container before it starts. It only exports settings: each is one
# params.yaml key (pipelines/config.py), so the DAGs run the same code as compose and `dvc repro`.
# Terraform fills the ${...} placeholders (templatefile).
export NEWSREC__STORAGE__RAW_URI="${raw_uri}"
export NEWSREC__MLFLOW__TRACKING_URI="${mlflow_url}"
export NEWSREC__MLFLOW__ARTIFACT_ROOT="null"   # MLflow proxies artifacts to S3
export NEWSREC__PATHS__DATA="/usr/local/airflow/newsrec-data"
export NEWSREC__ALERTS__FROM="${alerts_from}"
export NEWSREC__ALERTS__TO="${alerts_to}"
# The erasure register's key (terraform/secrets.tf): tasks that read clicks fail without it once anyone was erased.
NEWSREC_ERASURE_KEY="$(aws secretsmanager get-secret-value --secret-id "${erasure_key_secret}" --query SecretString --output text)"
export NEWSREC_ERASURE_KEY
# refresh_index writes each hourly index's readers to the users' Redis and mirrors the index for the API tasks.
export NEWSREC__REFRESH__PUBLISH_URI="${index_uri}"
NEWSREC__SERVE__USER_STORE_URL="$(aws secretsmanager get-secret-value --secret-id "${user_store_secret}" --query SecretString --output text)"
export NEWSREC__SERVE__USER_STORE_URL
mkdir -p /usr/local/airflow/newsrec-data
