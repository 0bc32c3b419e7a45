"""The erasure register: who was erased (as keyed tokens, never ids), and the readers' filter that honours it.

`newsrec forget-user` (pipelines.forget_user) appends to the register; every reader of clicks drops the users in
it (split.load_clicks, synth), so a restored backup or a regenerated dataset cannot bring them back. Kept apart
from the erasure itself so that readers import only this.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

import pandas as pd

from pipelines import columns as C
from pipelines.errors import NewsrecError
from pipelines.lake import erasure_register

# The register's HMAC key comes from this environment variable, the same for every process that reads clicks:
# a register belongs to its dataset (lake.erasure_register), so no configuration can point a reader elsewhere.
KEY_ENV = "NEWSREC_ERASURE_KEY"


class ErasureError(NewsrecError, RuntimeError):
    """The erasure cannot be carried out or recorded as asked."""


def erasure_key(key_env: str = KEY_ENV, environ: Mapping[str, str] | None = None) -> bytes:
    """The HMAC key from the environment; an unset or short key is an error, never a silent default."""
    value = (os.environ if environ is None else environ).get(key_env, "")
    if len(value) < 16:
        raise ErasureError(
            f"{key_env} is {'too short' if value else 'not set'}: every stage that reads clicks needs the erasure "
            f"register's key once a register exists. Set {key_env} to a secret of at least 16 characters, the same "
            "everywhere (generate one: python -c 'import secrets; print(secrets.token_hex(32))'): in docker/.env "
            "for compose, the Secrets Manager secret `<name>/erasure-key` on AWS (terraform creates it), the "
            "shell or CI environment otherwise (docs/deployment.md, \"Erasure key\")")
    return value.encode()


def user_token(user_id: int, key: bytes) -> str:
    """The register's pseudonym for a user: HMAC-SHA256 of the decimal id under the secret key."""
    return hmac.new(key, str(int(user_id)).encode(), hashlib.sha256).hexdigest()


def read_register(path: str | Path) -> set[str]:
    """The tokens of every erased user (empty when nothing was ever erased)."""
    path = Path(path)
    if not path.exists():
        return set()
    tokens = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                tokens.add(json.loads(line)["token"])
            except (ValueError, KeyError) as error:
                raise ErasureError(f"{path}:{n}: not an erasure record") from error
    return tokens


@lru_cache(maxsize=4)
def _cached_tokens(path: str, mtime_ns: int) -> frozenset[str]:
    return frozenset(read_register(path))


def erased_users(user_ids: Iterable[int], data_root: str | Path,
                 environ: Mapping[str, str] | None = None) -> list[int]:
    """Those of `user_ids` in the data root's erasure register ([] when it is empty or absent). Raises
    ErasureError when there is a register and no key to read it with (never a silent pass)."""
    path = erasure_register(data_root)
    if not path.exists():
        return []
    tokens = _cached_tokens(str(path), path.stat().st_mtime_ns)
    if not tokens:
        return []
    key = erasure_key(KEY_ENV, environ)
    return [int(u) for u in user_ids if user_token(int(u), key) in tokens]


def drop_erased_users(frame: pd.DataFrame, data_root: str | Path,
                      environ: Mapping[str, str] | None = None) -> pd.DataFrame:
    """`frame` without the rows of users in the data root's erasure register (unchanged when it is empty)."""
    if frame.empty or C.USER_ID not in frame.columns:
        return frame
    erased = erased_users(frame[C.USER_ID].unique(), data_root, environ)
    return frame[~frame[C.USER_ID].isin(erased)].reset_index(drop=True) if erased else frame
