"""Shared fixtures: a real store in tmp_path, the real `shelf` CLI in a subprocess, and helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

Shelf = Callable[..., "subprocess.CompletedProcess[str]"]


def child_env(store: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for a child process: our store, tests/ importable, no stray config."""
    env = dict(os.environ)
    if store is not None:
        env["TORCHSHELF_HOME"] = str(store)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH", "")]))
    env.pop("TORCHSHELF_MAX_IMPORT_BYTES", None)
    env.update(extra)
    return env


def run_shelf(*args: str, store: Path, input: str | None = None, timeout: float = 120,
              cwd: Path | None = None, env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (`python -m torchshelf ...`) and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "torchshelf", *map(str, args)],
        env=env if env is not None else child_env(store),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def run_python(code: str, *, store: Path, timeout: float = 120, cwd: Path | None = None,
               ) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter against `store`; fails the test if it exits non-zero."""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=child_env(store), capture_output=True, text=True,
        timeout=timeout, cwd=cwd,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def store_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty store root; TORCHSHELF_HOME points at it for the test and its children."""
    home = tmp_path / "store"
    monkeypatch.setenv("TORCHSHELF_HOME", str(home))
    monkeypatch.delenv("TORCHSHELF_MAX_IMPORT_BYTES", raising=False)
    monkeypatch.chdir(tmp_path)  # no shelf.toml / pyproject.toml from the repository
    yield home


@pytest.fixture
def shelf(store_home: Path) -> Shelf:
    """`shelf("list", "--output", "json")` runs the CLI against `store_home`."""

    def run(*args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_shelf(*args, store=store_home, input=input, timeout=timeout, cwd=store_home.parent)

    return run


def outside_files(root: Path, store: Path) -> set[Path]:
    """Every path under `root` that is not inside `store` (to prove nothing escaped)."""
    return {p for p in root.rglob("*") if store not in p.parents and p != store}
