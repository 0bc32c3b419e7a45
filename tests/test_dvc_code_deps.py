"""dvc.yaml lists every module a stage's command runs, so a code change re-runs the stages it changes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from dvc_code_deps import code_of, extra_deps, imported_modules, missing_deps, module_file


@pytest.mark.unit
def test_every_stage_lists_exactly_the_modules_its_command_imports():
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert missing_deps(doc) == {}, "run tools/dvc_code_deps.py --write"
    assert extra_deps(doc) == {}, "run tools/dvc_code_deps.py --write"


@pytest.mark.unit
def test_imports_are_followed_through_modules_and_inside_functions():
    code = code_of("pipelines.validate")
    assert "pipelines/validate.py" in code and "pipelines/columns.py" in code
    assert "pipelines/offline_pages.py" in code  # imported inside build_gx_docs only
    stage = {"stages": {"v": {"cmd": "newsrec validate --all", "deps": ["pipelines/validate.py"]}}}
    assert "pipelines/offline_pages.py" in missing_deps(stage)["v"]
    stage["stages"]["v"]["deps"] = ["pipelines/", "serving/"]  # a listed folder covers its files
    assert missing_deps(stage) == {}
    stage["stages"]["v"]["deps"] = [*sorted(code), "pipelines/train.py", "great_expectations"]
    assert extra_deps(stage) == {"v": ["pipelines/train.py"]}  # data and config deps are not judged


# What a registered model is built from and how it is registered: an import circle among them makes every stage
# command import all of them (each stage's code, and so what re-runs it, was the whole circle).
MODEL_MODULES = ("evaluate", "ranker_pyfunc", "registry", "train", "bundle", "tracking")


@pytest.mark.unit
@pytest.mark.parametrize("module", MODEL_MODULES)
def test_the_model_modules_are_in_no_import_cycle(module):
    name = f"pipelines.{module}"
    reached = set().union(*(code_of(dep) for dep in imported_modules(module_file(name)) if dep != name))
    assert f"pipelines/{module}.py" not in reached, f"{name} imports itself back through {sorted(reached)}"


@pytest.mark.unit
def test_training_evaluation_and_serving_do_not_import_the_registry():
    for module in ("pipelines.train", "pipelines.evaluate", "serving.app", "pipelines.ranker_pyfunc"):
        assert "pipelines/registry.py" not in code_of(module), module
    assert "pipelines/bundle.py" in code_of("serving.app")  # the service reads bundles without registering any
    assert "pipelines/tracking.py" in code_of("pipelines.train")
