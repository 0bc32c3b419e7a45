"""`dvc repro` of the whole flow (synth -> validate -> ... -> register) on the tiny profile, in a copy of the
checkout: dvc.yaml's commands, dependencies and outputs fit together, and a second `dvc status` has nothing
to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The tiny profile's 24 hours: the windows CI's pipeline job uses too.
TINY = {"synth.profile": "tiny", "split.test_hours": 3, "split.val_hours": 3, "split.label_hours": 3,
        "split.min_history_hours": 9, "train.num_boost_round": 40, "train.early_stopping_rounds": 10}


def _copy_checkout(dest: Path) -> None:
    """The tracked files as they are in the working tree (edits included), as a fresh git repository."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "checkout"]):
        subprocess.run(cmd, cwd=dest, check=True)


def tiny_checkout(tmp_path: Path, **env_vars: str) -> tuple[Path, Path, dict[str, str]]:
    """(repo, the venv's bin folder, environment): a copy of the checkout set to the tiny profile, with its own
    MLflow registry under `tmp_path`; no NEWSREC variable of the caller's environment leaks in."""
    repo = tmp_path / "repo"
    _copy_checkout(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in TINY.items():
        section, name = key.split(".")
        params[section][name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = Path(os.sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSREC")}
    env.update({"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                "NEWSREC__MLFLOW__TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "NEWSREC__MLFLOW__ARTIFACT_ROOT": str(tmp_path / "mlartifacts"), **env_vars})
    return repo, bin_dir, env


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_dvc_repro_runs_the_whole_flow_on_the_tiny_profile(tmp_path):
    repo, bin_dir, env = tiny_checkout(tmp_path)
    run = subprocess.run([str(bin_dir / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    summary = json.loads((repo / "metrics" / "summary.json").read_text())
    assert set(summary) == {"as_served", "frozen"}
    assert 0 < summary["as_served"]["ndcg@10"]["all"] <= 1 and summary["as_served"]["vs"]
    registered = json.loads((repo / "models" / "registered.json").read_text())
    assert registered["version"] == "1" and registered["aliases"].get("champion") == "1"
    assert (repo / "metrics" / "eval_report.html").stat().st_size > 10_000
    status = subprocess.run([str(bin_dir / "dvc"), "status", "--json"], cwd=repo, env=env, capture_output=True,
                            text=True, check=True)
    assert json.loads(status.stdout or "{}") == {}, status.stdout  # nothing left to reproduce

    # an experiment registers apart from the live model: its aliases (what the API serves) do not move
    exp = subprocess.run([str(bin_dir / "dvc"), "exp", "run", "-S", "train.lgb.num_leaves=15"], cwd=repo, env=env,
                         capture_output=True, text=True, check=False)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    from mlflow import MlflowClient

    from pipelines.registry import aliases

    client = MlflowClient(env["NEWSREC__MLFLOW__TRACKING_URI"], env["NEWSREC__MLFLOW__TRACKING_URI"])
    assert aliases(client, "newsrec-ranker") == registered["aliases"]
    (tried,) = client.search_model_versions("name='newsrec-ranker-experiments'")
    assert tried.tags["dvc_experiment"] and not tried.aliases
