"""The erasure holds (GDPR art. 17): a user planted in the tiny profile's data goes through the whole flow
(`dvc repro`, pushed to a DVC remote), is erased with `newsrec forget-user`, and after another `dvc repro` their
id is found in no store the product writes, except as the keyed hash in the erasure register."""

from __future__ import annotations

import io
import json
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_e2e_dvc import tiny_checkout

from pipelines import columns as C
from pipelines.erasures import user_token

PLANTED = 9876543  # far above the tiny profile's ids, so any integer column holding it holds the user
KEY = "e2e-erasure-key-0123456789abcdef"
_TEXT_ID = re.compile(rb"(?<![0-9])0*" + str(PLANTED).encode() + rb"(?![0-9])")


def _holds_id(data: bytes) -> bool:
    """Whether file content holds the planted id: as a whole number in text (`0009876543` too), or as a value of
    an integer column of a parquet file, an integer .npy array or a zip member (cached objects have no suffix)."""
    if data[:4] == b"PAR1":
        table = pq.read_table(io.BytesIO(data))
        return any(np.asarray(table[name].to_numpy(zero_copy_only=False) == PLANTED).any()
                   for name in table.column_names if str(table.schema.field(name).type).startswith(("int", "uint")))
    if data[:6] == b"\x93NUMPY":
        array = np.load(io.BytesIO(data), allow_pickle=False)
        return bool(array.dtype.kind in "iu" and (array == PLANTED).any())
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return any(_holds_id(zf.read(name)) for name in zf.namelist())
    return bool(_TEXT_ID.search(data))


def _find(*roots: Path, skip: tuple[Path, ...] = ()) -> list[str]:
    """Every file under `roots` that holds the planted id."""
    hits = []
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and path not in skip and _holds_id(path.read_bytes()):
                hits.append(str(path))
    return hits


def _plant(repo: Path) -> int:
    """The busiest user of the synthesised drops becomes PLANTED (one row written `000…`, as some exporters do),
    and one of their rows is delivered twice in hour 001, so that drop is quarantined with a GX result naming
    the row."""
    clicks = repo / "data" / "raw" / C.CLICKS_DIR
    frames = {p: pd.read_csv(p, dtype=str, keep_default_na=False) for p in sorted(clicks.glob("*.csv"))}
    counts = pd.concat(frames.values())[C.USER_ID].value_counts()
    user = counts.index[0]
    padded = False
    for path, frame in frames.items():
        mine = frame[C.USER_ID] == user
        if not mine.any():
            continue
        frame.loc[mine, C.USER_ID] = str(PLANTED)
        if not padded and path.name != C.hour_file_name(1):
            frame.loc[mine.idxmax(), C.USER_ID] = f"000{PLANTED}"
            padded = True
        frame.to_csv(path, index=False)
    hour1 = clicks / C.hour_file_name(1)
    row = next(f[f[C.USER_ID] == str(PLANTED)].head(1) for f in frames.values() if (f[C.USER_ID] == str(PLANTED)).any())
    pd.concat([frames[hour1], row, row]).to_csv(hour1, index=False)
    return int(counts.iloc[0])


@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_an_erased_user_is_nowhere_after_dvc_repro(tmp_path):
    repo, bin_dir, env = tiny_checkout(tmp_path, NEWSREC_ERASURE_KEY=KEY)

    def run(*cmd: str) -> subprocess.CompletedProcess:
        exe = str(bin_dir / cmd[0]) if (bin_dir / cmd[0]).exists() else cmd[0]
        done = subprocess.run([exe, *cmd[1:]], cwd=repo, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{cmd}: " + done.stdout[-3000:] + done.stderr[-3000:]
        return done

    # The flow with the planted user, pushed to the repository's DVC remote (.dvc/config: ../dvc-remote).
    run("dvc", "repro", "synth")
    assert _plant(repo) >= 3
    run("dvc", "commit", "-f", "synth")
    run("dvc", "repro")
    run("dvc", "push")
    # What a running service and a crashed writer leave behind.
    (repo / "logs").mkdir()
    (repo / "logs" / "impressions.jsonl").write_text(json.dumps({"user_id": PLANTED, "articles": [1, 2]}) + "\n"
                                                      + json.dumps({"user_id": 1, "articles": [3]}) + "\n")
    partition = next(p for p in sorted((repo / "data" / "validated" / C.CLICKS_DIR).glob("*/part-0.parquet"))
                     if _holds_id(p.read_bytes()))
    (partition.parent / ".part-0.parquet.999999.tmp").write_bytes(partition.read_bytes())

    stores = {name: repo / name for name in ("data/raw", "data/validated", "data/quarantine", "data/features",
                                              "data/candidates", "data/gx", "models/bundle", "logs", ".dvc/cache",
                                              "dvc-remote")}
    stores["mlartifacts"] = tmp_path / "mlartifacts"
    before = {name: bool(_find(path)) for name, path in stores.items()}
    assert all(before.values()), before  # the search sees the user where the flow put them

    erased = run("newsrec", "forget-user", str(PLANTED), "--yes")
    assert "DVC:" in erased.stdout and "deleted" in erased.stdout, erased.stdout
    second = run("dvc", "repro")

    register = repo / "data" / "erasures.jsonl"
    # The checkout's own files as committed (this test's source names the id) are code, not stores.
    tracked = set(run("git", "ls-files").stdout.split()) - set(run("git", "diff", "--name-only").stdout.split())
    hits = _find(repo, tmp_path / "mlartifacts", tmp_path / "mlflow.db",
                 skip=(register, *(repo / name for name in tracked)))
    assert hits == [], hits
    assert json.loads(register.read_text())["token"] == user_token(PLANTED, KEY.encode())
    assert str(PLANTED) not in register.read_text()
    # The erasure made the erased outputs the truth: nothing came back out of the cache, nothing is left to do.
    status = run("dvc", "status", "--json")
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    assert "Running stage 'synth'" not in second.stdout and "Restored stage 'synth'" not in second.stdout
    assert "Running stage 'train'" in second.stdout  # retrained from the erased data
    # The model trained on the erased data was registered and judged against the champion on the same window.
    registered = json.loads((repo / "models" / "registered.json").read_text())
    assert registered["version"] == "2", registered
    assert not registered["promotion"]["reason"].startswith("not comparable"), registered["promotion"]
