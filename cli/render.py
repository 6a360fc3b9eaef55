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
    stderr.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
    raise SystemExit(code if code is not None else getattr(exc, "exit_code", 1))


def print_json(data: Any) -> None:
    """Exactly one JSON document on stdout (for `jq` in CI)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
