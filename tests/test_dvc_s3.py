"""The project's S3 DVC remote: `dvc push` and `dvc pull` through dvc-s3 against a moto server on loopback."""

from __future__ import annotations

import configparser
import filecmp
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipelines import storage

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]

pytestmark = pytest.mark.integration


def _project_s3_remote() -> str:
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    url = config['\'remote "s3"\'']["url"]
    assert url.startswith("s3://"), url
    return url


def _dvc(cwd: Path, *args: str) -> str:
    done = subprocess.run([*DVC, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_push_and_pull_through_the_s3_remote(tiny_raw, tmp_path, s3_env):
    url = _project_s3_remote()
    bucket = storage.parse(url).bucket
    storage.make_buckets([bucket])
    # The project's remote, under a prefix of this test's own (the moto server lives for the session).
    remote = f"{url}/{uuid.uuid4().hex[:8]}"

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    _dvc(repo, "remote", "add", "-d", "s3", remote)
    shutil.copytree(tiny_raw / "raw", repo / "data" / "raw")
    _dvc(repo, "add", "data/raw")
    _dvc(repo, "push")
    pushed = storage.list_files(remote)
    assert len(pushed) >= len(list((repo / "data" / "raw").rglob("*.csv"))), pushed[:5]
    assert "in sync" in _dvc(repo, "status", "--cloud")

    # A fresh checkout: no cache, no data, only the .dvc file; pull brings back identical bytes.
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "raw")
    _dvc(repo, "pull")
    restored = repo / "data" / "raw"
    for original in (tiny_raw / "raw").rglob("*"):
        if original.is_file():
            assert filecmp.cmp(original, restored / original.relative_to(tiny_raw / "raw"), shallow=False)
