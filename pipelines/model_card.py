"""What a registered model is and where it came from: lineage tags and the model card on each MLflow version.

An ML engineer deciding whether to promote (or roll back to) a version reads its card in the MLflow UI: the
data and window it was trained and tested on, its metrics against every baseline under both protocols, the
features it uses, its known limits, and the lineage that reproduces it (`git checkout <commit> && dvc repro`
with the recorded params and data hashes).
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Where each lineage fact is stored on the run and the version (MLflow tags).
TAG_COMMIT = "newsrec.git_commit"
TAG_DIRTY = "newsrec.git_dirty"
TAG_PARAMS = "newsrec.params_sha256"
TAG_DATA = "newsrec.data_root"
TAG_DVC = "newsrec.dvc_lock_sha256"
TAG_HOURS = "newsrec.validated_hours"
# Written by train_ranker once it has committed its stages (pipelines.flows.record_lineage): the DVC md5 of each
# data input of training and evaluation (one tag per path, e.g. `newsrec.dvc_md5.data/validated`), and where
# DVC pushed the data.
TAG_DATA_MD5 = "newsrec.dvc_md5."
TAG_PUSHED = "newsrec.dvc_pushed"

# What the model cannot do, whatever its metrics say; kept beside the figures so nobody has to rediscover it.
KNOWN_LIMITS = [
    ("Users without history (cold) get the trending/recent-popularity candidates ranked on article and context "
    "features only; their gain over the baselines is small."),
    ("Candidates come from the serving pool (published in the last `candidates.pool_fresh_hours` or clicked in "
    "the last `candidates.pool_active_hours`): an older article is never proposed."),
    ("An article published after the serving index's cutoff is recommendable from the next hourly refresh on "
    "(exploration gives fresh articles a share of slots in the API, never offline)."),
    ("Metrics are offline replays of logged clicks: a list the site never showed cannot be judged, so online "
    "A/B results (`newsrec ab-report`) are the final word."),
]


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def sha256(path: Path) -> str | None:
    """The file's sha256 (hex), None when there is no such file."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def lineage(params_path: str | Path, data_root: str | Path, validated_hours: list[int]) -> dict[str, str]:
    """Tags that let a version be rebuilt: the code's commit (and whether the tree had changes), the params
    file's hash, the dvc.lock beside it (the data and model hashes of the last `dvc repro`), the data root and
    the validated hours read. A fact that cannot be read (no git, no dvc.lock) is recorded as "unknown"."""
    params_path = Path(params_path).resolve()
    repo = params_path.parent
    commit = _git("rev-parse", "HEAD", cwd=repo)
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=repo)
    hours = f"{min(validated_hours)}-{max(validated_hours)} ({len(validated_hours)} hours)" if validated_hours \
        else "none"
    return {
        TAG_COMMIT: commit or "unknown",
        TAG_DIRTY: "unknown" if status is None else str(bool(status)).lower(),
        TAG_PARAMS: sha256(params_path) or "unknown",
        TAG_DVC: sha256(repo / "dvc.lock") or "unknown",
        TAG_DATA: str(Path(data_root).resolve()),
        TAG_HOURS: hours,
    }


def data_hashes(lock: Mapping[str, Any], stages: Sequence[str]) -> dict[str, str]:
    """{tag: md5} of every data input of `stages` as a parsed dvc.lock records it: each dependency that is not a
    project module (`*.py`), keyed `TAG_DATA_MD5 + path`. ValueError when two stages record one path with two
    hashes (the lock was not written in one go) or a stage is not in the lock."""
    tags: dict[str, str] = {}
    for stage in stages:
        entry = (lock.get("stages") or {}).get(stage)
        if entry is None:
            raise ValueError(f"dvc.lock has no stage '{stage}': it was not run or committed")
        for dep in entry.get("deps", []):
            if dep["path"].endswith(".py"):
                continue
            key, md5 = TAG_DATA_MD5 + dep["path"], str(dep.get("md5"))
            if tags.setdefault(key, md5) != md5:
                raise ValueError(f"dvc.lock records {dep['path']} with two hashes: {tags[key]} and {md5}")
    return tags


def _table(protocol: dict, k: int) -> list[str]:
    """ndcg@k / recall@k / coverage@k per method and user segment, best first."""
    rows = []
    for method, segments in protocol["methods"].items():
        seg = {name: values.get(f"ndcg@{k}") for name, values in segments.items()}
        rows.append((seg.get("all") or 0.0, method, seg, segments.get("all", {})))
    lines = [f"| method | ndcg@{k} all | warm | cold | recall@{k} | coverage@{k} |", "|---|---:|---:|---:|---:|---:|"]
    for _, method, seg, every in sorted(rows, key=lambda r: -r[0]):
        cells = [seg.get("all"), seg.get("warm"), seg.get("cold"), every.get(f"recall@{k}"),
                 every.get(f"coverage@{k}")]
        lines.append(f"| {method} | " + " | ".join("" if v is None else f"{v:.4f}" for v in cells) + " |")
    verdict = protocol.get("reranker_vs_best_baseline") or {}
    if verdict:
        low, high = verdict.get("diff_ci95") or (float("nan"), float("nan"))
        lines += ["", (f"reranker / best baseline ({verdict.get('best_baseline')}) on {verdict.get('metric')}: "
                      f"{verdict.get('ratio', float('nan')):.3f}x, difference {verdict.get('diff', float('nan')):+.4f} "
                      f"(95% paired bootstrap interval [{low:+.4f}, {high:+.4f}])")]
    return lines


def model_card(name: str, version: str, window: str, eval_results: dict, ranker_meta: dict[str, Any],
               features: list[str], tags: dict[str, str]) -> str:
    """The markdown card of one registered version (the MLflow version description, and model_card.md)."""
    k = int(eval_results.get("k", 10))
    lines = [f"# {name} v{version}", "",
             ("LightGBM LambdaRank reranker over the fused candidates (embedding kNN of the reader's profile, "
             "co-reads, popularity, trend), served over the newest hourly serving index."), "",
             "## Data", "",
             f"- data root: `{tags.get(TAG_DATA, 'unknown')}`, validated hours {tags.get(TAG_HOURS, 'unknown')}",
             f"- test window: {window}",
             (f"- training: {ranker_meta.get('train_queries', '?')} queries ({ranker_meta.get('train_rows', '?')} rows) "
             f"from {len(ranker_meta.get('train_snapshots', []))} snapshots; early stopping on "
             f"{ranker_meta.get('val_queries', '?')} validation queries, best iteration "
             f"{ranker_meta.get('best_iteration', '?')}"), ""]
    for key, title in (("as_served", "as served (index refreshed hourly, ranker fixed)"),
                       (None, "frozen (every list computed at the test cutoff)")):
        protocol = eval_results.get(key) if key else eval_results
        if protocol and "methods" in protocol:
            lines += [f"## Test metrics, {title}", "", *_table(protocol, k), ""]
    lines += ["## Features", "", ", ".join(f"`{f}`" for f in features), "",
              "## Known limits", "", *[f"- {limit}" for limit in KNOWN_LIMITS], "",
              "## Lineage", "",
              *[f"- `{key}`: {value}" for key, value in sorted(tags.items())], "",
              ("Reproduce: check out the commit, restore the data with `dvc pull` (or the raw drops), then "
              "`dvc repro`; the params and dvc.lock hashes above say whether what you run is what was registered. "
              "A version train_ranker registered also carries the DVC md5 of each data input "
              "(`newsrec.dvc_md5.*` tags) and the dvc.lock its run left (run artifact `lineage/dvc.lock`): "
              "docs/deployment.md, Airflow and DVC."),
              ""]
    return "\n".join(lines)


def hours_frame(validated_dir: str | Path):
    """One row per validated hour partition (hour, bytes): the dataset a model was built from, for MLflow."""
    import pandas as pd

    from pipelines.columns import partition_name
    from pipelines.lake import landed_hours

    root = Path(validated_dir)
    hours = landed_hours(root)
    sizes = [sum(p.stat().st_size for p in (root / partition_name(h)).glob("*")) for h in hours]
    return pd.DataFrame({"hour": hours, "bytes": sizes})


def log_card(client, name: str, version: str, run_id: str | None, card: str, tags: dict[str, str]) -> None:
    """Put the card and the lineage on the version (description, tags) and the run (tags, model_card.md)."""
    client.update_model_version(name, version, description=card)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if run_id:
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        client.log_text(run_id, card, "model_card.md")
