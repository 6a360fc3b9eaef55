"""The store root follows the documented precedence: flag > env > shelf.toml / pyproject > home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchshelf import UsageError
from torchshelf.config import store_root


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORCHSHELF_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_default_is_dot_torchshelf_in_home(project: Path) -> None:
    assert store_root() == (project / "home" / ".torchshelf").resolve()


def test_pyproject_tool_section_sets_the_store(project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.torchshelf]\nstore = "models-here"\n')
    assert store_root() == (project / "models-here").resolve()


def test_shelf_toml_wins_over_pyproject(project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.torchshelf]\nstore = "from-pyproject"\n')
    (project / "shelf.toml").write_text('store = "from-shelf-toml"\n')
    assert store_root() == (project / "from-shelf-toml").resolve()


def test_env_wins_over_config_files(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "shelf.toml").write_text('store = "from-shelf-toml"\n')
    monkeypatch.setenv("TORCHSHELF_HOME", str(project / "from-env"))
    assert store_root() == (project / "from-env").resolve()


def test_explicit_path_wins_over_env(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHSHELF_HOME", str(project / "from-env"))
    assert store_root(project / "flag") == (project / "flag").resolve()


def test_broken_toml_is_a_clear_usage_error(project: Path) -> None:
    (project / "shelf.toml").write_text("store = \n")
    with pytest.raises(UsageError, match="shelf.toml is not valid TOML"):
        store_root()


def test_cli_store_flag_wins_over_env(project: Path) -> None:
    env = {**os.environ, "TORCHSHELF_HOME": str(project / "from-env")}
    flag = project / "from-flag"
    code = "import torch, torchshelf, sys; torchshelf.save_model('m', torch.nn.Linear(1, 1), store=sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(flag)], check=True, env=env)
    out = subprocess.run(
        [sys.executable, "-m", "torchshelf", "--store", str(flag), "list", "--output", "tags"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert out.startswith("m:")
    empty = subprocess.run(
        [sys.executable, "-m", "torchshelf", "list", "--output", "tags"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert empty == ""


def test_max_import_bytes_is_read_in_config_and_a_bad_value_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torchshelf import config

    monkeypatch.delenv(config.ENV_MAX_IMPORT, raising=False)
    assert config.max_import_bytes() == config.DEFAULT_MAX_IMPORT
    monkeypatch.setenv(config.ENV_MAX_IMPORT, "1024")
    assert config.max_import_bytes() == 1024
    for bad in ("lots", "-1", "1.5"):
        monkeypatch.setenv(config.ENV_MAX_IMPORT, bad)
        with pytest.raises(UsageError, match=config.ENV_MAX_IMPORT):
            config.max_import_bytes()


def test_the_api_token_comes_from_the_flag_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torchshelf import config

    monkeypatch.setenv(config.ENV_API_TOKEN, "from-env")
    assert config.api_token("from-flag") == ("from-flag", "--api-token")
    assert config.api_token(None) == ("from-env", config.ENV_API_TOKEN)
    monkeypatch.delenv(config.ENV_API_TOKEN)
    assert config.api_token(None) == (None, None)
