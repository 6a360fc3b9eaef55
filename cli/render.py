"""Rendering for the CLI: rich tables and JSON on stdout, messages and progress on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from rich.console import Console

# Piped output is for scripts: never truncate a table to the 80 columns rich assumes off a tty.
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)
stderr = Console(stderr=True, soft_wrap=True)


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
    row here): a 1,000-version `shelf list` must answer in well under a second.
    """
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    last = len(headers) - 1

    def line(cells: list[str]) -> str:
        return "  ".join(
            c if i == last else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    head = line(headers)
    if sys.stdout.isatty():
        stdout.print(f"[bold]{head}[/]", highlight=False)
    else:
        sys.stdout.write(head + "\n")
    sys.stdout.write("".join(line(r) + "\n" for r in rows))
    sys.stdout.flush()
