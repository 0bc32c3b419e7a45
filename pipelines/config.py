"""params.yaml access. Defaults live in params.yaml only; a stage reads its own keys.

A deployed service (a container, an ECS task) changes a key without its own copy of params.yaml through
one environment variable per key, Airflow-style: `NEWSREC__SERVE__REDIS_URL=redis://redis:6379/0` sets
`serve.redis_url`. Values are read as YAML scalars (`null`, `3`, `true`); only keys that params.yaml
already has can be overridden, so a typo fails loudly instead of being ignored. `dvc repro` does not
see these variables: reproducible runs use params.yaml (or `dvc exp run -S`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")
ENV_PREFIX = "NEWSREC__"


@lru_cache(maxsize=8)
def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"params file not found: {p.resolve()} (run from the project root or pass --params)")
    with p.open() as fh:
        return yaml.safe_load(fh) or {}


def load_params(section: str | None = None, path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The whole params.yaml, or one stage's section of it (a copy, safe to mutate)."""
    params = apply_env_overrides(_load(str(path)))
    if section is None:
        return dict(params)
    if section not in params:
        raise KeyError(f"params.yaml has no section '{section}'")
    return dict(params[section])


def apply_env_overrides(params: dict[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`params` with every `NEWSREC__SECTION__KEY[__SUBKEY]` variable applied (a copy when any applies)."""
    environ = os.environ if environ is None else environ
    names = sorted(n for n in environ if n.startswith(ENV_PREFIX))
    if not names:
        return params
    params = copy.deepcopy(params)
    for name in names:
        parts = name[len(ENV_PREFIX) :].split("__")
        node: Any = params
        for i, part in enumerate(parts):
            # Case-insensitive because environment names are upper case and some keys are not.
            match = [k for k in node if str(k).lower() == part.lower()] if isinstance(node, dict) else []
            if not match:
                where = ".".join(parts[:i]) or "params.yaml"
                raise KeyError(f"{name}: {where} has no key '{part.lower()}' to override")
            if i == len(parts) - 1:
                node[match[0]] = yaml.safe_load(environ[name])
            else:
                node = node[match[0]]
    return params


def data_root(path: str | Path = DEFAULT_PARAMS) -> Path:
    """The one key that says which dataset the whole flow runs on."""
    return Path(load_params("data", path)["root"])
