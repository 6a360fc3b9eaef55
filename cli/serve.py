"""`shelf serve` (placeholder until the serve work merges)."""

import typer


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
