"""Run a served target under uvicorn, and exit 0 after a clean SIGTERM drain.

uvicorn handles SIGTERM/SIGINT by closing its listeners, letting in-flight requests finish and
running the lifespan shutdown (which drains the batcher), and then re-raises the signal so the
process dies by it. A service manager should see a clean drain as success, so our `Server` keeps
uvicorn's graceful shutdown but does not re-raise.

A second SIGTERM/SIGINT during the drain exits at once with 128 + the signal number (143 for
SIGTERM), the shell's convention for "killed by a signal": the operator asked twice, so in-flight
requests are abandoned rather than waited for (uvicorn itself only forces on a second SIGINT, and
even then waits for the worker thread at interpreter exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from types import FrameType
from typing import Any

import uvicorn

from .app import HandlerFactory, ServeApp, build_app
from .connections import guarded_protocol, http_protocol_class
from .options import ServeOptions
from .registry import ModelRegistry
from .target import Served

__all__ = ["run_server", "uvicorn_config"]


class _Server(uvicorn.Server):
    on_exit: Callable[[], None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            name = signal.Signals(sig).name
            sys.stderr.write(f"{name} again: exiting now without finishing in-flight requests\n")
            sys.stderr.flush()
            os._exit(128 + sig)
        if self.on_exit is not None:
            self.on_exit()  # /readyz turns 503 at once, while in-flight requests finish
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _loop_choice() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _http_choice() -> Any:
    """httptools (one write per response, transport.py) when installed, else h11."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    from .transport import http_protocol

    return http_protocol()


def _http_base() -> type[asyncio.Protocol]:
    """The protocol class under the guards: ours (transport.py) over httptools, else h11."""
    choice = _http_choice()
    return http_protocol_class(choice) if isinstance(choice, str) else choice  # type: ignore[no-any-return]


def run_server(
    targets: Served | Sequence[Served] | ModelRegistry,
    options: ServeOptions,
    on_ready: Callable[[], None] | None = None,
    protocols: Sequence[HandlerFactory] = (),
    *,
    sockets: list[socket.socket] | None = None,
    wrap_app: Callable[[Any], Any] | None = None,
    setup: Callable[[ServeApp], None] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code (0 after a clean drain, 1 if a model
    failed to load at start). `sockets`: listen on these (a `--workers` worker gets the
    supervisor's) instead of binding host:port; `wrap_app` wraps the ASGI app (workers.py);
    `setup(app)` runs before the server starts (serving a label adds metrics and /readyz keys)."""
    # The worker thread re-takes the GIL after every torch op; while the loop is busy parsing
    # requests it would wait up to the default 5 ms switch interval each time (a convoy that
    # can double a forward pass). 1 ms bounds that wait at a negligible switching cost.
    sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
    holder: list[_Server] = []

    def stop(_: str) -> None:
        holder[0].should_exit = True

    app = build_app(targets, options, protocols=protocols, on_ready=on_ready, on_failure=stop)
    if setup is not None:
        setup(app)
    server = _Server(uvicorn_config(app if wrap_app is None else wrap_app(app), options))
    holder.append(server)
    server.on_exit = app.begin_drain
    server.run(sockets=sockets)
    if app.failed:
        return 1
    return 0 if server.started else 1


def uvicorn_config(app: Any, options: ServeOptions) -> uvicorn.Config:
    """uvicorn's settings for `app` (uvloop and httptools when installed)."""
    return uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        loop=_loop_choice(),
        # header deadline + connection bound: uvicorn has neither (connections.py)
        http=guarded_protocol(_http_base(), options.header_timeout, options.max_connections),
        lifespan="on",
        log_level="warning",
        access_log=options.access_log,
        server_header=False,
        proxy_headers=False,  # we never use the client address; saves work per request
        timeout_graceful_shutdown=int(options.timeout) + 5,
        backlog=4096,
    )
