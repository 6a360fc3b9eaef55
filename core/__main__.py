"""`python -m torchshelf`: the `shelf` command (the one place core reaches into the CLI)."""

from torchshelf.cli.main import main

main()
