"""The DVC repository the stages run in, worked on one way by everything that changes what DVC records: the
erasure (pipelines.forget_user) and train_ranker's lineage (pipelines.flows.record_lineage).

What changes DVC's records (commit, gc, push, status) runs as the `dvc` command in its own process, working in
the repository's root: DVC resolves stage names and paths against the working folder, and this process never
changes its own. Reading the declared outputs uses DVC's Python API (`open_repo`), which needs no working folder.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.errors import NewsrecError


def dvc_repo_root(path: str | Path) -> Path | None:
    """The DVC repository holding `path` (None outside one)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Path(Repo.find_root(str(path)))
    except NotDvcRepoError:
        return None


@contextlib.contextmanager
def open_repo(repo_root: str | Path) -> Iterator[Any]:
    """The `dvc.repo.Repo` at `repo_root`, to read what it declares (its outputs' absolute paths)."""
    from dvc.repo import Repo

    with Repo(str(Path(repo_root).resolve())) as repo:
        yield repo


def dvc(repo_root: str | Path, *args: str) -> str:
    """`dvc <args>` run in the repository's root (a process of its own); its stdout. A failure raises, with DVC's
    own message."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=Path(repo_root).resolve(), capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise NewsrecError(f"`dvc {' '.join(args)}` in {repo_root} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def status(repo_root: str | Path) -> dict:
    """`dvc status --json`: what is stale, by stage."""
    return json.loads(dvc(repo_root, "status", "--json") or "{}")


def default_remote(repo_root: str | Path) -> str | None:
    """The name of the repository's default remote (`dvc remote default`), None when it has none."""
    with open_repo(repo_root) as repo:
        return repo.config["core"].get("remote") or None


def cache_objects(repo_root: str | Path) -> int:
    """How many objects the repository's local cache holds."""
    with open_repo(repo_root) as repo:
        files = Path(repo.cache.local.path)
    return sum(1 for p in files.rglob("*") if p.is_file()) if files.exists() else 0
