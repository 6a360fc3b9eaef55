"""The command line BentoML users reach for: `shelf models ...` and `shelf export TAG DIR`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import Shelf

import torchshelf


def _save(name: str, **labels: str) -> torchshelf.Model:
    return torchshelf.save_model(name, torch.nn.Linear(2, 1), labels=labels)


def test_models_list_is_list(shelf: Shelf, store_home: Path) -> None:
    prod = _save("ranker", stage="production")
    _save("ranker", stage="dev")
    grouped = shelf("models", "list", "--label", "stage=production", "--output", "tags")
    assert grouped.returncode == 0, grouped.stderr
    assert grouped.stdout == f"{prod}\n"
    assert grouped.stdout == shelf("list", "-l", "stage=production", "-o", "tags").stdout


def test_models_get_export_import_delete(shelf: Shelf, store_home: Path, tmp_path: Path) -> None:
    saved = _save("ranker")
    got = shelf("models", "get", str(saved), "--output", "json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["tag"] == str(saved)
    out = tmp_path / "out"
    out.mkdir()
    exported = shelf("models", "export", str(saved), f"{out}/")
    assert exported.returncode == 0, exported.stderr
    archive = out / f"ranker-{saved.version}.shelf"
    assert archive.is_file() and str(archive) in exported.stderr
    deleted = shelf("models", "delete", str(saved), "--yes")
    assert deleted.returncode == 0, deleted.stderr
    imported = shelf("models", "import", str(archive))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == str(saved)


def test_export_to_current_directory(shelf: Shelf, store_home: Path) -> None:
    saved = _save("ranker")
    proc = shelf("export", "ranker", ".")  # cwd is store_home.parent
    assert proc.returncode == 0, proc.stderr
    assert (store_home.parent / f"ranker-{saved.version}.shelf").is_file()
    plain = shelf("export", "ranker", "plain")
    assert plain.returncode == 0, plain.stderr
    assert (store_home.parent / "plain.shelf").is_file()


def test_export_to_missing_directory_is_a_clear_error(shelf: Shelf, store_home: Path) -> None:
    _save("ranker")
    proc = shelf("export", "ranker", "missing/")
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not (store_home.parent / "missing").exists()


def test_list_of_unknown_name_is_empty_on_the_cli(shelf: Shelf, store_home: Path) -> None:
    _save("ranker")
    proc = shelf("models", "list", "nope", "--output", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    tags = shelf("list", "nope", "--output", "tags")
    assert tags.returncode == 0 and tags.stdout == ""


def test_help_lists_the_models_group(shelf: Shelf) -> None:
    proc = shelf("models", "--help")
    assert proc.returncode == 0
    for command in ("list", "get", "delete", "export", "import", "push", "pull"):
        assert command in proc.stdout
