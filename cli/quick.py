"""The quick path: `shelf list` and `shelf get` answered without importing typer, click or rich.

Before Typer parses one argument it imports click and rich and builds the whole command tree,
every option of every command: about 85 ms of a 160 ms `shelf list`, against a budget of
100 ms for a 1,000-version listing. Scripts run list and get in loops, so their plain forms are
recognised here first and handed straight to `listing`, the same functions the Typer commands
call, so the output is one implementation.

This parser accepts only what it fully understands: the global `--store`, the `models` group,
and the documented options of `list` and `get`, spelled as click spells them. Anything else
(help, completion, `--version`, `--remote`, an unknown, abbreviated or malformed option, a bad
`--output` value, a missing value) returns None, and Typer parses the command line instead. So
Typer stays the one source of help text and usage errors, and a command line means the same
thing on both paths (tests/test_quick_cli.py runs both and compares them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial

from torchshelf.config import ENV_HOME, completion_requested

from . import listing

# option -> (attribute, takes a value); both long and short spellings, as the commands declare
_LIST_OPTIONS = {
    "--label": ("selectors", True),
    "-l": ("selectors", True),
    "--latest": ("latest", False),
    "--output": ("output", True),
    "-o": ("output", True),
}
_GET_OPTIONS = {"--output": ("output", True), "-o": ("output", True)}


def apply_store_flag(value: str | None) -> None:
    """`shelf --store DIR`: the flag wins over everything. Core reads the root from the
    environment, and child processes (serve workers) inherit it."""
    if value:
        os.environ[ENV_HOME] = os.path.abspath(os.path.expanduser(value))


def _scan(
    args: list[str], options: Mapping[str, tuple[str, bool]]
) -> tuple[dict[str, list[str]], list[str]] | None:
    """Options and positionals of one command, or None where click's reading could differ."""
    found: dict[str, list[str]] = {}
    positionals: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            positionals.append(arg)
            continue
        flag, eq, attached = arg.partition("=")
        if flag not in options or (eq and not flag.startswith("--")):
            return None  # unknown, -h/--help, `--`, `-`, or `-o=json` (click keeps the `=`)
        attr, takes_value = options[flag]
        if not takes_value:
            if eq:
                return None  # click refuses a value for a flag
            found.setdefault(attr, []).append("")
            continue
        if eq:
            value = attached
        elif i < len(args):
            value, i = args[i], i + 1
        else:
            return None  # missing value: Typer says so
        found.setdefault(attr, []).append(value)
    return found, positionals


def parse(argv: list[str], environ: Mapping[str, str]) -> Callable[[], None] | None:
    """The command `argv` (without the program name) asks for, or None to let Typer parse it."""
    if completion_requested(environ):
        return None  # shell completion is click's
    i, store = 0, None
    while i < len(argv) and argv[i].startswith("--store"):
        flag, eq, attached = argv[i].partition("=")
        if flag != "--store":
            return None
        if eq:
            store, i = attached, i + 1
        elif i + 1 < len(argv):
            store, i = argv[i + 1], i + 2
        else:
            return None
    if argv[i : i + 1] == ["models"]:
        i += 1
    build = _COMMANDS.get(argv[i]) if i < len(argv) else None
    call = build(argv[i + 1 :]) if build else None
    return partial(_run, store, call) if call else None


def _run(store: str | None, call: Callable[[], None]) -> None:
    apply_store_flag(store)
    call()


def _output(found: dict[str, list[str]], choices: tuple[str, ...]) -> str | None:
    output = found.get("output", ["table"])[-1]  # click: the last one wins
    return output if output in choices else None


def _list_call(args: list[str]) -> Callable[[], None] | None:
    scanned = _scan(args, _LIST_OPTIONS)
    if scanned is None or len(scanned[1]) > 1:
        return None
    found, positionals = scanned
    output = _output(found, listing.LIST_OUTPUTS)
    if output is None:
        return None
    return partial(
        listing.list_versions,
        positionals[0] if positionals else None,
        found.get("selectors", []),
        latest="latest" in found,
        output=output,
    )


def _get_call(args: list[str]) -> Callable[[], None] | None:
    scanned = _scan(args, _GET_OPTIONS)
    if scanned is None or len(scanned[1]) != 1:
        return None
    found, positionals = scanned
    output = _output(found, listing.GET_OUTPUTS)
    if output is None:
        return None
    return partial(listing.show_version, positionals[0], output=output)


_COMMANDS: dict[str, Callable[[list[str]], Callable[[], None] | None]] = {
    "list": _list_call,
    "get": _get_call,
}
