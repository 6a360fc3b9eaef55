"""The `shelf` Typer application: global options and the registration of every command group.

Each command module exposes `register(app)`; commands parse, call one core function, render.
Nothing here imports torch: commands that need it import it inside their body.
"""

from __future__ import annotations

import typer

from . import bench, deploy, remote_cmds, serve, store_cmds
from .quick import apply_store_flag
from .render import run_guarded

PROG = "shelf"

app = typer.Typer(
    name=PROG,
    help="torchshelf: a versioned PyTorch model store, a batching inference server and a benchmark.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    # Eager, so `shelf --version` works without a command (a plain option would make click
    # fail first with "Missing command").
    if value:
        from torchshelf import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _options(
    store: str = typer.Option(
        None,
        "--store",
        envvar=None,
        help="Store root (default: $TORCHSHELF_HOME, shelf.toml, ~/.torchshelf).",
        show_default=False,
    ),
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    """torchshelf: a versioned PyTorch model store, a batching inference server and a benchmark."""
    apply_store_flag(store)


store_cmds.register(app)
remote_cmds.register(app)
serve.register(app)
bench.register(app)
deploy.register(app)

# BentoML groups these under `bentoml models ...`; the same commands answer there too.
MODELS_GROUP = ("list", "get", "delete", "export", "import", "push", "pull")


def _models_group(parent: typer.Typer) -> typer.Typer:
    """`shelf models list|get|...`: the top-level commands again, under BentoML's grouping."""
    import copy

    group = typer.Typer(
        name="models",
        help="The model commands under BentoML's grouping: `shelf models list` is `shelf list`.",
        no_args_is_help=True,
    )
    for info in parent.registered_commands:
        callback = info.callback
        name = info.name or (callback.__name__.replace("_", "-") if callback else None)
        if name in MODELS_GROUP:
            alias = copy.copy(info)
            alias.name = name
            group.registered_commands.append(alias)
    return group


app.add_typer(_models_group(app), name="models", rich_help_panel="Store")


def main() -> None:
    """Run the Typer app: errors become one line on stderr and an exit code."""
    # A fixed program name: `python -m torchshelf` then completes and reads like `shelf`
    # (completion is keyed on `_SHELF_COMPLETE`, derived from this name).
    run_guarded(lambda: app(prog_name=PROG))
