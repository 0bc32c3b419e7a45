"""Append-only JSON-lines logs (impressions, clicks) that never block a request on disk I/O.

Requests append a line to an in-memory buffer; a daemon thread writes the buffer out every
`flush_seconds`, and `close()` writes what is left. A crash loses at most one flush interval of lines,
which an A/B readout tolerates; a request waiting on fsync would not meet the latency budget.

A log named `impressions.jsonl` is written as one file per UTC day, `impressions.jsonl.YYYY-MM-DD` (at 200
req/s the impressions alone are ~4 GB a day): every worker process appends to the same day's file, no file is
ever renamed under a writer, and days older than `keep_days` are deleted. `read_log` reads them all, oldest
first (and the undated file older releases wrote).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


class JsonLinesLog:
    """A buffered, thread-safe JSON-lines appender."""

    def __init__(self, path: str | Path, flush_seconds: float = 1.0, keep_days: int | None = None,
                 clock=time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keep_days = keep_days
        self._clock = clock
        self._day: str | None = None
        self._buffer: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._flush_seconds = flush_seconds
        self._thread = threading.Thread(target=self._run, name=f"log-{self.path.name}", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        """Queue one record (serialised now, so later mutation of `record` cannot change the log)."""
        line = json.dumps(record, separators=(",", ":"), default=_json_default)
        with self._lock:
            self._buffer.append(line)

    def flush(self) -> None:
        """Write every queued line to the file."""
        with self._lock:
            lines, self._buffer = self._buffer, []
        if lines:
            now = datetime.fromtimestamp(self._clock(), UTC)
            day = f"{now:%Y-%m-%d}"
            with day_file(self.path, day).open("a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
            if day != self._day:  # a new day: the oldest ones go
                self._day = day
                if self.keep_days:
                    oldest = f"{now - timedelta(days=int(self.keep_days) - 1):%Y-%m-%d}"
                    for old in log_files(self.path):
                        if old.name[len(self.path.name) + 1:] < oldest and old != self.path:
                            old.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._closed.wait(self._flush_seconds):
            self.flush()

    def close(self) -> None:
        """Stop the flusher and write what is left."""
        self._closed.set()
        self._thread.join(timeout=5)
        self.flush()


def _json_default(value: Any) -> Any:
    # numpy scalars reach the log from score arrays; they are plain numbers to a reader.
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def day_file(path: str | Path, day: str) -> Path:
    """Where log `path` keeps the lines of UTC day `day` (YYYY-MM-DD)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{day}")


def log_files(path: str | Path) -> list[Path]:
    """Every file of log `path`, oldest first: the undated one (older releases) and the day files."""
    path = Path(path)
    days = sorted(p for p in path.parent.glob(f"{path.name}.????-??-??")) if path.parent.exists() else []
    return ([path] if path.exists() else []) + days


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of log `path` across its files (`log_files`), oldest first; FileNotFoundError if it has none."""
    files = log_files(path)
    if not files:
        raise FileNotFoundError(f"no log at {path} (nor day files {Path(path).name}.YYYY-MM-DD)")
    return [record for f in files for record in read_jsonl(f)]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file, with the line number in the error for a corrupt line."""
    out = []
    with Path(path).open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i}: not a JSON line ({exc.msg})") from exc
    return out
