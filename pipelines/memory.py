"""Handing freed memory back to the system between the large steps of a batch stage."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release() -> None:
    """Give the allocators' free pages back: Arrow's pool (every parquet read) and the C heap (numpy and pandas
    buffers under glibc's mmap threshold, which rises to 32 MB). A stage that builds many large frames in turn,
    keeping some (the ranker's training sets, the replay's lists), otherwise holds the freed space of all the
    others as well: at Globo scale that was close to a gigabyte of the train stage's peak. Costs milliseconds."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
