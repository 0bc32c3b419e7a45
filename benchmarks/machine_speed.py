"""How fast this machine's CPU is right now, as one number a serving figure can be read against.

The shared development VM's speed drifts from hour to hour (the same request took 2.8 ms in process one day and
7-9 ms another, the same code on both). A latency figure without the machine's speed beside it cannot tell a
slower release from a slower machine, so the serving benchmarks record `reference_ms()` with every run.

The reference is the median of five timings of a fixed single-threaded workload shaped like a request: a
Python loop (interpreter overhead: the request path's small pandas and numpy calls) and small numpy array work.

    .venv/bin/python benchmarks/machine_speed.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def _workload() -> float:
    total = 0
    for i in range(1_000_000):
        total += i & 7
    rng = np.random.default_rng(0)
    values = rng.random((2_000, 64))
    acc = 0.0
    for _ in range(200):
        order = np.argsort(values[:, 0])
        acc += float(values[order[:50]].sum())
    return total + acc


def reference_ms(repeats: int = 5) -> float:
    """Median milliseconds of the fixed workload, single-threaded: lower is a faster machine."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        _workload()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


def reference_line() -> str:
    """`reference_ms()` as the benchmarks print it."""
    return f"machine speed reference: {reference_ms()} ms (benchmarks/machine_speed.py, median of 5; lower is faster)"


if __name__ == "__main__":
    print(reference_line())
