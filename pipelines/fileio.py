"""Atomic file writes: a reader sees the old file or the whole new one, never half of it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipelines.errors import InputError


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temp file beside `path`, then rename it over `path`; the temp never outlives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name lets a later run tell a dead writer's leftover from a live one's (validate cleans them).
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the data from other users of a shared root
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """`atomic_write` of a bytes payload."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


MANIFEST = "manifest.json"


def _digest(path: Path) -> str:
    import hashlib

    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: str | Path) -> Path:
    """Record the size and sha256 of every file under `folder` in `folder/manifest.json` (written last)."""
    import json

    root = Path(folder)
    files = {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": _digest(p)}
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}
    return atomic_write(root / MANIFEST, lambda tmp: tmp.write_text(json.dumps({"files": files}, indent=1) + "\n"))


def verify_manifest(folder: str | Path) -> bool:
    """Check every file `folder/manifest.json` lists against its recorded size and sha256 before anything parses
    them (a truncated LightGBM model aborts the process, which no exception handler survives). ValueError naming
    each damaged or missing file; False when the folder has no manifest (written before manifests existed)."""
    import json

    root = Path(folder)
    if not (root / MANIFEST).exists():
        return False
    problems = []
    for name, want in json.loads((root / MANIFEST).read_text())["files"].items():
        path = root / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != want["bytes"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, {want['bytes']} were written")
        elif _digest(path) != want["sha256"]:
            problems.append(f"{name} does not match its recorded sha256")
    if problems:
        raise InputError(f"{root} is damaged: {'; '.join(problems)}")
    return True
