"""The README's quick start and CI wiring stay true."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_script_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "TORCHSHELF_HOME": str(tmp_path / "store")}
    shelf_dir = Path(sys.executable).parent
    env["PATH"] = f"{shelf_dir}{os.pathsep}{env.get('PATH', '')}"
    assert shutil.which("shelf", path=env["PATH"]), "the `shelf` console script is not installed"
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "quickstart.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "outputs match the original bit for bit" in result.stdout


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"# 2\. .*\n(.+)\n", readme)
    assert block, "README.md lost its second quick-start command"
    command = block.group(1).strip()
    assert "pytest" in command
    assert command in (ROOT / ".ci" / "run").read_text(), ".ci/run must run README's test command"
