"""Run a served target under uvicorn, and exit 0 after a clean SIGTERM drain.

uvicorn handles SIGTERM/SIGINT by closing its listeners, letting in-flight requests finish and
running the lifespan shutdown (which drains the batcher), and then re-raises the signal so the
process dies by it. A service manager should see a clean drain as success, so our `Server` keeps
uvicorn's graceful shutdown but does not re-raise.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Generator
from types import FrameType

import uvicorn

from .app import ServeOptions, build_app
from .target import Served

__all__ = ["run_server"]


class _Server(uvicorn.Server):
    on_exit: Callable[[], None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
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


def _http_choice() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


def run_server(
    served: Served,
    options: ServeOptions,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code (0 after a clean drain, 1 if the
    model failed to load)."""
    # The worker thread re-takes the GIL after every torch op; while the loop is busy parsing
    # requests it would wait up to the default 5 ms switch interval each time (a convoy that
    # can double a forward pass). 1 ms bounds that wait at a negligible switching cost.
    sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
    app = build_app(served, options)
    app.state.on_ready = on_ready
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        loop=_loop_choice(),
        http=_http_choice(),
        lifespan="on",
        log_level="warning",
        access_log=options.access_log,
        server_header=False,
        proxy_headers=False,  # we never use the client address; saves work per request
        timeout_graceful_shutdown=int(options.timeout) + 5,
        backlog=4096,
    )
    server = _Server(config)
    state = app.state.serve_state

    def stop(_: str) -> None:
        server.should_exit = True

    state.on_failure = stop

    def draining() -> None:
        state.draining = True

    server.on_exit = draining
    server.run()
    if state.failed:
        return 1
    return 0 if server.started else 1
