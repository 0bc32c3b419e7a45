"""The user side of serving: everything a request reads of one user before the state's cutoff, in one place.

A request needs the user's clicks before the cutoff (candidates, read-article exclusion, the refit with
online clicks, /history), their user-table row, profile and category shares (features, context habits), and
the service needs a few facts over all users (the commonest context codes, the /v1/users listing). Two
implementations of one interface:

- `FileUserStore`: the memory-mapped files of the serving index (or of a registry bundle) every worker
  maps whole: history.npy and features/. The embedded default.
- `RedisUserStore`: what `newsrec refresh` materialised for that index version (pipelines.user_store),
  one GET per request; a replica holds no user's state, so any number of them share one Redis. Chosen by
  params.yaml `serve.user_store_url`.

Both hand the request path the same `UserRows`, so a list is the same whichever store it was read from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines.user_store import (
    UserRows,
    UserStoreConfig,
    context_summary,
    key,
    sorted_history,
    unpack_user,
    user_key,
)


class UserStore(Protocol):
    """What the request path reads of users."""

    n_users: int  # users with clicks before the cutoff
    context_default: dict[str, int]  # click context column -> its commonest value
    context_codes: dict[str, frozenset[int]]  # click context column -> the values it takes

    def rows(self, user_id: int) -> UserRows:
        """The user's clicks and feature rows; empty for a user the state does not know."""

    def listing(self, positions: Sequence[int]) -> list[tuple[int, int]]:
        """(user_id, clicks) of the users at these positions among users with clicks, by user id."""

    def most_active(self, n: int) -> np.ndarray:
        """Positions (as in `listing`) of the n users with most clicks, most first (ties: lower id first)."""

    def ping(self) -> bool:
        """True when the store answers and still holds this state (readiness)."""


class FileUserStore:
    """Every user's state from arrays the worker holds (memory-mapped index files or a bundle's tables)."""

    def __init__(self, history: pd.DataFrame, tables: Any) -> None:
        from pipelines.serving_index import HISTORY_COLUMNS

        if history is None:
            raise ValueError("the serving bundle has no click history (built without validated_dir): rebuild it "
                             "with `newsrec register`")
        self.tables = tables
        self.hist = sorted_history({c: history[c].to_numpy(dtype=np.int64) for c in HISTORY_COLUMNS})
        u = self.hist[C.USER_ID]
        starts = np.flatnonzero(np.diff(u, prepend=u[:1] - 1))  # sorted: each user's first row
        self.users = u[starts]
        self.start, self.end = starts, np.append(starts[1:], len(u))
        self.n_users = len(self.users)
        defaults, codes = context_summary(self.hist)
        self.context_default = defaults
        self.context_codes = {c: frozenset(v) for c, v in codes.items()}
        uc = tables.user_categories
        uc_users = uc[C.USER_ID].to_numpy(np.int64)
        if len(uc_users) and np.any(uc_users[1:] < uc_users[:-1]):  # fitted tables are by user already
            order = np.argsort(uc_users, kind="stable")
            uc, uc_users = uc.iloc[order], uc_users[order]
        self._uc, self._uc_users = uc.reset_index(drop=True), uc_users

    def _slice(self, user_id: int) -> slice | None:
        i = np.searchsorted(self.users, user_id)
        if i < len(self.users) and self.users[i] == user_id:
            return slice(int(self.start[i]), int(self.end[i]))
        return None

    def rows(self, user_id: int) -> UserRows:
        sl = self._slice(user_id)
        clicks = {c: v[sl] if sl is not None else v[:0] for c, v in self.hist.items()}
        tables = self.tables
        pos = int(tables.users.index.get_indexer([user_id])[0])
        rows = slice(pos, pos + 1) if pos >= 0 else slice(0, 0)
        a, b = np.searchsorted(self._uc_users, [user_id, user_id + 1])
        return UserRows(clicks=clicks, users=tables.users.iloc[rows], profiles=tables.profiles[rows],
                        user_categories=self._uc.iloc[int(a):int(b)])

    def listing(self, positions: Sequence[int]) -> list[tuple[int, int]]:
        pos = np.asarray(positions, dtype=np.int64)
        return list(zip(self.users[pos].tolist(), (self.end - self.start)[pos].tolist(), strict=True))

    def most_active(self, n: int) -> np.ndarray:
        return np.argsort(-(self.end - self.start), kind="stable")[:n]

    def ping(self) -> bool:
        return True


class RedisUserStore:
    """One index version's per-user state in Redis (pipelines.user_store): one GET per request.

    Made when a worker loads the version: the version's :meta key must exist (the publisher writes it last),
    else the version is refused and the worker keeps serving the one before. Redis errors at request time
    propagate: the short timeouts of `UserStoreConfig.client` bound how long a request waits on them."""

    def __init__(self, client: Any, config: UserStoreConfig, namespace: str) -> None:
        self._redis = client
        self.prefix, self.namespace = config.prefix, namespace
        raw = client.get(key(self.prefix, namespace, "meta"))
        if raw is None:
            raise LookupError(f"the user state of index version {namespace} is not in Redis at {config.url} "
                              f"(key {key(self.prefix, namespace, 'meta')} missing: expired, evicted or never "
                              "written): re-run `newsrec refresh` for its hour")
        meta = json.loads(raw)
        self.spec = meta["layout"]
        self.context_default = {c: int(v) for c, v in meta["context_default"].items()}
        self.context_codes = {c: frozenset(v) for c, v in meta["context_codes"].items()}
        self._meta_key = key(self.prefix, namespace, "meta")

    @property
    def n_users(self) -> int:
        """Read each time (not on the request path): `newsrec forget-user` may have shortened the listing."""
        return int(self._redis.strlen(key(self.prefix, self.namespace, "dir"))) // 16

    def rows(self, user_id: int) -> UserRows:
        return unpack_user(self.spec, user_id, self._redis.get(user_key(self.prefix, self.namespace, user_id)))

    def listing(self, positions: Sequence[int]) -> list[tuple[int, int]]:
        pipe = self._redis.pipeline(transaction=False)
        for p in positions:
            pipe.getrange(key(self.prefix, self.namespace, "dir"), 16 * int(p), 16 * int(p) + 15)
        pairs = [np.frombuffer(raw, np.int64) for raw in pipe.execute()] if len(positions) else []
        return [(int(p[0]), int(p[1])) for p in pairs if len(p) == 2]  # past the end: shortened by an erasure

    def most_active(self, n: int) -> np.ndarray:
        raw = self._redis.getrange(key(self.prefix, self.namespace, "active"), 0, 8 * int(n) - 1) if n > 0 else b""
        return np.frombuffer(raw, np.int64)

    def ping(self) -> bool:
        try:
            return bool(self._redis.exists(self._meta_key))
        except Exception:  # noqa: BLE001 - any failure to answer means "not ready"
            return False
