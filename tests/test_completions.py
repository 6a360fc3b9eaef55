"""completions/ holds the bash, zsh and fish scripts generated from the Typer app, kept current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT, child_env

SCRIPTS = ("shelf.bash", "shelf.zsh", "shelf.fish")


def test_committed_completion_scripts_match_the_app(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "completions" / "generate.py"), str(tmp_path)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for name in SCRIPTS:
        committed = ROOT / "completions" / name
        assert committed.is_file(), (
            f"completions/{name} is missing; run `python completions/generate.py`"
        )
        assert committed.read_text() == (tmp_path / name).read_text(), (
            f"completions/{name} is stale; run `python completions/generate.py` and commit the result"
        )


def test_completion_scripts_call_back_into_shelf() -> None:
    for name in SCRIPTS:
        text = (ROOT / "completions" / name).read_text()
        assert "_SHELF_COMPLETE=complete_" in text
        assert "shelf" in text
