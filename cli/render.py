"""Rendering for the CLI: rich tables and JSON on stdout, messages and progress on stderr."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from rich.console import Console


class LazyConsole:
    """A rich `Console` made on first use: importing rich costs ~15 ms, and `shelf list`
    piped to a script never needs it. Attribute access is forwarded to the real console."""

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        """The real console (for rich APIs that take one, e.g. `Progress(console=...)`)."""
        if self._console is None:
            from rich.console import Console

            if self._stderr:
                self._console = Console(stderr=True, soft_wrap=True)
            else:
                # Piped output is for scripts: never truncate a table to rich's 80 columns.
                self._console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


stdout = LazyConsole(stderr=False)
stderr = LazyConsole(stderr=True)


def human_size(size: int) -> str:
    """Bytes as people read them: 512 B, 1.5 KiB, 3.2 GiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def fail(exc: BaseException, code: int | None = None) -> NoReturn:
    """Print `error: ...` on stderr and exit with the error's exit code (1 by default)."""
    from rich.markup import escape

    # escape: messages hold literal brackets (`torchshelf[s3]`, `s3://bucket[/prefix]`)
    stderr.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True)
    raise SystemExit(code if code is not None else getattr(exc, "exit_code", 1))


def print_json(data: Any) -> None:
    """Exactly one JSON document on stdout (for `jq` in CI)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_columns(headers: list[str], rows: list[list[str]]) -> None:
    """A plain aligned table on stdout.

    Used for listings instead of `rich.table.Table`, which measures every cell (about 1 ms a
    row here): a 10,000-version `shelf list` must answer in well under a second.
    """
    widths = [len(h) for h in headers]
    for i in range(len(headers)):
        widths[i] = max(widths[i], max((len(r[i]) for r in rows), default=0))
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    head = fmt.format(*headers).rstrip()
    if sys.stdout.isatty():
        stdout.print(f"[bold]{head}[/]", highlight=False)
    else:
        sys.stdout.write(head + "\n")
    sys.stdout.write("".join(fmt.format(*r).rstrip() + "\n" for r in rows))
    sys.stdout.flush()
