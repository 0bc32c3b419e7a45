"""The Dask cluster the heavy batch steps run on when params `dask.scheduler` names one.

`scheduler: null` (the embedded default) keeps every step in one process. With an address
(`tcp://scheduler:8786`) the steps whose cost grows with users and clicks (`newsrec features`' user
tables, `newsrec candidates`' lists, `newsrec train`, `newsrec evaluate`'s rankings) run their per-partition
work on the cluster's workers: the same functions the single process calls, on partitions that never split a
user (features, candidates, evaluation) or a query (training). Workers
read the same paths as the client, so the data root must be shared storage (a network file system or s3://).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd


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
