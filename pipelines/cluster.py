"""The Dask cluster the heavy batch steps run on when params `dask.scheduler` names one.

`scheduler: null` (the embedded default) keeps every step in one process. With an address
(`tcp://scheduler:8786`) the steps whose cost grows with users and clicks (`newsrec learned`'s daily fits,
`newsrec features`' user tables, `newsrec candidates`' lists, `newsrec train`, `newsrec evaluate`'s rankings)
run their per-partition work on the cluster's workers: the same functions the single process calls, on
partitions that never split a user (features, candidates, evaluation) or a query (training), or one task per
daily model (learned). Workers
read the same paths as the client, so the data root must be shared storage (a network file system or s3://).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

# What a Dask worker process must start with: the worker containers set it (docker/compose.yaml, terraform/dask.tf),
# `local_cluster` sets it for the tests and benchmarks. Dask's nanny starts its workers with MALLOC_TRIM_THRESHOLD_
# set, and a glibc given a trim threshold no longer raises its mmap threshold as it goes: every allocation over
# 128 KiB becomes its own mmap, faulted in page by page and unmapped when freed. A learned fit of the demo took
# 25 s in such a worker (6.2M page faults, 11 s of it in the kernel) against 13 s in one process; with the mmap
# threshold at glibc's ceiling (32 MiB) 15 s. Read when the process starts, so it cannot be set from a task.
WORKER_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": "33554432"}


@contextmanager
def local_cluster(workers: int, threads: int, **kwargs: Any) -> Iterator[Any]:
    """A `distributed.LocalCluster` of `workers` worker processes with `threads` threads each, started with
    WORKER_ENVIRON: the cluster the tests and benchmarks run the steps on."""
    import dask
    from distributed import LocalCluster

    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **WORKER_ENVIRON}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=None,
                               **kwargs)
    with cluster:
        yield cluster


@contextmanager
def connect(params: dict) -> Iterator[Any]:
    """A `distributed.Client` on `params["scheduler"]` for the block, or None when it is null (one process)."""
    address = params.get("scheduler")
    if not address:
        yield None
        return
    from distributed import Client

    # Not the process-wide default: every Dask call here names its client, so nothing else picks it up.
    with Client(address, set_as_default=False) as client:
        yield client


def partition_count(client: Any, params: dict) -> int:
    """`params["partitions"]`, or one partition per worker when it is null."""
    wanted = params.get("partitions")
    if wanted:
        return int(wanted)
    return max(1, len(client.scheduler_info(n_workers=-1)["workers"]))


def user_partition(user_ids: np.ndarray, partitions: int) -> np.ndarray:
    """The partition (0..partitions-1) of each user id: a stable hash, so a user always lands in the same one
    and consecutive ids spread evenly."""
    hashed = pd.util.hash_array(np.asarray(user_ids, dtype=np.int64))
    return (hashed % np.uint64(partitions)).astype(np.int64)
