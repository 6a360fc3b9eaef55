"""The `shelf` Typer application: global options and the registration of every command group.

Each command module exposes `register(app)`; commands parse, call one core function, render.
Nothing here imports torch: commands that need it import it inside their body.
"""

from __future__ import annotations

import sys

import typer

from . import bench, serve, store_cmds
from .render import fail

app = typer.Typer(
    name="shelf",
    help="torchshelf: a versioned PyTorch model store, a batching inference server and a benchmark.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

store_cmds.register(app)
serve.register(app)
bench.register(app)


def main() -> None:
    """Console-script entry point: run the app, turning `ShelfError` into a one-line message."""
    from torchshelf.errors import ShelfError

    try:
        app()
    except ShelfError as exc:  # raised outside a command body (e.g. in a callback)
        fail(exc)
    sys.exit(0)
