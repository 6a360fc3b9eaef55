"""Write shelf.bash, shelf.zsh and shelf.fish from the Typer app (what `--show-completion` prints).

Run `python completions/generate.py [OUT_DIR]` after changing commands; a test fails while the
committed scripts are stale. The scripts call back into `shelf` (`_SHELF_COMPLETE=complete_<shell>`)
for the actual candidates, so they change only when the program name or Typer's template does.
"""

from __future__ import annotations

import sys
from pathlib import Path

SHELLS = ("bash", "zsh", "fish")


def scripts() -> dict[str, str]:
    """File name -> completion script, for every supported shell."""
    from typer._completion_shared import get_completion_script

    from torchshelf.cli.app import PROG

    var = f"_{PROG.replace('-', '_').upper()}_COMPLETE"
    return {
        f"{PROG}.{shell}": get_completion_script(
            prog_name=PROG, complete_var=var, shell=shell
        ).rstrip("\n")
        + "\n"
        for shell in SHELLS
    }


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in scripts().items():
        (out / name).write_text(text)
        print(out / name)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
