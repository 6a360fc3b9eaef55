"""The quick path (cli/quick.py) answers plain `list`/`get` exactly as the Typer commands do.

Every command line the quick parser takes is run both ways and must give the same stdout,
stderr and exit code; the ones it must leave to Typer (help, completion, odd spellings) are
checked to fall through. Real processes check that the quick path imports neither typer nor
rich, and that a closed pipe ends it quietly.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import child_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchshelf
from torchshelf.cli import quick
from torchshelf.cli.app import main as typer_main
from torchshelf.cli.render import run_guarded


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """Two names, three versions, two label values and one prefix-resolvable version."""
    import zoo

    root = tmp_path_factory.mktemp("quick") / "store"
    tags = [
        torchshelf.save_model("mlp", zoo.MLP(), labels={"stage": "dev"}, store=root),
        torchshelf.save_model("mlp", zoo.MLP(), labels={"stage": "production"}, store=root),
        torchshelf.save_model("net", zoo.MLP(), metadata={"acc": 0.9}, store=root),
    ]
    yield root, str(tags[1])


class _Streams:
    """sys.stdout/sys.stderr replaced by byte-backed text streams, as a process has them."""

    def __init__(self) -> None:
        self.out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        self.err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")

    def text(self) -> tuple[str, str]:
        results = []
        for stream in (self.out, self.err):
            stream.flush()
            results.append(stream.buffer.getvalue().decode())  # type: ignore[attr-defined]
        return results[0], results[1]


def _run_in_process(call: object, root: Path) -> tuple[str, str, int]:
    """Run `call()` with fresh stdout/stderr and TORCHSHELF_HOME=root; return out, err, code."""
    from torchshelf.cli import render

    streams = _Streams()
    saved = os.environ.get("TORCHSHELF_HOME")
    os.environ["TORCHSHELF_HOME"] = str(root)
    # rich consoles are made on first use and keep their stream: make them again per run
    render.stdout._console = render.stderr._console = None
    code = 0
    try:
        with contextlib.redirect_stdout(streams.out), contextlib.redirect_stderr(streams.err):
            try:
                call()  # type: ignore[operator]
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        render.stdout._console = render.stderr._console = None
        if saved is None:
            os.environ.pop("TORCHSHELF_HOME", None)
        else:
            os.environ["TORCHSHELF_HOME"] = saved
    out, err = streams.text()
    return out, err, code


def both_ways(argv: list[str], root: Path) -> tuple[tuple[str, str, int], tuple[str, str, int]]:
    """(quick path, Typer) results of one command line; the quick parser must accept it."""
    call = quick.parse(argv, {})
    assert call is not None, f"the quick path left {argv} to Typer"
    fast = _run_in_process(lambda: run_guarded(call), root)

    def typer() -> None:
        saved = sys.argv
        sys.argv = ["shelf", *argv]
        try:
            typer_main()
        finally:
            sys.argv = saved

    return fast, _run_in_process(typer, root)


def _argv(template: list[str], root: Path, tag: str) -> list[str]:
    subs = {"TAG": tag, "PREFIX": tag[: tag.index(":") + 9], "STORE": str(root)}
    subs["--store=STORE"] = f"--store={root}"
    return [subs.get(a, a) for a in template]


QUICK = [
    ["list"],
    ["list", "mlp"],
    ["list", "--latest"],
    ["list", "-o", "json"],
    ["list", "--output=tags", "--label", "stage=production"],
    ["list", "-l", "stage in (dev,production)", "--latest", "-o", "json"],
    ["list", "--label=stage!=dev", "--output", "tags", "--output", "table"],
    ["list", "--label", "acc"],
    ["list", "nothing"],
    ["list", "nothing", "-o", "json"],
    ["list", "../x"],
    ["list", "--label", "in ("],
    ["list", "--label", "=v"],
    ["models", "list", "--label", "stage=dev"],
    ["--store", "STORE", "list"],
    ["--store=STORE", "models", "list", "-o", "json"],
    ["--store", "", "list"],
    ["get", "TAG"],
    ["get", "TAG", "-o", "json"],
    ["get", "mlp", "--output", "json"],
    ["get", "mlp:latest"],
    ["get", "net"],
    ["get", "PREFIX", "-o", "json"],
    ["get", "mlp:0"],
    ["get", "nothing"],
    ["get", "nothing:v1"],
    ["get", "../x"],
    ["get", ""],
    ["models", "get", "TAG", "--output=json"],
]


@pytest.mark.parametrize("template", QUICK, ids=lambda a: " ".join(a) or "(none)")
def test_quick_path_prints_what_typer_prints(store: tuple[Path, str], template: list[str]) -> None:
    root, tag = store
    fast, typer = both_ways(_argv(template, root, tag), root)
    assert fast == typer
    assert fast[2] in (0, 1, 2)


def test_the_cases_above_cover_output_and_errors(store: tuple[Path, str]) -> None:
    """Guard against a vacuous comparison: the cases include rows, JSON and error lines."""
    root, tag = store
    table, _, _ = both_ways(["list"], root)[0]
    assert table.splitlines()[0].split() == ["TAG", "CREATED", "(UTC)", "FORMAT", "SIZE", "LABELS"]
    assert len(table.splitlines()) == 4
    _, err, code = both_ways(["get", "nothing"], root)[0]
    assert code == 1 and err.startswith("error:") and "shelf list" in err
    _, err, code = both_ways(["list", "--label", "in ("], root)[0]
    assert code == 2 and err.startswith("error:")


FALL_THROUGH = [
    [],
    ["--help"],
    ["list", "--help"],
    ["list", "-h"],
    ["get", "TAG", "--help"],
    ["--version"],
    ["models"],
    ["models", "--help"],
    ["list", "--remote"],
    ["list", "--remote", "s3://bucket"],
    ["get", "TAG", "--remote=s3://b"],
    ["list", "--lat"],
    ["list", "--latest=yes"],
    ["list", "-ojson"],
    ["list", "-o=json"],
    ["list", "-o", "yaml"],
    ["list", "-o", "JSON"],
    ["list", "--output"],
    ["list", "--label"],
    ["list", "a", "b"],
    ["list", "--", "mlp"],
    ["list", "-"],
    ["get"],
    ["get", "a", "b"],
    ["get", "TAG", "-o", "tags"],
    ["get", "TAG", "--latest"],
    ["--store"],
    ["--storex", "list"],
    ["list", "--store", "STORE"],
    ["label", "TAG", "k=v"],
    ["delete", "--yes", "TAG"],
    ["serve", "TAG"],
]


@pytest.mark.parametrize("template", FALL_THROUGH, ids=lambda a: " ".join(a) or "(none)")
def test_quick_path_leaves_everything_else_to_typer(
    store: tuple[Path, str], template: list[str]
) -> None:
    root, tag = store
    assert quick.parse(_argv(template, root, tag), {}) is None


def test_shell_completion_always_goes_to_typer() -> None:
    assert quick.parse(["list"], {"_SHELF_COMPLETE": "complete_bash"}) is None


_SELECTORS = ["stage=dev", "stage!=dev", "stage in (dev,production)", "acc", "in (", "=v", ""]
_OUTPUTS = ["table", "json", "tags", "yaml"]
_NAMES = ["mlp", "mlp:latest", "net", "nothing", "../x", "TAG", "PREFIX", ""]
_JUNK = ["--lat", "-ojson", "--", "-h", "--remote", "--latest=1", "-", "--label"]
_PIECE = st.one_of(
    st.just(["--latest"]),
    st.tuples(st.sampled_from(["--label", "-l"]), st.sampled_from(_SELECTORS)).map(list),
    st.sampled_from(_SELECTORS).map(lambda s: [f"--label={s}"]),
    st.tuples(st.sampled_from(["--output", "-o"]), st.sampled_from(_OUTPUTS)).map(list),
    st.sampled_from(_OUTPUTS).map(lambda o: [f"--output={o}"]),
    st.sampled_from(_NAMES).map(lambda n: [n]),
    st.sampled_from(_JUNK).map(lambda j: [j]),
)
COMMAND_LINES = st.builds(
    lambda prefix, group, command, pieces: [*prefix, *group, command, *sum(pieces, [])],
    st.sampled_from([[], ["--store", "STORE"], ["--store=STORE"], ["--store", ""]]),
    st.sampled_from([[], ["models"]]),
    st.sampled_from(["list", "get"]),
    st.lists(_PIECE, max_size=5),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(COMMAND_LINES)
def test_any_command_line_the_quick_path_takes_means_the_same(
    store: tuple[Path, str], template: list[str]
) -> None:
    root, tag = store
    argv = _argv(template, root, tag)
    if quick.parse(argv, {}) is None:
        return  # Typer's alone
    fast, typer = both_ways(argv, root)
    assert fast == typer, argv


def test_the_generated_command_lines_often_take_the_quick_path() -> None:
    """A generator that mostly produced fall-throughs would make the test above vacuous."""
    taken = []

    @settings(max_examples=300, deadline=None, database=None)
    @given(COMMAND_LINES)
    def sample(template: list[str]) -> None:
        taken.append(
            quick.parse(_argv(template, Path("/s"), "mlp:20260101T000000000000Z-abcdef"), {})
            is not None
        )

    sample()
    assert sum(taken) / len(taken) > 0.1


def _process(args: list[str], root: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "torchshelf", *args],
        env=child_env(root),
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,  # type: ignore[call-overload]
    )


@pytest.mark.parametrize(
    "args",
    [["list"], ["list", "-o", "json"], ["models", "list", "--latest"], ["get", "mlp"]],
    ids=" ".join,
)
def test_quick_commands_import_neither_typer_nor_rich(
    store: tuple[Path, str], args: list[str]
) -> None:
    root, _ = store
    proc = _process(args, root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "torchshelf" in modules, "no -X importtime output: the check would pass vacuously"
    assert not modules & {"typer", "click", "rich", "torch", "numpy"}
    assert "mlp:" in proc.stdout


@pytest.mark.parametrize("entry", ["quick", "typer"])
def test_a_closed_pipe_ends_the_listing_quietly(store: tuple[Path, str], entry: str) -> None:
    """`shelf list | head -0`: exit 1, no traceback, no `error:` line (click's behaviour)."""
    root, _ = store
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write the child makes now fails with EPIPE
    code = "from torchshelf.cli.{} import main; main()".format(
        "main" if entry == "quick" else "app"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, "list"],
            env=child_env(root),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (1, "")


def test_headers_are_bold_only_where_rich_would_style_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchshelf.cli.render import print_columns, print_fields

    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    print_columns(["TAG", "SIZE"], [["m:v", "1 B"]])
    assert capsys.readouterr().out == "TAG  SIZE\nm:v  1 B\n"  # piped: plain
    monkeypatch.setenv("FORCE_COLOR", "1")
    print_columns(["TAG", "SIZE"], [["m:v", "1 B"]])
    print_fields([("tag", "m:v"), ("size", "1 B")])
    assert capsys.readouterr().out == (
        "\x1b[1mTAG  SIZE\x1b[0m\nm:v  1 B\n\x1b[1mtag \x1b[0m  m:v\n\x1b[1msize\x1b[0m  1 B\n"
    )
    monkeypatch.setenv("TERM", "dumb")
    print_columns(["TAG"], [])
    assert capsys.readouterr().out == "TAG\n"


def test_listing_a_missing_name_or_store_creates_nothing(tmp_path: Path) -> None:
    """A typo in `--store` or in a name must not leave directories, locks or index files."""
    missing = tmp_path / "no-store-here"
    for args in (["list", "nothing"], ["list"], ["list", "nothing", "-o", "json"]):
        proc = subprocess.run(
            [sys.executable, "-m", "torchshelf", "--store", str(missing), *args],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
        assert proc.stdout.strip() in ("", "[]", "TAG  CREATED (UTC)  FORMAT  SIZE  LABELS")
    assert not missing.exists()


def test_json_output_is_the_same_document_with_or_without_orjson(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dataclasses
    import json
    import math
    from datetime import datetime, timezone

    from torchshelf.cli import render

    @dataclasses.dataclass
    class Point:
        x: int

    when = datetime(2026, 1, 2, tzinfo=timezone.utc)
    data = [{"tag": "m:v", "labels": {"k": "é"}, "when": when, "p": Point(1), "f": 1e16}]
    odd = {"p50": math.nan, "rates": [math.inf, 1.5], "pair": (-math.inf, 2)}
    fast, odd_fast = render._dumps(data), render._dumps(odd)
    assert json.loads(fast) == json.loads(json.dumps(data, default=str))
    assert json.loads(render._dumps([2**70])) == [2**70]  # beyond orjson: the stdlib writes it
    monkeypatch.setitem(sys.modules, "orjson", None)  # as if the `fast` extra were absent
    assert render._dumps(data) == json.dumps(data, indent=2, default=str).encode()
    assert json.loads(render._dumps(data)) == json.loads(fast)
    for doc in (odd_fast, render._dumps(odd)):  # NaN and infinity are not JSON: null
        assert json.loads(doc, parse_constant=pytest.fail) == {
            "p50": None,
            "rates": [None, 1.5],
            "pair": [None, 2],
        }
