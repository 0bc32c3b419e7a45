"""Every DVC stage lists, as deps, exactly the project modules its command imports, so a code change re-runs the
stages it can change and no other.

A stage's command names `newsrec <step>`; the step's module (pipelines/cli.py COMMANDS) and every project module
it imports, directly or through others, at the top or inside a function (the code runs either way), are its
code. Imports under `if TYPE_CHECKING:` are not. Package `__init__.py` files are left out (they hold no code).
A module that imports its package's modules by discovery (DISCOVERS: pipelines.sources.base finds every
candidate source) reaches the whole folder, listed as one dep, so a new module there needs no dvc.yaml edit.

    .venv/bin/python tools/dvc_code_deps.py           # what each stage misses or lists for nothing; exit 1 if any
    .venv/bin/python tools/dvc_code_deps.py --write   # put dvc.yaml right (comments kept)

tests/test_dvc_code_deps.py fails when a stage misses a module or lists one its command never imports.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "serving")
DISCOVERS = {"pipelines.sources.base": "pipelines/sources"}  # module -> the folder it imports every module of
sys.path.insert(0, str(ROOT))


def module_file(name: str) -> Path | None:
    """The file of a project module (`pipelines.split` -> pipelines/split.py), None when it is not one."""
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _skipped(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:`."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def imported_modules(path: Path) -> set[str]:
    """The project modules `path` imports (`from pkg import mod` counts mod when it is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _skipped(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in PACKAGES:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}"))
    return found


def code_of(module: str) -> set[str]:
    """Repository paths of `module` and of every project module it reaches by imports (a DISCOVERS folder as
    the folder)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is not None:
            todo.extend(imported_modules(path))
        if name in DISCOVERS:  # it imports every module of its folder
            todo.extend(f"{DISCOVERS[name].replace('/', '.')}.{p.stem}" for p in (ROOT / DISCOVERS[name]).glob("*.py"))
    folders = [DISCOVERS[name] for name in seen if name in DISCOVERS]
    paths = {module_file(name) for name in seen}
    found = {p.relative_to(ROOT).as_posix() for p in paths if p is not None and p.name != "__init__.py"}
    return {p for p in found if not any(p.startswith(f + "/") for f in folders)} | set(folders)


def stage_commands(cmd: str | list[str]) -> list[str]:
    text = cmd if isinstance(cmd, str) else " ".join(cmd)
    return re.findall(r"\bnewsrec ([a-z][a-z-]*)", text)


def _needed(stage: dict) -> set[str]:
    from pipelines.cli import COMMANDS

    needed: set[str] = set()
    for step in stage_commands(stage["cmd"]):
        needed |= code_of(COMMANDS[step][0].split(":")[0])
    return needed


def _listed(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]


def missing_deps(dvc_yaml: dict) -> dict[str, list[str]]:
    """stage -> the code paths its command runs that its deps do not list (a listed folder covers its files)."""
    out = {}
    for name, stage in dvc_yaml["stages"].items():
        deps = _listed(stage)
        folders = [d.rstrip("/") + "/" for d in deps]
        out[name] = sorted(p for p in _needed(stage) if p not in deps and not any(p.startswith(f) for f in folders))
    return {k: v for k, v in out.items() if v}


def extra_deps(dvc_yaml: dict) -> dict[str, list[str]]:
    """stage -> the project modules its deps list that its command never imports (a change there re-runs it
    for nothing)."""
    out = {}
    for name, stage in dvc_yaml["stages"].items():
        needed = _needed(stage)
        out[name] = [d for d in _listed(stage) if d.endswith(".py") and d.split("/")[0] in PACKAGES
                     and Path(d).name != "__init__.py" and d not in needed]
    return {k: v for k, v in out.items() if v}


def main(argv: list[str] | None = None) -> int:
    from ruamel.yaml import YAML

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="add the missing modules to dvc.yaml")
    args = ap.parse_args(argv)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)  # dvc.yaml's own layout
    path = ROOT / "dvc.yaml"
    doc = yaml.load(path.read_text())
    missing, extra = missing_deps(doc), extra_deps(doc)
    for stage, paths in missing.items():
        print(f"{stage}: missing {', '.join(paths)}")
    for stage, paths in extra.items():
        print(f"{stage}: never imported {', '.join(paths)}")
    if not args.write:
        return 1 if missing or extra else 0
    for stage, paths in missing.items():
        doc["stages"][stage]["deps"].extend(paths)
    for stage, paths in extra.items():
        deps = doc["stages"][stage]["deps"]
        for module in paths:
            deps.remove(module)
    if missing or extra:
        with path.open("w") as f:
            yaml.dump(doc, f)
    return 0

if __name__ == "__main__":
    sys.exit(main())
