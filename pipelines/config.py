"""params.yaml access. Defaults live in params.yaml only; a stage reads its own keys.

A deployed service (a container, an ECS task) changes a key without its own copy of params.yaml through
one environment variable per key, Airflow-style: `NEWSREC__SERVE__REDIS_URL=redis://redis:6379/0` sets
`serve.redis_url`. Only keys that params.yaml already has can be overridden, so a typo fails loudly instead
of being ignored, and each value is read as the type of the default it replaces (coerce_override), so a
wrong one fails at startup naming the variable: a string is taken as written (`newsrec:recent:` is no YAML
mapping), a number must be one (`CHALLENGER_SHARE=yes` is refused), a bool is `true` or `false`, a list is
YAML or comma-separated items, a mapping YAML; `null` unsets a key whose default is null or a string (a URI,
a path). `dvc repro` does not
see these variables: reproducible runs use params.yaml (or `dvc exp run -S`).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import ConfigError, InputError, MissingInputError

DEFAULT_PARAMS = Path("params.yaml")
ENV_PREFIX = "NEWSREC__"


@lru_cache(maxsize=8)
def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"params file not found: {p.resolve()} (run from the project root or pass --params)")
    with p.open() as fh:
        return yaml.safe_load(fh) or {}


def load_params(section: str | None = None, path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The whole params.yaml, or one stage's section of it (a copy, safe to mutate)."""
    params = apply_env_overrides(_load(str(path)))
    if section is None:
        return dict(params)
    if section not in params:
        raise ConfigError(f"params.yaml has no section '{section}'")
    return dict(params[section])


class OverrideError(InputError):
    """A NEWSREC__ variable whose value does not fit the params.yaml key it overrides."""


def _type_name(value: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a YAML list",
            dict: "a YAML mapping"}.get(type(value), type(value).__name__)


def coerce_override(name: str, raw: str, default: Any) -> Any:
    """The value of variable `name` (text `raw`) as the type of the params.yaml `default` it replaces; an
    OverrideError naming the variable when it is not one."""

    def refuse(why: str) -> OverrideError:
        return OverrideError(f"{name}={raw!r}: {why} (the params.yaml default is {default!r})")

    text = raw.strip()
    if text == "null":
        if default is None or isinstance(default, str):
            return None
        raise refuse(f"must be {_type_name(default)}; null only unsets keys whose default is null or a string")
    if default is None:
        value = yaml.safe_load(raw)
        if isinstance(value, dict | list):
            raise refuse("must be a single value, not a YAML list or mapping")
        return value
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise refuse("must be true or false")
        return text.lower() == "true"
    if isinstance(default, int):
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise refuse("must be an integer")
        return int(text)
    if isinstance(default, float):
        try:
            value = float(text)
        except ValueError:
            raise refuse("must be a number") from None
        if not math.isfinite(value):
            raise refuse("must be a finite number")
        return value
    if isinstance(default, str):
        return raw
    if isinstance(default, list) and not text.startswith("["):
        # Comma-separated items, as deployments hand lists over (terraform joins alert recipients with ",").
        value: Any = [item.strip() for item in raw.split(",") if item.strip()]
    elif isinstance(default, list | dict):
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise refuse(f"must be {_type_name(default)}: {' '.join(str(e).split())}") from None
        if not isinstance(value, type(default)):
            raise refuse(f"must be {_type_name(default)}"
                         + (" or comma-separated items" if isinstance(default, list) else ""))
    else:
        raise refuse(f"a key of type {type(default).__name__} cannot be overridden")
    if isinstance(default, list) and default:
        return [_list_item(refuse, item, default[0]) for item in value]
    return value


def _list_item(refuse: Any, item: Any, example: Any) -> Any:
    """One item of a list override, of the kind of the default's first item: a number, a string, else as is."""
    if isinstance(example, int | float) and not isinstance(example, bool):
        if isinstance(item, bool) or not isinstance(item, int | float | str):
            raise refuse(f"items must be numbers, got {item!r}")
        try:
            number = float(item)
        except ValueError:
            raise refuse(f"items must be numbers, got {item!r}") from None
        if not math.isfinite(number):
            raise refuse(f"items must be finite numbers, got {item!r}")
        return number if isinstance(item, float) or not number.is_integer() else int(number)
    if isinstance(example, str):
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise refuse(f"items must be strings, got {item!r}")
        return str(item)
    return item


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
                raise ConfigError(f"{name}: {where} has no key '{part.lower()}' to override")
            if i == len(parts) - 1:
                node[match[0]] = coerce_override(name, environ[name], node[match[0]])
            else:
                node = node[match[0]]
    return params


def resolve_paths(params: Mapping[str, Any], base: str | Path) -> dict[str, Any]:
    """`params` (a whole params file) with every path made absolute against `base`, the params file's folder:
    the `paths` section, a relative SQLite tracking URI and a relative MLflow artifact root. What a command,
    an Airflow task or the API reads then means the same whatever folder it was started in."""
    base = Path(base).resolve()
    out = copy.deepcopy(dict(params))
    out["paths"] = {key: str(base / value) for key, value in (out.get("paths") or {}).items()}
    tracking = out.get("mlflow") or {}
    uri = str(tracking.get("tracking_uri") or "")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and uri != "sqlite:///:memory:":
        tracking["tracking_uri"] = f"sqlite:///{base / uri[len('sqlite:///'):]}"
    root = tracking.get("artifact_root")
    if root and "://" not in str(root):
        tracking["artifact_root"] = str(base / root)
    return out


def load_config(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The whole params file as a command, a task or the API uses it: environment overrides applied, paths
    absolute against the file's folder (resolve_paths). Loaded once at that boundary and passed in."""
    return resolve_paths(load_params(path=path), Path(path).parent)


def step_parser(prog: str, doc: str | None, data_root: str | None = None) -> argparse.ArgumentParser:
    """The parser of a step's CLI, with the options every step shares: `--params` (the params file) and, when
    `data_root` says what the step reads there, `--data-root` (default: params `paths.data`). Read it with
    `parse_step`."""
    parser = argparse.ArgumentParser(prog=f"newsrec {prog}", description=(doc or "").split("\n\n")[0])
    if data_root:
        parser.add_argument("--data-root", type=Path, help=f"{data_root} (default: params paths.data)")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="params file; relative paths in it are read against its folder")
    return parser


def parse_step(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """(arguments, config): `argv` parsed, the params file loaded once (load_config), and `--data-root`
    defaulted to its `paths.data`."""
    args = parser.parse_args(argv)
    config = load_config(args.params)
    if "data_root" in vars(args) and args.data_root is None:
        args.data_root = Path(config["paths"]["data"])
    return args, config
