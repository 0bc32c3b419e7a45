"""Fill the generated blocks of docs/*.md from the files they name, so results tables never go stale.

A block is

    <!-- generated from metrics/eval_table.md -->
    ...whatever the file holds...
    <!-- end generated -->

and is replaced by the named file's text (a path relative to the repository root). `--check` changes
nothing and exits 1 when a block differs from its file (the docs test runs it).

    .venv/bin/python tools/render_docs.py          # rewrite the blocks
    .venv/bin/python tools/render_docs.py --check  # are the docs in sync with the metrics?
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- generated from (?P<src>\S+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)


def render(text: str, root: Path = ROOT) -> str:
    """`text` with every generated block replaced by its source file's text."""

    def fill(m: re.Match) -> str:
        src = root / m.group("src")
        if not src.is_file():
            raise FileNotFoundError(f"generated block names {m.group('src')}, which does not exist")
        return m.group(1) + src.read_text().rstrip("\n") + "\n" + m.group(4)

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report stale docs instead of rewriting them")
    args = parser.parse_args(argv)
    stale = []
    for doc in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]:
        text = doc.read_text()
        new = render(text)
        if new != text:
            stale.append(doc.relative_to(ROOT))
            if not args.check:
                doc.write_text(new)
    if args.check and stale:
        print(f"stale generated blocks in {', '.join(map(str, stale))}: run tools/render_docs.py", file=sys.stderr)
        return 1
    print(("rewrote " if stale else "up to date: ") + (", ".join(map(str, stale)) if stale else "docs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
