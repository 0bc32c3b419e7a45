"""Hourly serving indexes from the folder `newsrec refresh` publishes to (pipelines.serving_index)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from pipelines.user_store import UserStoreConfig
from serving.models import ServedModel


class FolderIndexSource:
    """Reads `<index_root>/CURRENT.json` and the version it names; combines a model with it.

    With a `user_store` (params.yaml `serve.user_store_url`) only the article side of a version is read from
    the folder; its users are read from Redis, where the publisher wrote them (serving.users.RedisUserStore),
    and a version whose user state is not there is refused (the one serving stays)."""

    def __init__(self, index_root: str | Path, compile_ranker: bool = True,
                 user_store: UserStoreConfig | None = None, client: Any = None) -> None:
        self.root = Path(index_root)
        self.compile_ranker = compile_ranker
        self.user_store = user_store
        self._client = client if client is not None or user_store is None else user_store.client()

    def current(self) -> dict | None:
        from pipelines.serving_index import current

        return current(self.root)

    def load(self, pointer: dict) -> Any:
        from pipelines.serving_index import ServingIndex

        index = ServingIndex.load(self.root / pointer["path"], user_side=self.user_store is None)
        if self.user_store is not None:
            self._users(index)  # refused here, before any model is combined with it
        return index

    def _users(self, index: Any) -> Any:
        """The Redis user store of `index`'s version; LookupError when it has none there."""
        from serving.users import RedisUserStore

        stored = index.meta.get("user_store")
        if not stored:
            raise LookupError(f"index version hour={index.cutoff_hour:03d} has no user state in Redis (published "
                              "without serve.user_store_url): re-run `newsrec refresh` with it set")
        return RedisUserStore(self._client, self.user_store, stored["namespace"])

    def combine(self, model: ServedModel, index: Any) -> ServedModel:
        from serving.recommend import prepare

        users = self._users(index) if self.user_store is not None else None
        prepared = prepare(model.base.with_index(index), self.compile_ranker, users)
        info = {**model.info, "index": index_info(index.cutoff_hour, index.cutoff_ms, "hourly")}
        if users is not None:
            info["index"]["users"] = "redis"
        # live_base=None: the new pair is its own base; kept, the next live overlay would rebuild the old pair.
        # The model's own fitted state is not served again: only its ranker stays.
        return dataclasses.replace(model, bundle=prepared, index_hour=index.cutoff_hour, loaded_at=time.time(),
                                   info=info, live_base=None, base=model.base.ranker_only())


def index_info(cutoff_hour: int | None, cutoff_ms: int, source: str) -> dict[str, Any]:
    """What /v1/models says about the state a model serves over."""
    from datetime import UTC, datetime

    return {"source": source, "cutoff_hour": cutoff_hour,
            "cutoff": datetime.fromtimestamp(cutoff_ms / 1000, tz=UTC).isoformat()}
