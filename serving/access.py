"""Who may call the API, and how often: API keys for personal-data and write endpoints, per-client rate limits.

With `serve.auth` on, the endpoints that read or change a user's data (`/v1/users...`, `/v1/events`) and the
models' details need `Authorization: Bearer <key>`, a key from the environment variable named by
`serve.api_keys_env` (comma-separated; a secret, so never in params.yaml). Article pages stay public. A
missing or unknown key is 401; keys are compared in constant time.

`serve.rate_limit_per_minute` (> 0) bounds every /v1 request per client: its key when it sends one, else its
address. A client over the limit gets 429 with Retry-After. Counts use the `limits` library's moving window,
in process, or in Redis when `serve.redis_url` is set so replicas share them.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_BEARER = HTTPBearer(auto_error=False, description="an API key from serve.api_keys_env")


def read_keys(env_var: str) -> frozenset[str]:
    """The API keys in environment variable `env_var` (comma-separated, blanks ignored)."""
    return frozenset(k.strip() for k in os.environ.get(env_var, "").split(",") if k.strip())


@dataclass
class Access:
    """The API's gate: `require_key` guards personal-data and write endpoints, `limit` every /v1 request."""

    auth: bool
    keys: frozenset[str]
    per_minute: int
    redis_url: str | None = None
    prefix: str = "newsrec:"
    _limiter: Any = field(default=None, repr=False)
    _item: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.auth and not self.keys:
            raise ValueError("serve.auth is on but no API key is set: put comma-separated keys in the environment "
                             "variable serve.api_keys_env names (or turn serve.auth off for a local run)")
        if self.per_minute < 0:
            raise ValueError(f"serve.rate_limit_per_minute must be >= 0, got {self.per_minute}")
        if self.per_minute:
            from limits import RateLimitItemPerMinute
            from limits.storage import MemoryStorage, RedisStorage
            from limits.strategies import MovingWindowRateLimiter

            storage = RedisStorage(self.redis_url, key_prefix=f"{self.prefix}limits") if self.redis_url \
                else MemoryStorage()
            self._limiter = MovingWindowRateLimiter(storage)
            self._item = RateLimitItemPerMinute(self.per_minute)

    def _known(self, token: str | None) -> bool:
        return token is not None and any(hmac.compare_digest(token.encode(), k.encode()) for k in self.keys)

    async def require_key(self, request: Request) -> None:
        """FastAPI dependency: 401 unless auth is off or the request carries a known key."""
        if not self.auth:
            return
        credentials: HTTPAuthorizationCredentials | None = await _BEARER(request)
        if not self._known(credentials.credentials if credentials else None):
            raise HTTPException(401, "this endpoint needs an API key: send `Authorization: Bearer <key>`",
                                headers={"WWW-Authenticate": "Bearer"})

    async def limit(self, request: Request) -> None:
        """FastAPI dependency: 429 when this client went over serve.rate_limit_per_minute."""
        if not self._limiter:
            return
        credentials = await _BEARER(request)
        client = f"key:{hashed(credentials.credentials)}" if credentials and self._known(credentials.credentials) \
            else f"addr:{request.client.host if request.client else 'unknown'}"
        if not self._limiter.hit(self._item, client):
            raise HTTPException(429, f"more than {self.per_minute} requests a minute from this client",
                                headers={"Retry-After": "60"})


def hashed(key: str) -> str:
    """A key as it may appear in counters and logs."""
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:16]
