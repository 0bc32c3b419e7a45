# syntax=docker/dockerfile:1.7
# MLflow tracking server + model registry: PostgreSQL backend store, artifacts proxied to S3
# (`docker build -f docker/mlflow.Dockerfile .` from the repository root). Only MLflow and its store
# drivers are installed, at the versions requirements.lock pins for the rest of the project.

FROM python:3.11.15-slim-bookworm AS builder
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 UV_NO_CACHE=1 UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN pip install "uv==${UV_VERSION}" && python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
RUN uv pip install --python /opt/venv/bin/python --constraint /tmp/requirements.lock \
        mlflow psycopg2-binary boto3 \
    && /opt/venv/bin/mlflow --version

FROM python:3.11.15-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid mlflow --home-dir /home/mlflow --create-home --shell /usr/sbin/nologin mlflow
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MLFLOW_HOST=0.0.0.0 MLFLOW_PORT=5000
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4).status != 200)"]
# The backend store, artifact destination and allowed hosts come from MLFLOW_* variables
# (MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION, MLFLOW_SERVER_ALLOWED_HOSTS), so one image
# serves compose and the cloud; `mlflow server` migrates the backend schema on start.
CMD ["mlflow", "server"]
