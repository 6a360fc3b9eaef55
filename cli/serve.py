"""`shelf serve TARGET...`: parse the options, print the banner, run the server.

Everything that can be wrong with the command (target, device, token) fails here, before the
server binds. torch and the server stack are imported inside the command, never at import time.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import click
import typer

from .remote_cmds import RemoteFlagCommand
from .render import fail, stderr

FOLLOW_PANEL = "Serve a label (continuous delivery)"


def _follow_spec(
    targets: list[str],
    label: list[str] | None,
    remote: str | None,
    watch: bool,
    interval: float,
    swap: str,
    canary: str | None,
) -> Any:
    """The parsed `--label ...` options as a `FollowSpec`, or None when serving plain TARGETs."""
    from torchshelf.errors import UsageError

    if not label:
        used = [
            flag
            for flag, on in (
                ("--remote", remote is not None),
                ("--watch", watch),
                ("--canary", canary is not None),
                ("--swap", swap != "live"),
            )
            if on
        ]
        if used:
            verb = "needs" if len(used) == 1 else "need"
            raise UsageError(f"{', '.join(used)} {verb} --label: shelf serve NAME --label K=V ...")
        return None
    from torchshelf.serving.follow import parse_canary, parse_selection
    from torchshelf.serving.live import FollowSpec

    if len(targets) != 1 or ":" in targets[0]:
        raise UsageError(
            f"with --label, give one model NAME (not a tag or a service): {' '.join(targets)}"
        )
    return FollowSpec(
        selection=parse_selection(targets[0], label),
        canary=parse_canary(targets[0], canary) if canary else None,
        remote=remote,
        watch=watch,
        interval=interval,
        swap=swap,
    )


def _follow_rows(grid: Any, follow: Any) -> None:
    where = "the remote" if follow.remote is not None else "the local store"
    how = f"watching every {follow.interval:g} s and on SIGHUP" if follow.watch else "not watching"
    grid.add_row("follows", f"{', '.join(follow.selection.selectors)} on {where}; {how}")
    grid.add_row("swap", follow.swap)
    if follow.canary is not None:
        sel = ", ".join(follow.canary.selection.selectors)
        grid.add_row("canary", f"{follow.canary.percent:g}% to the newest matching {sel}")


def _banner(
    served: list[Any], options: Any, token_source: str | None, workers: int = 1, follow: Any = None
) -> None:
    from rich.panel import Panel
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for one in served:
        grid.add_row("target", f"{one.title} ({one.kind}, version {one.version})")
    if follow is not None:
        _follow_rows(grid, follow)
    grid.add_row("device", ", ".join(dict.fromkeys(",".join(one.devices) for one in served)))
    for one in served:
        if one.resources:
            grid.add_row("resources", ", ".join(f"{k}={v}" for k, v in one.resources.items()))
    url = f"http://{options.host}:{options.port}"
    grid.add_row("url", url)
    if workers > 1:
        grid.add_row(
            "workers", f"{workers} processes on one socket (a supervisor replaces dead ones)"
        )
    grid.add_row("auth", f"bearer token ({token_source})" if options.api_token else "none")
    grid.add_row(
        "limits",
        f"queue {options.max_queue} items/api, timeout {options.timeout:g} s, "
        f"body {options.max_body_bytes // (1024 * 1024)} MiB",
    )
    if options.max_loaded:
        grid.add_row("memory", f"at most {options.max_loaded} models loaded (LRU)")
    apis = Table(box=None, padding=(0, 2), show_edge=False)
    apis.add_column("api")
    apis.add_column("batching")
    for one in served:
        for ep in one.endpoints:
            how = (
                f"max {ep.max_batch_size} items, wait <= {ep.max_latency_ms:g} ms under load, "
                f"dim {ep.batch_dim}"
                if ep.batch
                else "streams items (SSE, or NDJSON)"
                if ep.stream
                else "one request per call"
            )
            path = ep.path if len(served) == 1 else f"/models/{one.name}/{ep.name}"
            apis.add_row(f"POST {path}", how)
    grid.add_row("apis", apis)
    grid.add_row("docs", f"{url}/docs · {url}/openapi.json · {url}/metrics")
    stderr.print(Panel(grid, title="[bold]shelf serve[/]", expand=False))


def register(app: typer.Typer) -> None:
    """Add `serve` to the app."""

    @app.command("serve", rich_help_panel="Serve", cls=RemoteFlagCommand)
    def serve(
        targets: Annotated[
            list[str],
            typer.Argument(
                help="Model tags (name[:version]) or services (file.py:Class / module:Class); "
                "with several, each is served under /models/<name>/<api>. With --label, one "
                "model NAME.",
                show_default=False,
            ),
        ],
        device: Annotated[
            str | None,
            typer.Option(
                "--device",
                help="cpu, cuda, cuda:N or mps; a list (cuda:0,cuda:1, cpu,cpu) puts one replica "
                "on each; all = every CUDA device, or the CPU (default: cpu; cuda for a gpu service).",
                show_default=False,
            ),
        ] = None,
        host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", help="Port to bind.")] = 3000,
        max_batch_size: Annotated[
            int | None,
            typer.Option(
                "--max-batch-size",
                min=1,
                help="Items per model call for batch apis (default: each api's own, 32).",
                show_default=False,
            ),
        ] = None,
        max_latency_ms: Annotated[
            float | None,
            typer.Option(
                "--max-latency-ms",
                min=0,
                help="Longest a batch may wait to fill under load (a lone request never waits).",
                show_default=False,
            ),
        ] = None,
        max_queue: Annotated[
            int,
            typer.Option("--max-queue", min=1, help="Items queued per api before answering 503."),
        ] = 1024,
        timeout: Annotated[
            float,
            typer.Option(
                "--timeout", min=0.001, help="Seconds a request may take before it is answered 503."
            ),
        ] = 30.0,
        max_body_mb: Annotated[
            float,
            typer.Option("--max-body-mb", min=0.001, help="Largest request body (413 past it)."),
        ] = 64.0,
        api_token: Annotated[
            str | None,
            typer.Option(
                "--api-token",
                help="Require 'Authorization: Bearer TOKEN' on api routes (or set TORCHSHELF_API_TOKEN).",
                show_default=False,
            ),
        ] = None,
        metrics_auth: Annotated[
            bool, typer.Option("--metrics-auth", help="Require the token on /metrics too.")
        ] = False,
        threads: Annotated[
            int | None,
            typer.Option(
                "--threads",
                min=1,
                help="Torch CPU threads (default: all cores but one, left for HTTP).",
                show_default=False,
            ),
        ] = None,
        access_log: Annotated[
            bool, typer.Option("--access-log", help="Log every request (costs CPU).")
        ] = False,
        max_loaded: Annotated[
            int | None,
            typer.Option(
                "--max-loaded",
                min=1,
                help="Keep at most N models in memory: load on first use, unload the least "
                "recently used (default: all, loaded at start).",
                show_default=False,
            ),
        ] = None,
        header_timeout: Annotated[
            float,
            typer.Option(
                "--header-timeout",
                min=0.001,
                help="Seconds a client has to send its request headers (408 and close past it).",
            ),
        ] = 10.0,
        max_connections: Annotated[
            int | None,
            typer.Option(
                "--max-connections",
                min=1,
                help="Open connections at most; one more is answered 503 and closed "
                "(default: no bound).",
                show_default=False,
            ),
        ] = None,
        workers: Annotated[
            int,
            typer.Option(
                "--workers",
                min=1,
                help="Server processes on one port, each with every replica; dead ones are replaced.",
            ),
        ] = 1,
        label: Annotated[
            list[str] | None,
            typer.Option(
                "--label",
                help="Serve the newest version of NAME matching K=V, K!=V, K, 'K in (a,b)' (ANDed).",
                show_default=False,
                rich_help_panel=FOLLOW_PANEL,
            ),
        ] = None,
        remote: Annotated[
            str | None,
            typer.Option(
                "--remote",
                metavar="[URL]",
                help="Evaluate --label on the remote store s3://bucket/prefix (bare: the "
                "configured remote) and pull the chosen version, verified, first.",
                show_default=False,
                rich_help_panel=FOLLOW_PANEL,
            ),
        ] = None,
        watch: Annotated[
            bool,
            typer.Option(
                "--watch",
                help="Re-evaluate --label every --watch-interval seconds and on SIGHUP; swap "
                "to a new match with no failed request.",
                rich_help_panel=FOLLOW_PANEL,
            ),
        ] = False,
        watch_interval: Annotated[
            float,
            typer.Option(
                "--watch-interval",
                min=0.01,
                help="Seconds between checks with --watch.",
                rich_help_panel=FOLLOW_PANEL,
            ),
        ] = 5.0,
        swap: Annotated[
            str,
            typer.Option(
                "--swap",
                help="live: load the new version beside the old one, then switch; drain: finish "
                "in-flight work and unload first (requests queue meanwhile), for models too big "
                "to hold twice.",
                click_type=click.Choice(["live", "drain"]),
                metavar="live|drain",
                rich_help_panel=FOLLOW_PANEL,
            ),
        ] = "live",
        canary: Annotated[
            str | None,
            typer.Option(
                "--canary",
                metavar="'SELECTOR:PERCENT'",
                help="Send PERCENT of requests to the newest version matching SELECTOR, e.g. "
                "'stage=candidate:10'.",
                show_default=False,
                rich_help_panel=FOLLOW_PANEL,
            ),
        ] = None,
    ) -> None:
        """Serve stored models or @torchshelf.service classes over HTTP, batching requests."""
        from torchshelf.config import ENV_API_TOKEN
        from torchshelf.config import api_token as configured_token
        from torchshelf.errors import ShelfError, UsageError
        from torchshelf.serving.options import ServeOptions

        started = time.perf_counter()
        api_token, token_source = configured_token(api_token)
        options = ServeOptions(
            host=host,
            port=port,
            max_batch_size=max_batch_size,
            max_latency_ms=max_latency_ms,
            max_queue=max_queue,
            timeout=timeout,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            api_token=api_token or None,
            metrics_auth=metrics_auth,
            access_log=access_log,
            threads=threads,
            max_loaded=max_loaded,
            header_timeout=header_timeout,
            max_connections=max_connections,
        )
        devices: list[str] = []
        follow = None

        def resolved(served: list[Any]) -> None:
            devices.extend(dict.fromkeys(",".join(one.devices) for one in served))
            if host in ("0.0.0.0", "::", "") and not options.api_token:
                stderr.print(
                    f"[yellow]warning:[/] binding {host or 'all interfaces'} without an API "
                    "token: anyone who can reach this port can call the model; pass "
                    f"--api-token or set {ENV_API_TOKEN}",
                    highlight=False,
                )
            _banner(served, options, token_source, workers, follow)

        def ready() -> None:
            stderr.print(
                f"[green]ready[/] in {time.perf_counter() - started:.1f} s "
                f"(loaded and warmed up on {', '.join(devices)}"
                + (f" in each of {workers} workers)" if workers > 1 else ")"),
                highlight=False,
            )

        try:
            if metrics_auth and not api_token:
                raise UsageError(
                    "--metrics-auth needs a token: pass --api-token or set " + ENV_API_TOKEN
                )
            follow = _follow_spec(targets, label, remote, watch, watch_interval, swap, canary)
            from torchshelf.serving.launch import serve as run

            code = run(
                targets,
                options,
                device=device,
                workers=workers,
                on_resolved=resolved,
                on_ready=ready,
                follow=follow,
            )
        except ShelfError as exc:
            fail(exc)
        raise typer.Exit(code)
