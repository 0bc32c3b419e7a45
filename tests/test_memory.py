"""memory.release gives freed heap pages back to the system (what keeps the train stage's peak near its live data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines import memory


def _anon_mib() -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["RssAnon"].split()[0]) / 1024


@pytest.mark.unit
def test_release_returns_the_freed_heap():
    if memory._malloc_trim() is None:
        pytest.skip("the C library has no malloc_trim (not glibc)")
    big = np.ones(8 << 20, dtype=np.uint8)
    del big  # one freed 8 MB block lifts glibc's mmap threshold: 1 MB blocks then go on the heap
    blocks, keep = [], []
    for _ in range(256):
        blocks.append(np.ones(1 << 20, dtype=np.uint8))  # touched, so resident
        keep.append(np.ones(16 << 10, dtype=np.uint8))  # live blocks between them (past numpy's small-block cache)
    before = _anon_mib()
    del blocks
    freed = _anon_mib()
    memory.release()
    after = _anon_mib()
    assert before - after > 128, (before, freed, after)  # most of the 256 MB freed is no longer resident
    assert len(keep) == 256
