"""`shelf bench`: latency/throughput of a stored model (TARGET) or of a server (--url).

The command checks its flags, calls `torchshelf.bench` and renders: a table on stdout (or one JSON
document), progress and warnings on stderr, and optional --csv / --plot files. Nothing here
imports torch; model mode imports it inside the command body.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .render import print_json, stderr, stdout

T = TypeVar("T")


class BenchOutput(str, Enum):
    table = "table"
    json = "json"


# Flags that make sense in one mode only; giving them in the other is an error, not a no-op.
_MODEL_ONLY = ("--device", "--batch-sizes", "--iterations", "--warmup", "--compile",
               "--channels-last", "--threads")  # fmt: skip
_SERVER_ONLY = ("--concurrency", "--procs", "--body", "--header", "--warmup-duration", "--timeout")


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int, bool], None] | None]:
    """A bar per batch size / level on stderr, counting windows; None when not on a terminal."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("window {task.fields[windows]}/{task.total:.0f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr.console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(label: str, done: int, most: int, finished: bool) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=most, windows=0)
            bar.update(tasks[label], completed=most if finished else done, windows=done)

        yield update


def _settings(cls: Callable[..., T], **given: Any) -> T:
    """`cls(...)` with only the options the user gave: the defaults live in core, once."""
    return cls(**{k: v for k, v in given.items() if v is not None})


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    from torchshelf.bench.report import parse_int_list

    return None if text is None else tuple(parse_int_list(text, flag))


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user passed option `name` (rather than taking its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def _render_table(doc: dict[str, Any]) -> None:
    from rich.table import Table

    server = doc["mode"] == "server"
    variants = {r.get("variant") for r in doc["results"]}
    title = f"{doc['target']} · {doc['device']}" + (
        f" · torch {doc['torch']}" if doc["torch"] else ""
    )
    title += " · latency in ms"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    if server:
        table.add_column("CONCURRENCY", justify="right")
        table.add_column("REQ/S", justify="right")
    else:
        if len(variants) > 1:
            table.add_column("VARIANT")
        table.add_column("BATCH", justify="right")
        table.add_column("ITEMS/S", justify="right")
    for col in ("P50", "P90", "P95", "P99", "MEAN ± STD"):
        table.add_column(col, justify="right", no_wrap=True)
    if server:
        for col in ("ERRORS", "SERVER BATCH", "CLIENT CPU"):
            table.add_column(col, justify="right")
    else:
        table.add_column("PEAK MEM", justify="right")
    table.add_column("STABLE")
    for r in doc["results"]:
        lat = r["latency_ms"]
        row = [_ms(lat[k]) for k in ("p50", "p90", "p95", "p99")]
        row.append(f"{_ms(lat['mean'])} ± {_ms(lat['std'])}")
        if server:
            errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
            batch = r.get("batch_size_mean")
            cpu = f"{r['client_cpu_percent']:.0f}%" + (" !" if r["client_bound"] else "")
            cells = [str(r["concurrency"]), f"{r['requests_per_s']:,.1f}", *row, errors,
                     "-" if batch is None else f"{batch:.2f}", cpu]  # fmt: skip
        else:
            head = [r["variant"]] if len(variants) > 1 else []
            cells = [*head, str(r["batch_size"]), f"{r['throughput_per_s']:,.1f}", *row,
                     _bytes(r["peak_memory_bytes"])]  # fmt: skip
        cells.append("yes" if r["stable"] else "[yellow]no[/]")
        table.add_row(*cells)
    stdout.print(table)


def _render_baseline(check: Any) -> None:
    """Regressions and the verdict go to stderr: they are messages about the data."""
    for c in check.regressions:
        direction = "down" if c.metric == "throughput" else "up"
        stderr.print(
            f"[bold red]regression:[/] {c.key} {c.metric} {direction} {abs(c.change):.1%} "
            f"({c.baseline:,.3f} -> {c.current:,.3f}; limit {check.max_regression:.0%})",
            highlight=False,
        )
    for item in check.unmatched:
        stderr.print(f"[yellow]baseline:[/] not compared: {item}", highlight=False)
    if check.passed:
        stderr.print(
            f"baseline: {len(check.comparisons)} comparisons within "
            f"{check.max_regression:.0%} of {check.baseline_path}",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add `shelf bench` to the app."""

    @app.command(rich_help_panel="Benchmark")
    def bench(
        ctx: typer.Context,
        target: Annotated[
            str | None,
            typer.Argument(
                help="Model tag (name[:version]) or path/to/file.py:attr; omit with --url.",
                show_default=False,
            ),
        ] = None,
        url: Annotated[
            str | None,
            typer.Option(
                "--url",
                help="Benchmark a running server instead, e.g. http://127.0.0.1:3000/predict.",
                show_default=False,
            ),
        ] = None,
        device: Annotated[
            str | None,
            typer.Option(
                "--device",
                help="Model mode: cpu, cuda, cuda:N or mps (default: cpu).",
                show_default=False,
            ),
        ] = None,
        batch_sizes: Annotated[
            str | None,
            typer.Option(
                "--batch-sizes",
                help="Model mode: comma-separated batch sizes (default: 1,8,32).",
                show_default=False,
            ),
        ] = None,
        input_shape: Annotated[
            str | None,
            typer.Option(
                "--input-shape",
                help="One item's shape without the batch dim, e.g. 3,224,224 (default: the signature's input spec).",
                show_default=False,
            ),
        ] = None,
        dtype: Annotated[
            str | None,
            typer.Option(
                "--dtype",
                help="Input dtype with --input-shape (default: float32).",
                show_default=False,
            ),
        ] = None,
        warmup: Annotated[
            int | None,
            typer.Option(
                "--warmup",
                help="Model mode: untimed iterations before measuring (default: 10).",
                show_default=False,
            ),
        ] = None,
        duration: Annotated[
            float | None,
            typer.Option(
                "--duration",
                help="Seconds per measurement window (default: 1 s for a model, 2 s with --url).",
                show_default=False,
            ),
        ] = None,
        iterations: Annotated[
            int | None,
            typer.Option(
                "--iterations",
                help="Model mode: iterations per window instead of --duration.",
                show_default=False,
            ),
        ] = None,
        compile_: Annotated[
            bool,
            typer.Option("--compile", help="Model mode: also measure a torch.compile'd variant."),
        ] = False,
        channels_last: Annotated[
            bool,
            typer.Option(
                "--channels-last",
                help="Model mode: also measure a channels_last variant (4-D inputs).",
            ),
        ] = False,
        threads: Annotated[
            int | None,
            typer.Option(
                "--threads",
                help="Model mode: torch intra-op threads (default: torch's own choice).",
                show_default=False,
            ),
        ] = None,
        stability: Annotated[
            str | None,
            typer.Option(
                "--stability",
                help="Windows repeat until the last 3 agree within this (default: 10%).",
                show_default=False,
            ),
        ] = None,
        max_windows: Annotated[
            int | None,
            typer.Option(
                "--max-windows",
                help="Give up on stability after this many windows (default: 10).",
                show_default=False,
            ),
        ] = None,
        concurrency: Annotated[
            str | None,
            typer.Option(
                "--concurrency",
                help="--url: comma-separated closed-loop client counts (default: 1,8,64).",
                show_default=False,
            ),
        ] = None,
        procs: Annotated[
            int | None,
            typer.Option(
                "--procs",
                help="--url: load-generator worker processes (default: 1).",
                show_default=False,
            ),
        ] = None,
        warmup_duration: Annotated[
            float | None,
            typer.Option(
                "--warmup-duration",
                help="--url: seconds of load before measuring each level (default: 1).",
                show_default=False,
            ),
        ] = None,
        body: Annotated[
            Path | None,
            typer.Option(
                "--body",
                help="--url: send this file as the request body (.json, .safetensors, or .bin "
                "sent as application/octet-stream; -H 'Content-Type: ...' overrides the type).",
                show_default=False,
            ),
        ] = None,
        timeout: Annotated[
            float | None,
            typer.Option(
                "--timeout",
                help="--url: seconds before an unanswered request counts as a timeout error (default: 30).",
                show_default=False,
            ),
        ] = None,
        header: Annotated[
            list[str] | None,
            typer.Option(
                "--header",
                "-H",
                help="--url: extra request header 'Name: value'; repeatable.",
                show_default=False,
            ),
        ] = None,
        output: Annotated[
            BenchOutput, typer.Option("--output", "-o", help="table or json.")
        ] = BenchOutput.table,
        plot: Annotated[
            Path | None,
            typer.Option(
                "--plot",
                help="Also draw latency and throughput curves to this PNG (needs the 'plot' extra).",
                show_default=False,
            ),
        ] = None,
        csv_path: Annotated[
            Path | None,
            typer.Option(
                "--csv", help="Also write perf_analyzer-like CSV here.", show_default=False
            ),
        ] = None,
        baseline: Annotated[
            Path | None,
            typer.Option(
                "--baseline",
                help="Compare with an earlier --output json; exit 1 past --max-regression.",
                show_default=False,
            ),
        ] = None,
        max_regression: Annotated[
            str | None,
            typer.Option(
                "--max-regression",
                help="Allowed throughput drop / p50 latency rise against --baseline (default: 10%).",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        """Measure latency percentiles and throughput of a model (TARGET) or a server (--url).

        Model mode times the forward pass in this process per batch size; --url drives a running
        server with closed-loop clients per concurrency level. Windows repeat until the last 3
        agree within --stability. Data on stdout, progress and warnings on stderr.
        """
        from torchshelf.bench.report import (
            DEFAULT_MAX_REGRESSION,
            compare_with_baseline,
            load_report,
            parse_percent,
            write_csv,
        )
        from torchshelf.errors import ShelfError, UsageError

        given = {p.opts[0] for p in ctx.command.params
                 if p.opts and p.name and _given(ctx, p.name)}  # fmt: skip
        if target is None and url is None:
            raise UsageError(
                "pass a model TAG to benchmark, or --url http://HOST:PORT/API for a server"
            )
        if target is not None and url is not None:
            raise UsageError("pass either a model TAG or --url, not both")
        wrong = [f for f in (_MODEL_ONLY if url else _SERVER_ONLY) if f in given]
        if wrong:
            mode = "model mode (TARGET)" if url else "server mode (--url)"
            hint = "; with --url, warm up with --warmup-duration S" if "--warmup" in wrong else ""
            raise UsageError(f"{', '.join(wrong)} only applies to {mode}{hint}")
        tolerance = None if stability is None else parse_percent(stability, "--stability")
        limit = (
            DEFAULT_MAX_REGRESSION
            if max_regression is None
            else parse_percent(max_regression, "--max-regression")
        )
        if duration is not None and iterations is not None:
            raise UsageError("pass --duration or --iterations, not both")
        if duration is not None and not duration > 0:
            raise UsageError("--duration must be a positive number of seconds")
        if plot is not None:
            from torchshelf.bench.plot import require_matplotlib

            require_matplotlib()  # refuse now, not after a long run
        base_doc = load_report(baseline) if baseline is not None else None

        with _progress(stderr.is_terminal) as progress:
            if url is not None:
                from torchshelf.bench.load import (
                    Endpoint,
                    LoadSettings,
                    bench_server,
                    body_from_file,
                    body_from_server,
                    body_from_shape,
                )
                from torchshelf.bench.model import normalise_dtype, parse_shape

                headers = []
                for item in header or []:
                    name, sep, value = item.partition(":")
                    if not sep or not name.strip():
                        raise UsageError(f"--header {item!r} must look like 'Name: value'")
                    headers.append((name.strip(), value.strip()))
                if body is not None and input_shape is not None:
                    raise UsageError("pass --body or --input-shape, not both")
                if body is not None:
                    ctypes_given = [v for k, v in headers if k.lower() == "content-type"]
                    request_body = body_from_file(body, ctypes_given[-1] if ctypes_given else None)
                elif input_shape is not None:
                    request_body = body_from_shape(
                        parse_shape(input_shape), *([normalise_dtype(dtype)] if dtype else [])
                    )
                else:
                    found = body_from_server(Endpoint.parse(url), headers)
                    if found is None:
                        raise UsageError(
                            "server mode needs a request body and the server reports no input "
                            "spec for this route: pass --input-shape (one item's shape, e.g. "
                            "3,224,224) or --body FILE.json"
                        )
                    request_body = found
                settings = _settings(
                    LoadSettings,
                    concurrency=_ints(concurrency, "--concurrency"),
                    warmup_s=warmup_duration,
                    duration_s=duration,
                    stability=tolerance,
                    max_windows=max_windows,
                    procs=procs,
                    headers=tuple(headers),
                    timeout_s=timeout,
                )
                report = bench_server(url, request_body, settings, progress=progress)
            else:
                from torchshelf.bench.model import ModelBenchSettings, bench_model
                from torchshelf.devices import parse_device

                parse_device(device)  # a malformed device fails before torch is imported
                model_settings = _settings(
                    ModelBenchSettings,
                    batch_sizes=_ints(batch_sizes, "--batch-sizes"),
                    warmup=warmup,
                    duration_s=duration,
                    iterations=iterations,
                    stability=tolerance,
                    max_windows=max_windows,
                    compile=compile_,
                    channels_last=channels_last,
                    threads=threads,
                )
                report = bench_model(
                    target,  # type: ignore[arg-type]
                    model_settings,
                    device=device,
                    input_shape=input_shape,
                    dtype=dtype,
                    progress=progress,
                )

        doc = report.to_dict()
        check = None
        if base_doc is not None:
            check = compare_with_baseline(doc, base_doc, limit, str(baseline))
            doc["baseline"] = check.to_dict()
        if output is BenchOutput.json:
            print_json(doc)
        else:
            _render_table(doc)
        for warning in doc["warnings"]:
            stderr.print(f"[yellow]warning:[/] {warning}", highlight=False)
        if csv_path is not None:
            write_csv(doc, csv_path)
        if plot is not None:
            from torchshelf.bench.plot import plot_report

            plot_report(doc, plot)
        if check is not None:
            _render_baseline(check)
            if not check.passed:
                raise ShelfError(
                    f"{len(check.regressions)} regression(s) past {limit:.0%} against {baseline}"
                )
