"""Rendering for the CLI: rich tables and JSON on stdout, messages and progress on stderr."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from rich.console import Console


class LazyConsole:
    """A rich `Console` made on first use: importing rich costs ~15 ms, and `shelf list`
    piped to a script never needs it. Attribute access is forwarded to the real console."""

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        """The real console (for rich APIs that take one, e.g. `Progress(console=...)`)."""
        if self._console is None:
            from rich.console import Console

            if self._stderr:
                self._console = Console(stderr=True, soft_wrap=True)
            else:
                # Piped output is for scripts: never truncate a table to rich's 80 columns.
                self._console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


stdout = LazyConsole(stderr=False)
stderr = LazyConsole(stderr=True)


def fail(exc: BaseException, code: int | None = None) -> NoReturn:
    """Print `error: ...` on stderr and exit with the error's exit code (1 by default)."""
    from rich.markup import escape

    # escape: messages hold literal brackets (`torchshelf[s3]`, `s3://bucket[/prefix]`)
    stderr.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True)
    raise SystemExit(code if code is not None else getattr(exc, "exit_code", 1))


def _dumps(data: Any) -> bytes:
    """`data` as indented JSON. The stdlib encoder has no C path once `indent` is set (about
    150 µs a version for `shelf list -o json`), so orjson writes it when installed (the `fast`
    extra). The documents are equal, NaN and infinity written as null by both (they are not
    JSON); only spellings differ: non-ASCII text as UTF-8 rather than `\\u` escapes, `1e16`
    for `1e+16`."""
    try:
        import orjson
    except ImportError:
        pass
    else:
        with contextlib.suppress(TypeError):  # e.g. an int beyond 64 bits: the stdlib copes
            # datetimes and dataclasses go to `default` as with the stdlib, not orjson's forms
            options = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
            return orjson.dumps(
                data,
                default=str,
                option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | options,
            )
    try:
        return json.dumps(data, indent=2, default=str, allow_nan=False).encode()
    except ValueError:  # NaN or infinity: not JSON; written as null, as orjson does
        return json.dumps(_finite(data), indent=2, default=str).encode()


def _finite(value: Any) -> Any:
    """`value` with every NaN and infinity replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def print_json(data: Any) -> None:
    """Exactly one JSON document on stdout (for `jq` in CI)."""
    text = _dumps(data) + b"\n"
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        buffer.write(text)
        buffer.flush()
    else:  # a text-only stream (some test runners)
        sys.stdout.write(text.decode())
        sys.stdout.flush()


def _bold(text: str) -> str:
    """`text` in bold on a terminal, as rich would print it; unchanged when piped."""
    from torchshelf.config import bold_allowed

    return f"\x1b[1m{text}\x1b[0m" if bold_allowed(sys.stdout.isatty()) else text


def print_columns(headers: list[str], rows: list[list[str]]) -> None:
    """A plain aligned table on stdout, the header in bold on a terminal.

    Used for listings instead of `rich.table.Table`, which measures every cell (about 1 ms a
    row here), and without rich at all, whose import alone is ~15 ms of a `shelf list`.
    """
    columns = zip(*rows, strict=True) if rows else ([] for _ in headers)
    widths = [
        max(len(h), max(map(len, c), default=0)) for h, c in zip(headers, columns, strict=True)
    ]
    fmt = "  ".join([*(f"{{:<{w}}}" for w in widths[:-1]), "{}"])
    sys.stdout.write(_bold(fmt.format(*headers).rstrip()) + "\n")
    sys.stdout.write("\n".join([fmt.format(*r).rstrip() for r in rows]) + ("\n" if rows else ""))
    sys.stdout.flush()


def print_fields(fields: list[tuple[str, str]]) -> None:
    """`key  value` lines on stdout with the values aligned, the keys in bold on a terminal."""
    width = max((len(k) for k, _ in fields), default=0)
    sys.stdout.write("".join(f"{_bold(k.ljust(width))}  {v}".rstrip() + "\n" for k, v in fields))
    sys.stdout.flush()


def run_guarded(command: Callable[[], object]) -> None:
    """Run a parsed command: errors become one `error: ...` line on stderr and an exit code.

    A closed pipe (`shelf list | head -1`) exits 1 without a message or traceback, as click does.
    """
    from torchshelf.errors import ShelfError

    try:
        command()
    except ShelfError as exc:
        fail(exc)
    except BrokenPipeError:
        # Python would fail again flushing stdout at exit; point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None
    except OSError as exc:
        fail(exc, 1)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
