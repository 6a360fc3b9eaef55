"""Where things are: the store root and other settings, read in one place.

Precedence for the store root: an explicit path (the `--store` flag) > `TORCHSHELF_HOME` >
`store` in `./shelf.toml` or `[tool.torchshelf]` in `./pyproject.toml` > `~/.torchshelf`.
A relative `store` in a config file is relative to that file's directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .errors import UsageError

ENV_HOME = "TORCHSHELF_HOME"
ENV_REMOTE = "TORCHSHELF_REMOTE"
ENV_API_TOKEN = "TORCHSHELF_API_TOKEN"
ENV_ENDPOINT = "AWS_ENDPOINT_URL"  # the standard AWS variable; a `[remote] endpoint_url` wins
DEFAULT_HOME = Path("~/.torchshelf")


def _read_toml(path: Path) -> dict[str, Any]:
    # Imported here: with TORCHSHELF_HOME set, `shelf list` never reads a config file.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from None


def project_config(cwd: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """The torchshelf settings from `shelf.toml` (preferred) or `pyproject.toml` in `cwd`."""
    here = Path.cwd() if cwd is None else cwd
    shelf = here / "shelf.toml"
    if shelf.is_file():
        return _read_toml(shelf), shelf
    pyproject = here / "pyproject.toml"
    if pyproject.is_file():
        section = _read_toml(pyproject).get("tool", {}).get("torchshelf")
        if isinstance(section, dict):
            return section, pyproject
    return {}, None


def store_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the store root by the documented precedence (see the module docstring)."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser().resolve()
    settings, source = project_config()
    value = settings.get("store")
    if value is not None:
        if not isinstance(value, str) or not value:
            raise UsageError(f"'store' in {source} must be a non-empty path string")
        path = Path(value).expanduser()
        if not path.is_absolute() and source is not None:
            path = source.parent / path
        return path.resolve()
    return DEFAULT_HOME.expanduser().resolve()


def remote_settings(explicit_url: str | None = None) -> dict[str, Any]:
    """The remote store settings: `url` from the flag > `TORCHSHELF_REMOTE` > `[remote] url`.

    `endpoint_url` comes from `[remote] endpoint_url`, else `AWS_ENDPOINT_URL`; other keys of
    `[remote]` (`region`, `profile`) are passed through. Credentials are left to botocore.
    """
    settings, _ = project_config()
    remote = dict(settings.get("remote") or {})
    url = explicit_url or os.environ.get(ENV_REMOTE) or remote.get("url")
    if url:
        remote["url"] = url
    if not remote.get("endpoint_url") and os.environ.get(ENV_ENDPOINT):
        remote["endpoint_url"] = os.environ[ENV_ENDPOINT]
    return remote
