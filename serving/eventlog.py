"""Append-only JSON-lines logs (impressions, clicks) that never block a request on disk I/O.

Requests append a line to an in-memory buffer; a daemon thread writes the buffer out every
`flush_seconds`, and `close()` writes what is left. A crash loses at most one flush interval of lines,
which an A/B readout tolerates; a request waiting on fsync would not meet the latency budget.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any


class JsonLinesLog:
    """A buffered, thread-safe JSON-lines appender."""

    def __init__(self, path: str | Path, flush_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")

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
