"""dvc.yaml lists every module a stage's command runs, so a code change re-runs the stages it changes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from dvc_code_deps import code_of, missing_deps


@pytest.mark.unit
def test_every_stage_lists_the_modules_its_command_imports():
    missing = missing_deps(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    assert missing == {}, f"add to dvc.yaml (tools/dvc_code_deps.py --write): {missing}"


@pytest.mark.unit
def test_imports_are_followed_through_modules_and_inside_functions():
    code = code_of("pipelines.validate")
    assert "pipelines/validate.py" in code and "pipelines/columns.py" in code
    assert "pipelines/offline_pages.py" in code  # imported inside build_gx_docs only
    stage = {"stages": {"v": {"cmd": "newsrec validate --all", "deps": ["pipelines/validate.py"]}}}
    assert "pipelines/offline_pages.py" in missing_deps(stage)["v"]
    stage["stages"]["v"]["deps"] = ["pipelines/", "serving/"]  # a listed folder covers its files
    assert missing_deps(stage) == {}
