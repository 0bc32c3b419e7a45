"""Results tables in the docs are generated from the committed metrics, never typed by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from render_docs import render


@pytest.mark.unit
def test_generated_blocks_are_filled_from_their_file(tmp_path):
    (tmp_path / "m.md").write_text("| a | b |\n")
    doc = "intro\n<!-- generated from m.md -->\nold table\n<!-- end generated -->\noutro\n"
    assert render(doc, tmp_path) == "intro\n<!-- generated from m.md -->\n| a | b |\n<!-- end generated -->\noutro\n"
    with pytest.raises(FileNotFoundError, match="nope.md"):
        render("<!-- generated from nope.md -->\nx\n<!-- end generated -->", tmp_path)


@pytest.mark.unit
def test_docs_are_in_sync_with_the_metrics():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "render_docs.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
