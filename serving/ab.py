"""A/B assignment: a stable hash of (salt, user_id) decides who is served by the challenger."""

from __future__ import annotations

import hashlib

CHAMPION = "champion"
CHALLENGER = "challenger"


def bucket(salt: str, user_id: int) -> float:
    """The user's position in [0, 1): identical across processes, replicas and restarts.

    Python's built-in hash() is salted per process, so a digest is used instead; a new salt reshuffles
    everyone, which is how a new experiment gets fresh, independent groups.
    """
    digest = hashlib.blake2b(f"{salt}:{int(user_id)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_variant(salt: str, user_id: int, challenger_share: float) -> str:
    """'challenger' for the configured share of users, 'champion' for the rest."""
    return CHALLENGER if bucket(salt, user_id) < challenger_share else CHAMPION
