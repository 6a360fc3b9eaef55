"""The `shelf` console script: plain `list` and `get` take the quick path, the rest goes to Typer."""

from __future__ import annotations

import os
import sys

from .quick import parse
from .render import run_guarded


def main() -> None:
    """Run the command on `sys.argv`; see `quick` for which command lines skip Typer."""
    call = parse(sys.argv[1:], os.environ)
    if call is None:
        from .app import main as typer_main

        typer_main()
    else:
        run_guarded(call)
