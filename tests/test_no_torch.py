"""`shelf --help`, `list`, `get`, `label`, `delete` and shell completion never import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env, run_shelf

import torchshelf


def _imported_modules(
    args: list[str], store: Path, **env: str
) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Run the CLI under `-X importtime` and return the top-level modules it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "torchshelf", *args],
        env=child_env(store, **env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=store.parent,
    )
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert modules, "no -X importtime output: the check would pass vacuously"
    return modules, proc


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import zoo

    store = tmp_path_factory.mktemp("notorch") / "store"
    tag = torchshelf.save_model("mlp", zoo.MLP(), labels={"stage": "dev"}, store=store)
    torchshelf.save_model("mlp", zoo.MLP(), store=store)
    return store, str(tag)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["list"],
        ["list", "--output", "json"],
        ["list", "mlp", "--label", "stage in (dev,prod)", "--output", "tags"],
        ["get", "mlp:latest"],
        ["get", "mlp", "--output", "json"],
        ["label", "TAG", "stage=production", "--remove", "old"],
        ["get", "missing-model"],
        ["delete", "--yes", "TAG"],
        ["models", "--help"],
        ["models", "list", "--label", "stage=dev"],
        ["models", "get", "mlp:latest", "--output", "json"],
        ["list", "missing-model"],
    ],
    ids=lambda a: " ".join(a),
)
def test_everyday_commands_do_not_import_torch(
    populated: tuple[Path, str], args: list[str]
) -> None:
    store, tag = populated
    args = [tag if a == "TAG" else a for a in args]
    modules, proc = _imported_modules(args, store)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert "torch" not in modules, f"`shelf {' '.join(args)}` imported torch"
    assert "numpy" not in modules


@pytest.mark.parametrize(
    ("shell", "env"),
    [
        ("bash", {"COMP_WORDS": "shelf li", "COMP_CWORD": "1"}),
        ("zsh", {"_TYPER_COMPLETE_ARGS": "shelf get "}),
        ("fish", {"_TYPER_COMPLETE_ARGS": "shelf l", "_TYPER_COMPLETE_FISH_ACTION": "get-args"}),
    ],
)
def test_shell_completion_does_not_import_torch(
    populated: tuple[Path, str], shell: str, env: dict[str, str]
) -> None:
    store, _ = populated
    modules, proc = _imported_modules([], store, _SHELF_COMPLETE=f"complete_{shell}", **env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), f"{shell} completion answered nothing"
    assert "torch" not in modules


def test_bash_completion_offers_commands(populated: tuple[Path, str]) -> None:
    store, _ = populated
    env = child_env(store, _SHELF_COMPLETE="complete_bash", COMP_WORDS="shelf ver", COMP_CWORD="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torchshelf"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.split() == ["verify"]


def test_the_check_itself_sees_torch_when_save_imports_it(
    populated: tuple[Path, str], tmp_path: Path
) -> None:
    store, _ = populated
    modules, proc = _imported_modules(["save", "other", "zoo:make_mlp"], store)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch" in modules
    assert run_shelf("list", "other", "--output", "tags", store=store).stdout.startswith("other:")
