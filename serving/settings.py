"""Service configuration, read once from params.yaml's `serve` section (plus the registry's model and URI)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from pipelines.config import DEFAULT_PARAMS, load_config


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to start; `replace()` it in tests instead of editing params.yaml."""

    host: str
    port: int
    tracking_uri: str
    model_name: str
    champion_alias: str
    challenger_alias: str
    poll_seconds: float
    redis_url: str | None
    state_prefix: str
    state_ttl_seconds: int
    state_max_clicks: int
    state_max_users: int
    ab_salt: str
    challenger_share: float
    impression_log: Path
    click_log: Path
    log_flush_seconds: float
    log_keep_days: int
    k_default: int
    k_max: int
    similar_k_max: int
    clock: str
    compile_ranker: bool
    background_nice: int
    hourly_index: bool
    live_refresh_seconds: float
    explore_share: float
    explore_fresh_hours: float
    explore_prior: tuple[float, float]
    max_body_bytes: int
    auth: bool
    api_keys_env: str
    rate_limit_per_minute: int
    # Per-user state of the hourly index in Redis (pipelines.user_store) instead of the index files; None = files.
    user_store_url: str | None
    user_store_prefix: str
    user_store_ttl_hours: float
    index_dir: Path | None = None  # where hourly serving indexes are published (params paths.data + refresh)
    # Where they are mirrored for replicas on other machines (params refresh.publish_uri): with it, index_dir is
    # this replica's local copy of the versions it reads there. None: read index_dir as published.
    index_uri: str | None = None
    # The final list's diversity re-rank (params `rank`, shared with the offline evaluation); None = off.
    rank: dict | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.challenger_share <= 1.0:
            raise ValueError(f"serve.challenger_share must be in [0, 1], got {self.challenger_share}")
        if not 1 <= self.k_default <= self.k_max:
            raise ValueError(f"serve.k_default must be in [1, k_max={self.k_max}], got {self.k_default}")
        if self.state_max_clicks < 1 or self.state_ttl_seconds < 1 or self.state_max_users < 1:
            raise ValueError("serve.state_max_clicks, state_ttl_seconds and state_max_users must be >= 1")
        if not 0.0 <= self.explore_share <= 0.5:
            raise ValueError(f"serve.explore_share must be in [0, 0.5], got {self.explore_share}")
        if len(self.explore_prior) != 2 or min(self.explore_prior) <= 0:
            raise ValueError(f"serve.explore_prior must be two positive numbers, got {self.explore_prior}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"serve.max_body_bytes must be >= 1024 (a click event is ~150 bytes), got "
                             f"{self.max_body_bytes}")
        if not 0 <= self.background_nice <= 19:
            raise ValueError(f"serve.background_nice must be in [0, 19], got {self.background_nice}")
        if self.log_keep_days < 1:
            raise ValueError(f"serve.log_keep_days must be >= 1, got {self.log_keep_days}")
        if self.clock not in {"wall", "cutoff"}:
            raise ValueError(f"serve.clock must be 'wall' or 'cutoff', got {self.clock!r}")
        from pipelines.diversity import check_params

        check_params(self.rank)
        if self.user_store is not None and not self.hourly_index:
            raise ValueError("serve.user_store_url needs serve.hourly_index: true (the user state in Redis is the "
                             "hourly index's; the model's own state is only in its files)")

    @property
    def user_store(self):
        """Where the hourly index's per-user state is read (a pipelines.user_store.UserStoreConfig), or None
        for the index files; a malformed setting raises with the key's name."""
        from pipelines.user_store import UserStoreConfig

        return UserStoreConfig.from_serve({"user_store_url": self.user_store_url,
                                           "user_store_prefix": self.user_store_prefix,
                                           "user_store_ttl_hours": self.user_store_ttl_hours})

    @classmethod
    def from_params(cls, path: str | Path = DEFAULT_PARAMS, **overrides: Any) -> Settings:
        """Settings from params.yaml (`serve` + `mlflow.tracking_uri` + `rank` + the log and data paths, absolute
        against the file's folder), with keyword overrides on top."""
        from pipelines.bundle import CHALLENGER, CHAMPION

        config = load_config(path)
        serve = config["serve"]
        # Facts owned by other stages are read from them, not repeated under serve.
        shared = {
            "tracking_uri": config["mlflow"]["tracking_uri"],
            "model_name": config["register"]["model_name"],
            "champion_alias": CHAMPION,
            "challenger_alias": CHALLENGER,
            "index_dir": Path(config["paths"]["data"]) / config["refresh"]["index_dir"],
            "index_uri": config["refresh"]["publish_uri"],
            "impression_log": config["paths"]["impression_log"],
            "click_log": config["paths"]["click_log"],
            "rank": config["rank"],
        }
        known = {f.name for f in fields(cls)}
        unknown = set(serve) - (known - set(shared))
        if unknown:
            raise KeyError(f"params.yaml serve section has unknown keys: {sorted(unknown)}")
        values: dict[str, Any] = {**shared, **serve, **overrides}
        missing = known - set(values)
        if missing:
            raise KeyError(f"params.yaml serve section lacks: {sorted(missing)}")
        values["explore_prior"] = tuple(float(v) for v in values["explore_prior"])
        values["impression_log"] = Path(values["impression_log"])
        values["click_log"] = Path(values["click_log"])
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (paths given as str are converted)."""
        for key in ("impression_log", "click_log", "index_dir"):
            if changes.get(key) is not None:
                changes[key] = Path(changes[key])
        return replace(self, **changes)
