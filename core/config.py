"""Where things are: the store root and other settings, read in one place.

Precedence for the store root: an explicit path (the `--store` flag) > `TORCHSHELF_HOME` >
`store` in `./shelf.toml` or `[tool.torchshelf]` in `./pyproject.toml` > `~/.torchshelf`.
A relative `store` in a config file is relative to that file's directory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UsageError

ENV_HOME = "TORCHSHELF_HOME"
ENV_REMOTE = "TORCHSHELF_REMOTE"
ENV_REMOTE_STALL = (
    "TORCHSHELF_REMOTE_STALL_TIMEOUT"  # seconds without progress before a transfer fails
)
ENV_API_TOKEN = "TORCHSHELF_API_TOKEN"
ENV_ENDPOINT = "AWS_ENDPOINT_URL"  # the standard AWS variable; a `[remote] endpoint_url` wins
ENV_MAX_IMPORT = "TORCHSHELF_MAX_IMPORT_BYTES"
ENV_SUPERVISOR_PID = "TORCHSHELF_SUPERVISOR_PID"  # set by `shelf serve --workers` for its workers
ENV_COMPLETE = "_SHELF_COMPLETE"  # click's shell-completion switch for the `shelf` program
DEFAULT_MAX_IMPORT = 256 << 30
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

    `endpoint_url` comes from `[remote] endpoint_url`, else `AWS_ENDPOINT_URL`; `stall_timeout`
    from `TORCHSHELF_REMOTE_STALL_TIMEOUT`, else `[remote] stall_timeout`; other keys of
    `[remote]` (`region`, `profile`) are passed through. Credentials are left to botocore.
    """
    settings, _ = project_config()
    remote = dict(settings.get("remote") or {})
    url = explicit_url or os.environ.get(ENV_REMOTE) or remote.get("url")
    if url:
        remote["url"] = url
    if not remote.get("endpoint_url") and os.environ.get(ENV_ENDPOINT):
        remote["endpoint_url"] = os.environ[ENV_ENDPOINT]
    stall = os.environ.get(ENV_REMOTE_STALL) or remote.get("stall_timeout")
    if stall is not None:
        try:
            remote["stall_timeout"] = float(stall)
            if remote["stall_timeout"] <= 0:
                raise ValueError(stall)
        except (TypeError, ValueError):
            raise UsageError(
                f"invalid remote stall_timeout {stall!r} ({ENV_REMOTE_STALL} or [remote] "
                "stall_timeout): give seconds > 0"
            ) from None
    return remote


def max_import_bytes() -> int:
    """The most bytes an archive import may unpack: `TORCHSHELF_MAX_IMPORT_BYTES`, else 256 GiB."""
    raw = os.environ.get(ENV_MAX_IMPORT)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_IMPORT
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(f"{ENV_MAX_IMPORT}={raw!r} must be a whole number of bytes (>= 0)")
    return value


def api_token(explicit: str | None = None) -> tuple[str | None, str | None]:
    """The serving api token and where it came from: `--api-token` > `TORCHSHELF_API_TOKEN`."""
    if explicit:
        return explicit, "--api-token"
    env = os.environ.get(ENV_API_TOKEN)
    return (env, ENV_API_TOKEN) if env else (None, None)


def supervisor_pid() -> int | None:
    """The pid of the `shelf serve --workers` supervisor that started this worker, if any."""
    raw = os.environ.get(ENV_SUPERVISOR_PID)
    return int(raw) if raw and raw.isdigit() else None


def completion_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this `shelf` process was started by a shell's completion script."""
    return ENV_COMPLETE in (os.environ if environ is None else environ)


def bold_allowed(is_terminal: bool) -> bool:
    """Whether the plain tables may print bold text, by rich's rules: on a terminal or with
    FORCE_COLOR set, and never on a dumb terminal (NO_COLOR turns off colours, not bold)."""
    if os.environ.get("TERM") == "dumb":
        return False
    return is_terminal or bool(os.environ.get("FORCE_COLOR"))
