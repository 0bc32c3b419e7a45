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


@pytest.mark.unit
def test_the_check_takes_the_committed_figures_or_the_local_ones_never_a_hand_edit(tmp_path, capsys):
    """After a local `dvc repro` (on another CPU type the figures differ a little) the docs still hold the
    committed figures: in sync. Docs rendered from the local figures: in sync. Anything else: stale."""
    from render_docs import main

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "docs").mkdir()
    (tmp_path / "m.md").write_text("| ndcg | 0.2522 |\n")
    (tmp_path / "README.md").write_text("no blocks\n")
    doc = tmp_path / "docs" / "a.md"
    doc.write_text("<!-- generated from m.md -->\n| ndcg | 0.2522 |\n<!-- end generated -->\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "figures")
    assert main(["--check"], tmp_path) == 0

    (tmp_path / "m.md").write_text("| ndcg | 0.2513 |\n")  # this machine's own repro
    assert main(["--check"], tmp_path) == 0
    doc.write_text("<!-- generated from m.md -->\n| ndcg | 0.2600 |\n<!-- end generated -->\n")  # typed by hand
    assert main(["--check"], tmp_path) == 1
    assert "docs/a.md" in capsys.readouterr().err
    assert main([], tmp_path) == 0  # rewritten from the local figures, which the check then accepts
    assert "0.2513" in doc.read_text() and main(["--check"], tmp_path) == 0
    doc.write_text(doc.read_text() + "<!-- generated from new.md -->\nx\n<!-- end generated -->\n")
    (tmp_path / "new.md").write_text("y\n")  # a results file not committed yet: only its own text will do
    assert main(["--check"], tmp_path) == 1
