"""Shared fixtures: a real store in tmp_path, the real `shelf` CLI in a subprocess, and helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
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


def run_shelf(
    *args: str,
    store: Path,
    input: str | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
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


def run_python(
    code: str,
    *,
    store: Path,
    timeout: float = 120,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter against `store`; fails the test if it exits non-zero."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(store),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
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

    def run(
        *args: str, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_shelf(
            *args, store=store_home, input=input, timeout=timeout, cwd=store_home.parent
        )

    return run


def outside_files(root: Path, store: Path) -> set[Path]:
    """Every path under `root` that is not inside `store` (to prove nothing escaped)."""
    return {p for p in root.rglob("*") if store not in p.parents and p != store}


# --- archives ------------------------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes]


def read_members(archive: Path) -> list[Member]:
    """Every member of a tar with its data (b"" for non-files), in order."""

    out = []
    with tarfile.open(archive) as tar:
        for info in tar:
            fh = tar.extractfile(info) if info.isreg() else None
            out.append((info, fh.read() if fh else b""))
    return out


def write_tar(path: Path, members: list[Member], mode: str = "w") -> Path:
    """Write members as given (sizes taken from the data of regular files)."""
    import io

    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for info, data in members:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def file_member(name: str, data: bytes) -> Member:

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def rewrite_manifest(members: list[Member], edit: Callable[[dict], object]) -> list[Member]:
    """The members with the first (the manifest) re-serialised after `edit(manifest_dict)`."""
    import copy
    import json

    info, data = members[0]
    manifest = json.loads(data)
    edit(manifest)
    return [(copy.copy(info), json.dumps(manifest).encode()), *members[1:]]


def retarget(members: list[Member], rel: str, data: bytes) -> list[Member]:
    """Replace one file's data and fix its sha256 and size in the manifest (a consistent edit)."""
    import hashlib

    def edit(m: dict) -> None:
        m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    out = rewrite_manifest(members, edit)
    return [(i, data if i.name.endswith("/" + rel) else d) for i, d in out]


TMPFS_MIB = 48  # small enough to fill in a test, big enough for a store and a small model


def mount_tmpfs(where: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here")
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A fresh 48 MiB tmpfs (skips without root), unmounted after the test."""
    where = tmp_path / "small-fs"
    mount_tmpfs(where)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
