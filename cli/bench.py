"""`shelf bench` (placeholder until the bench work merges)."""

import typer


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
