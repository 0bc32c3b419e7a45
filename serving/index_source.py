"""Hourly serving indexes from the folder `newsrec refresh` publishes to (pipelines.serving_index)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from serving.models import ServedModel


class FolderIndexSource:
    """Reads `<index_root>/CURRENT.json` and the version it names; combines a model with it."""

    def __init__(self, index_root: str | Path, compile_ranker: bool = True) -> None:
        self.root = Path(index_root)
        self.compile_ranker = compile_ranker

    def current(self) -> dict | None:
        from pipelines.serving_index import current

        return current(self.root)

    def load(self, pointer: dict) -> Any:
        from pipelines.serving_index import ServingIndex

        return ServingIndex.load(self.root / pointer["path"])

    def combine(self, model: ServedModel, index: Any) -> ServedModel:
        from serving.recommend import prepare

        prepared = prepare(model.base.with_index(index), self.compile_ranker)
        info = {**model.info, "index": index_info(index.cutoff_hour, index.cutoff_ms, "hourly")}
        # live_base=None: the new pair is its own base; kept, the next live overlay would rebuild the old pair.
        # The model's own fitted state is not served again: only its ranker stays.
        return dataclasses.replace(model, bundle=prepared, index_hour=index.cutoff_hour, loaded_at=time.time(),
                                   info=info, live_base=None, base=model.base.ranker_only())


def index_info(cutoff_hour: int | None, cutoff_ms: int, source: str) -> dict[str, Any]:
    """What /v1/models says about the state a model serves over."""
    from datetime import UTC, datetime

    return {"source": source, "cutoff_hour": cutoff_hour,
            "cutoff": datetime.fromtimestamp(cutoff_ms / 1000, tz=UTC).isoformat()}
