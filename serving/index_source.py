"""Hourly serving indexes from the folder `newsrec refresh` publishes to, or from its mirror on S3
(pipelines.serving_index)."""

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


class MirroredIndexSource(FolderIndexSource):
    """Reads the versions `newsrec refresh` mirrors to params.yaml `refresh.publish_uri` (S3, or a shared
    folder): a replica on another machine than the publisher, as the API tasks on AWS are. Each poll reads
    the mirror's CURRENT.json; a version it has not loaded yet is first copied whole into the local
    `index_root` (pipelines.serving_index.fetch: without the per-user files when the users are in Redis), then
    read as FolderIndexSource reads it, so a swap never serves a part-copied version."""

    def __init__(self, uri: str, index_root: str | Path, compile_ranker: bool = True,
                 user_store: UserStoreConfig | None = None, client: Any = None, s3: Any = None,
                 keep: int = 2) -> None:
        super().__init__(index_root, compile_ranker, user_store, client)
        self.uri = uri
        self.s3 = s3  # None: pipelines.storage's client (boto3's own configuration)
        self.keep = keep

    def current(self) -> dict | None:
        from pipelines.serving_index import remote_current

        return remote_current(self.uri, self.s3)

    def load(self, pointer: dict) -> Any:
        from pipelines.serving_index import fetch

        fetch(self.uri, pointer, self.root, user_side=self.user_store is None, keep=self.keep, client=self.s3)
        return super().load(pointer)


def index_info(cutoff_hour: int | None, cutoff_ms: int, source: str) -> dict[str, Any]:
    """What /v1/models says about the state a model serves over."""
    from datetime import UTC, datetime

    return {"source": source, "cutoff_hour": cutoff_hour,
            "cutoff": datetime.fromtimestamp(cutoff_ms / 1000, tz=UTC).isoformat()}
