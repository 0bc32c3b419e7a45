"""Fill the generated blocks of docs/*.md from the files they name, so results tables never go stale.

A block is

    <!-- generated from metrics/eval_table.md -->
    ...whatever the file holds...
    <!-- end generated -->

and is replaced by the named file's text (a path relative to the repository root). `--check` changes
nothing and exits 1 when a block differs from its file (the docs test runs it). A doc whose blocks hold the
files as committed passes the check too: `dvc repro` rewrites metrics/ on the machine it runs on, and on
another CPU type the learned model's floats, so the figures, can differ slightly from the committed ones
(docs/evaluation.md) without the docs being stale.

    .venv/bin/python tools/render_docs.py          # rewrite the blocks
    .venv/bin/python tools/render_docs.py --check  # are the docs in sync with the metrics?
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- generated from (?P<src>\S+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)


def render(text: str, root: Path = ROOT, read: Callable[[str], str | None] | None = None) -> str:
    """`text` with every generated block replaced by its source file's text (`read(name)`, by default the file
    under `root`; None: there is no such file)."""

    def from_disk(name: str) -> str | None:
        src = root / name
        return src.read_text() if src.is_file() else None

    def fill(m: re.Match) -> str:
        body = (read or from_disk)(m.group("src"))
        if body is None:
            raise FileNotFoundError(f"generated block names {m.group('src')}, which does not exist")
        return m.group(1) + body.rstrip("\n") + "\n" + m.group(4)

    return BLOCK.sub(fill, text)


def committed(root: Path) -> Callable[[str], str | None]:
    """A reader of the files as the checkout's HEAD at `root` holds them (None: not committed, or no git)."""

    def read(name: str) -> str | None:
        proc = subprocess.run(["git", "-C", str(root), "show", f"HEAD:{name}"], capture_output=True, text=True,
                              check=False)
        return proc.stdout if proc.returncode == 0 else None

    return read


def in_sync(text: str, root: Path) -> bool:
    """Do the doc's blocks hold their files, as they are or as committed?"""
    if render(text, root) == text:
        return True
    try:
        return render(text, root, read=committed(root)) == text
    except FileNotFoundError:  # a block of a file not committed yet
        return False


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report stale docs instead of rewriting them")
    args = parser.parse_args(argv)
    stale = []
    for doc in sorted((root / "docs").glob("*.md")) + [root / "README.md"]:
        text = doc.read_text()
        if args.check:
            if not in_sync(text, root):
                stale.append(doc.relative_to(root))
            continue
        new = render(text, root)
        if new != text:
            stale.append(doc.relative_to(root))
            doc.write_text(new)
    if args.check and stale:
        print(f"stale generated blocks in {', '.join(map(str, stale))}: run tools/render_docs.py", file=sys.stderr)
        return 1
    print(("rewrote " if stale else "up to date: ") + (", ".join(map(str, stale)) if stale else "docs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
