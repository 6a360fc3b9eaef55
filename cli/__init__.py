"""The `shelf` command line: a thin Typer layer over `torchshelf` (the core library)."""
