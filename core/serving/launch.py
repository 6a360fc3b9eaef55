"""`shelf serve TARGET...` as one call: resolve the targets, then run one server or several
worker processes (`--workers`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .options import ServeOptions
from .protocol import HandlerFactory
from .server import run_server
from .target import Served, resolve_targets

if TYPE_CHECKING:
    from .live import FollowSpec
from .workers import run_workers

__all__ = ["resolve_targets", "serve"]


def serve(
    targets: Sequence[str],
    options: ServeOptions,
    *,
    device: str | None = None,
    workers: int = 1,
    on_resolved: Callable[[list[Served]], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    protocols: Sequence[HandlerFactory] = (),
    follow: FollowSpec | None = None,
) -> int:
    """`shelf serve TARGET...`: resolve the targets, tell `on_resolved` (the banner), then run
    the server (or `workers` server processes on one socket) until it is stopped; returns the
    exit code. With `follow` (`shelf serve NAME --label ...`), the one TARGET is a model name
    whose served version follows the label selection (live.py)."""
    from ..errors import UsageError

    if follow is not None:
        from .live import serve_label

        if workers > 1:
            raise UsageError(
                "--workers with --label is not supported yet: each worker would follow the "
                "label on its own; run one server per port instead"
            )
        return serve_label(
            follow,
            options,
            device=device,
            on_resolved=on_resolved,
            on_ready=on_ready,
            protocols=protocols,
        )

    served = resolve_targets(targets, device)
    if workers > 1 and len(served) > 1:
        raise UsageError("--workers serves one TARGET for now; give one, or drop --workers")
    if on_resolved is not None:
        on_resolved(served)
    if workers > 1:
        devices = ",".join(served[0].devices)
        return run_workers(targets[0], devices, options, workers, on_ready=on_ready)
    return run_server(served, options, on_ready=on_ready, protocols=protocols)
