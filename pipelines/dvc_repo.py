"""The DVC repository the stages run in, opened one way (DVC's Python API, from the repository's root) by
everything that changes what DVC records: the erasure (pipelines.forget_user) and train_ranker's lineage
(pipelines.model_card.record_lineage)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
    """The `dvc.repo.Repo` at `repo_root`, worked from its root: DVC resolves a stage's paths against the working
    directory."""
    from dvc.repo import Repo

    with contextlib.chdir(repo_root), Repo(str(repo_root)) as repo:
        yield repo


def default_remote(repo: Any) -> str | None:
    """The name of the repository's default remote (`dvc remote default`), None when it has none."""
    return repo.config["core"].get("remote") or None
