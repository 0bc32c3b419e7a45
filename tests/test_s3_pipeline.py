"""Hourly drops landed on S3 (a moto server on loopback, real boto3 over HTTP) flow into validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from pipelines import columns as C
from pipelines import storage

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


@pytest.fixture
def landed(tiny_raw, s3_env):
    """Three hours of the tiny dataset landed under a fresh bucket; returns (raw URI, hours)."""
    bucket = f"drops-{uuid.uuid4().hex[:12]}"
    storage.make_buckets([bucket])
    raw = f"s3://{bucket}/globo"
    hours = storage.hours_available(str(tiny_raw / "raw"))[:3]
    storage.land_drops(tiny_raw / "raw", raw, hours)
    return raw, hours


def test_validate_hour_stages_from_s3_and_lands(landed, tiny_raw, tmp_path):
    from pipelines.config import load_params
    from pipelines.validate import Settings, partition_dir, validate_hour

    raw, hours = landed
    root = tmp_path / "root"
    cfg = {"epoch_ms": load_params("data")["epoch_ms"], "settings": Settings.from_params(load_params("validate")),
           "gx_dir": load_params("paths")["gx"]}
    result = validate_hour(root, hours[1], raw_uri=raw, docs=False, **cfg)
    assert result.status == "landed", result.reason
    landed_frame = pd.read_parquet(partition_dir(root, hours[1]) / "part-0.parquet")
    source = pd.read_csv(tiny_raw / "raw" / C.CLICKS_DIR / C.hour_file_name(hours[1]))
    assert len(landed_frame) == len(source)
    with pytest.raises(FileNotFoundError, match="has not landed"):
        validate_hour(root, 999, raw_uri=raw, docs=False, **cfg)


def test_validate_cli_all_from_s3(landed, tmp_path):
    raw, hours = landed
    root = tmp_path / "root"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "validate", "--all", "--no-docs", "--data-root", str(root)],
        cwd=ROOT, env=dict(os.environ, NEWSREC__STORAGE__RAW_URI=raw),
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    from pipelines.validate import summary_path

    summary = json.loads(summary_path(root).read_text())
    assert summary["landed"] == len(hours), summary
