"""Each reader's serving state in Redis, one key per user and index version, so API replicas hold none of it.

A serving index version (pipelines.serving_index) holds, beside the article side, every reader's clicks
(history.npy) and feature rows (features/: the user table, the profiles, the category shares). With
`serve.user_store_url` set, `newsrec refresh` also writes that per-user state to Redis before the version
becomes current (`materialise`), and the API reads one user's state per request (serving.users) instead of
memory-mapping every reader's:

    <prefix><namespace>:u:<user_id>  one user's state, packed (`pack_user` / `unpack_user`)
    <prefix><namespace>:dir          int64 [users, 2]: (user_id, clicks) by user id, for /v1/users
    <prefix><namespace>:active       int64 positions in :dir of the KNOWN_USERS_MAX most active users
    <prefix><namespace>:meta         JSON: the layout of the values, users, context defaults; written last

The namespace is `hour=NNN.<digest of the state>`: a republished hour writes new keys, so a replica never
reads a mix of two versions, and a version whose `:meta` key exists is whole. Every key expires
`ttl_seconds` after it was written (the bound if the hourly refresh stops); once a newer version is current,
the older ones are set to expire within `RETIRE_GRACE_S`, time enough for every replica to have swapped
away from them. Redis thus holds one version, two while the next is written and the replicas swap.

A value is a uint32 header (clicks, category rows, has a user-table row), then each history column, the
user-table row, the profile (float32) and the category rows, column after column. Integer columns are
stored in the smallest integer type that holds the whole version's range (the layout in :meta says which),
floats as they are: unpacking gives back exactly what the files hold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines.errors import InputError

# /v1/users lists at most this many users (its `n` bound): the most active ones are materialised in order.
KNOWN_USERS_MAX = 1000
# A dropped or replaced version's keys expire this long after: replicas poll every serve.poll_seconds (30 s).
RETIRE_GRACE_S = 900
_HEADER = np.dtype("<u4")
_WRITE_BATCH = 5000  # SETs per pipelined round trip


@dataclass(frozen=True)
class UserStoreConfig:
    """Where per-user serving state lives when not in the index files: params.yaml `serve.user_store_*`."""

    url: str
    prefix: str
    ttl_seconds: int

    @classmethod
    def from_serve(cls, serve: dict) -> UserStoreConfig | None:
        """From params.yaml's `serve` section; None when `user_store_url` is null (the index files serve)."""
        url = serve.get("user_store_url")
        if url is None or url == "":
            return None
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise InputError(f"serve.user_store_url must be a Redis URL (redis://host:port/db, rediss://..., "
                             f"unix://...) or null for the index files, got {url!r}")
        prefix, hours = serve.get("user_store_prefix"), serve.get("user_store_ttl_hours")
        if not isinstance(prefix, str) or not prefix:
            raise InputError(f"serve.user_store_prefix must be a non-empty string, got {prefix!r}")
        if isinstance(hours, bool) or not isinstance(hours, int | float) or hours < 1:
            raise InputError(f"serve.user_store_ttl_hours must be a number of hours >= 1 (a version must outlive "
                             f"the hour it serves), got {hours!r}")
        return cls(url=url, prefix=prefix, ttl_seconds=int(hours * 3600))

    def client(self) -> Any:
        """A redis-py client with short timeouts: a slow Redis must not hold a request past its budget."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)


@dataclass(frozen=True)
class UserRows:
    """One user's state before a version's cutoff, as the request path reads it (from files or Redis)."""

    clicks: dict[str, np.ndarray]  # HISTORY_COLUMNS as int64, oldest first; empty arrays for an unknown user
    users: pd.DataFrame  # the user table's row (index user_id); no rows when the user has none
    profiles: np.ndarray  # float32 [len(users), dim]: the user's profile
    user_categories: pd.DataFrame  # user_id, category_id, share: the user's category shares


def key(prefix: str, namespace: str, part: str) -> str:
    return f"{prefix}{namespace}:{part}"


def user_key(prefix: str, namespace: str, user_id: int) -> str:
    return f"{prefix}{namespace}:u:{int(user_id)}"


def context_summary(history_columns: dict[str, np.ndarray]) -> tuple[dict[str, int], dict[str, list[int]]]:
    """(the commonest value of each context column, the values each takes) over every click before the cutoff:
    what a request that leaves a context code out is given, and which codes the model's data holds."""
    defaults, codes = {}, {}
    for column in C.CONTEXT_COLUMNS:
        values = np.asarray(history_columns[column], dtype=np.int64)
        defaults[column] = int(np.bincount(values - values.min()).argmax() + values.min()) if len(values) else 0
        codes[column] = np.unique(values).tolist()
    return defaults, codes


def sorted_history(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """History columns sorted by user, then time (stable: ties keep their order); as given when already so
    (indexes and bundles store them sorted)."""
    u, t = columns[C.USER_ID], columns[C.CLICK_TIMESTAMP]
    if np.all(u[1:] >= u[:-1]) and np.all((u[1:] > u[:-1]) | (t[1:] >= t[:-1])):
        return columns
    order = np.lexsort((t, u))
    return {c: v[order] for c, v in columns.items()}


def _compact(values: np.ndarray) -> str:
    """The smallest dtype (as a string) that holds `values` exactly: integers narrowed by range, floats kept."""
    if values.dtype.kind not in "iu" or len(values) == 0:
        return values.dtype.newbyteorder("<").str
    lo, hi = int(values.min()), int(values.max())
    for dtype in ("<i1", "<i2", "<i4"):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return dtype
    return "<i8"


def layout(history: dict[str, np.ndarray], users: pd.DataFrame, profiles: np.ndarray,
           user_categories: pd.DataFrame) -> dict:
    """How `pack_user` lays out a version's values: per column, its stored and its original dtype."""
    from pipelines.serving_index import HISTORY_COLUMNS

    def cols(items):
        return [[name, _compact(np.asarray(v)), np.asarray(v).dtype.str] for name, v in items]

    return {
        "history": cols((c, history[c]) for c in HISTORY_COLUMNS if c != C.USER_ID),
        "users": cols((c, users[c].to_numpy()) for c in users.columns),
        "profile_dim": int(profiles.shape[1]),
        "categories": cols((c, user_categories[c].to_numpy()) for c in user_categories.columns if c != C.USER_ID),
    }


def _column_bytes(spec: list, arrays: dict[str, np.ndarray]) -> list[tuple[bytes, int]]:
    """Each column of `spec` converted to its stored dtype once, as (bytes, item size): a user's part is then
    a slice of bytes, not a conversion per user."""
    out = []
    for name, stored, _ in spec:
        values = np.ascontiguousarray(np.asarray(arrays[name]).astype(stored, copy=False))
        out.append((values.tobytes(), values.dtype.itemsize))
    return out


def unpack_user(spec: dict, user_id: int, value: bytes | None) -> UserRows:
    """What `materialise` stored for one user (None: the user has no state in this version)."""
    from pipelines.serving_index import HISTORY_COLUMNS

    n_clicks, n_cats, has_row = np.frombuffer(value, _HEADER, 3) if value else (0, 0, 0)
    n_clicks, n_cats, has_row = int(n_clicks), int(n_cats), int(has_row)
    offset = 3 * _HEADER.itemsize

    def read(stored: str, count: int) -> np.ndarray:
        nonlocal offset
        dtype = np.dtype(stored)
        out = np.frombuffer(value, dtype, count, offset) if count else np.zeros(0, dtype)
        offset += dtype.itemsize * count
        return out

    clicks = {C.USER_ID: np.full(n_clicks, user_id, dtype=np.int64)}
    for name, stored, original in spec["history"]:
        clicks[name] = read(stored, n_clicks).astype(original)
    clicks = {c: clicks[c] for c in HISTORY_COLUMNS}
    row = {name: read(stored, has_row).astype(original) for name, stored, original in spec["users"]}
    users = pd.DataFrame(row, index=pd.Index(np.full(has_row, user_id, dtype=np.int64), name=C.USER_ID))
    profiles = read("<f4", has_row * spec["profile_dim"]).reshape(has_row, spec["profile_dim"])
    cats = {C.USER_ID: np.full(n_cats, user_id, dtype=np.int64)}
    cats |= {name: read(stored, n_cats).astype(original) for name, stored, original in spec["categories"]}
    return UserRows(clicks=clicks, users=users, profiles=profiles, user_categories=pd.DataFrame(cats))


def _runs(sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct ids, start, end) of each run of equal values in a sorted array."""
    if len(sorted_ids) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    starts = np.flatnonzero(np.diff(sorted_ids, prepend=sorted_ids[:1] - 1))
    return sorted_ids[starts], starts, np.append(starts[1:], len(sorted_ids))


def _digest(history: dict[str, np.ndarray], tables: Any) -> str:
    """A short digest of the per-user state: a republished hour with other data gets other keys."""
    h = hashlib.blake2b(digest_size=6)
    for values in history.values():
        h.update(np.ascontiguousarray(values).data)
    h.update(pd.util.hash_pandas_object(tables.users, index=True).to_numpy().data)
    h.update(pd.util.hash_pandas_object(tables.user_categories, index=False).to_numpy().data)
    h.update(np.ascontiguousarray(tables.profiles).data)
    return h.hexdigest()


def packed_users(history: dict[str, np.ndarray], tables: Any, spec: dict) -> Iterator[tuple[int, bytes]]:
    """(user_id, packed value) of every user with clicks or a user-table row, by user id."""
    user = history[C.USER_ID]
    hist_users, hist_start, hist_end = _runs(user)
    table_users = tables.users.index.to_numpy(np.int64)
    uc = tables.user_categories
    uc_order = np.argsort(uc[C.USER_ID].to_numpy(np.int64), kind="stable")
    uc_sorted = {c: uc[c].to_numpy()[uc_order] for c in uc.columns}
    cat_users, cat_start, cat_end = _runs(uc_sorted[C.USER_ID].astype(np.int64))
    hist_bytes = _column_bytes(spec["history"], history)
    row_bytes = _column_bytes(spec["users"], {c: tables.users[c].to_numpy() for c in tables.users.columns})
    profile_bytes = np.ascontiguousarray(tables.profiles, dtype=np.float32).tobytes()
    profile_size = 4 * spec["profile_dim"]
    cat_bytes = _column_bytes(spec["categories"], uc_sorted)
    table_order = np.argsort(table_users, kind="stable")

    everyone = np.union1d(hist_users, table_users)
    h_pos = np.searchsorted(hist_users, everyone)
    t_sorted = table_users[table_order]
    t_pos = np.searchsorted(t_sorted, everyone)
    c_pos = np.searchsorted(cat_users, everyone)
    for i, uid in enumerate(everyone.tolist()):
        hp, tp, cp = int(h_pos[i]), int(t_pos[i]), int(c_pos[i])
        a, b = (int(hist_start[hp]), int(hist_end[hp])) if hp < len(hist_users) and hist_users[hp] == uid else (0, 0)
        row = int(table_order[tp]) if tp < len(t_sorted) and t_sorted[tp] == uid else -1
        ca, cb = (int(cat_start[cp]), int(cat_end[cp])) if cp < len(cat_users) and cat_users[cp] == uid else (0, 0)
        parts = [np.array([b - a, cb - ca, row >= 0], dtype=_HEADER).tobytes()]
        parts += [blob[a * size: b * size] for blob, size in hist_bytes]
        if row >= 0:
            parts += [blob[row * size: (row + 1) * size] for blob, size in row_bytes]
            parts.append(profile_bytes[row * profile_size: (row + 1) * profile_size])
        parts += [blob[ca * size: cb * size] for blob, size in cat_bytes]
        yield uid, b"".join(parts)


def materialise(client: Any, config: UserStoreConfig, cutoff_hour: int, history: pd.DataFrame, tables: Any) -> dict:
    """Write one version's per-user state (clicks `history`, HISTORY_COLUMNS sorted by user and time; the
    user side of the FeatureTables `tables`) under a namespace of its own; returns what the index's
    index.json records of it (`user_store`). The :meta key goes last: until it exists the version is not whole."""
    import time

    from pipelines.serving_index import HISTORY_COLUMNS

    started = time.perf_counter()
    cols = sorted_history({c: history[c].to_numpy(np.int64) for c in HISTORY_COLUMNS})
    spec = layout(cols, tables.users, tables.profiles, tables.user_categories)
    namespace = f"{C.HOUR}={int(cutoff_hour):03d}.{_digest(cols, tables)}"
    ttl = config.ttl_seconds
    directory = []
    pipe = client.pipeline(transaction=False)
    payload = 0
    hist_users, hist_start, hist_end = _runs(cols[C.USER_ID])
    counts = dict(zip(hist_users.tolist(), (hist_end - hist_start).tolist(), strict=True))
    for n, (uid, value) in enumerate(packed_users(cols, tables, spec), 1):
        pipe.set(user_key(config.prefix, namespace, uid), value, ex=ttl)
        payload += len(value)
        if uid in counts:
            directory.append((uid, counts[uid]))
        if n % _WRITE_BATCH == 0:
            pipe.execute()
    directory = np.array(directory, dtype=np.int64).reshape(-1, 2)
    active = np.argsort(-directory[:, 1], kind="stable")[:KNOWN_USERS_MAX].astype(np.int64)
    pipe.set(key(config.prefix, namespace, "dir"), directory.tobytes(), ex=ttl)
    pipe.set(key(config.prefix, namespace, "active"), active.tobytes(), ex=ttl)
    pipe.execute()
    defaults, codes = context_summary(cols)
    users_written = len(np.union1d(hist_users, tables.users.index.to_numpy(np.int64)))
    meta = {"namespace": namespace, "cutoff_hour": int(cutoff_hour), "layout": spec, "users": users_written,
            "users_with_clicks": len(directory), "payload_bytes": payload, "context_default": defaults,
            "context_codes": codes}
    client.set(key(config.prefix, namespace, "meta"), json.dumps(meta), ex=ttl)
    return {"namespace": namespace, "users": users_written, "payload_bytes": payload,
            "written_s": round(time.perf_counter() - started, 1)}  # how long it took (information only)


def forget(client: Any, config: UserStoreConfig, user_id: int) -> int:
    """Erase one user from every version in the store (newsrec forget-user): their key and their place in the
    /v1/users listing; the versions keep their expiry. Returns how many versions held the user."""
    held = 0
    for meta_key in client.scan_iter(match=f"{config.prefix}*:meta", count=10_000):
        namespace = meta_key.decode()[len(config.prefix): -len(":meta")]
        found = bool(client.delete(user_key(config.prefix, namespace, user_id)))
        raw = client.get(key(config.prefix, namespace, "dir"))
        directory = np.frombuffer(raw or b"", np.int64).reshape(-1, 2)
        keep = directory[:, 0] != int(user_id)
        if not keep.all():
            directory = directory[keep]
            active = np.argsort(-directory[:, 1], kind="stable")[:KNOWN_USERS_MAX].astype(np.int64)
            meta = json.loads(client.get(meta_key))
            meta["users_with_clicks"] = len(directory)
            pipe = client.pipeline(transaction=True)  # listing, its top and the counts change together
            pipe.set(key(config.prefix, namespace, "dir"), directory.tobytes(), keepttl=True)
            pipe.set(key(config.prefix, namespace, "active"), active.tobytes(), keepttl=True)
            pipe.set(meta_key, json.dumps(meta), keepttl=True)
            pipe.execute()
            found = True
        held += found
    return held


def retire(client: Any, config: UserStoreConfig, namespace: str, grace_s: int = RETIRE_GRACE_S) -> int:
    """Let a version's keys expire within `grace_s` (never later than they would have); returns how many were
    set. Its :meta key goes last, so a version already retired (or gone) is not scanned for again, and one
    whose retirement was interrupted is, at the next publication."""
    meta = key(config.prefix, namespace, "meta")
    ttl = client.ttl(meta)
    if ttl == -2 or 0 <= ttl <= grace_s:
        return 0
    pipe = client.pipeline(transaction=False)
    n = 0
    for k in client.scan_iter(match=f"{config.prefix}{namespace}:*", count=10_000):
        if k.decode() == meta:
            continue
        pipe.expire(k, int(grace_s), lt=True)
        n += 1
        if n % _WRITE_BATCH == 0:
            pipe.execute()
    pipe.execute()
    client.expire(meta, int(grace_s), lt=True)
    return n + 1
