"""Store commands (in progress)."""

import typer


def register(app: typer.Typer) -> None:
    """Add the commands to the app."""
