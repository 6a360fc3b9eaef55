"""The ASGI app of `shelf serve`: it only routes.

- `ModelRegistry` (registry.py) holds the served models, their live versions and batch queues;
- one handler per protocol (`NativeHandler`, and others such as V2) turns its bodies into the
  one call `registry.infer(...)` and back;
- `ServeApp` sends each exact api POST path straight to its handler's raw ASGI callable (no
  starlette Request on the hot path) and everything else (GETs, 404/405, lifespan) to starlette.

Lifecycle callbacks are constructor arguments: `on_ready()` once the models loaded at start are
warm, `on_failure(message)` if one of them failed to load.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from .asgi import AsgiApp, Authorizer, json_response
from .codecs import encode_json
from .docs import docs_routes
from .loaded import default_threads
from .metrics import ServeMetrics
from .native import NativeHandler
from .openapi import openapi_document, schema_document, title_of
from .options import ServeOptions
from .protocol import HandlerFactory, ProtocolHandler, ServeContext
from .registry import ModelRegistry
from .target import Served
from .v2 import V2Handler

__all__ = [
    "HandlerFactory",
    "ProtocolHandler",
    "ServeApp",
    "ServeContext",
    "ServeOptions",
    "build_app",
    "default_threads",
]


class ServeApp:
    """The ASGI entry point: exact api POST paths -> their handler; the rest -> starlette.

    Skipping starlette's middleware stack and router on the hot path saves about a sixth of a
    small model's per-request CPU.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        options: ServeOptions,
        *,
        protocols: Sequence[HandlerFactory] = (),
        on_ready: Callable[[], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.options = options
        self.on_ready = on_ready
        self.on_failure = on_failure
        self.draining = False
        # Extra keys of a ready /readyz answer (serving a label: the live versions, failures).
        self.ready_details: Callable[[], dict[str, Any]] | None = None
        self.metrics = _metrics_for(registry)
        registry.observer = self.metrics
        self.auth = Authorizer(options.api_token)
        ctx = ServeContext(registry, options, self.metrics, self.auth)
        # every server speaks its own protocol and the Open Inference Protocol (V2)
        factories: list[HandlerFactory] = [NativeHandler, V2Handler, *protocols]
        self.handlers: list[ProtocolHandler] = [make(ctx) for make in factories]
        self.post: dict[str, AsgiApp] = {}
        for handler in self.handlers:
            self.post.update(handler.post_routes())
        self._docs: dict[str, bytes] = {}
        self.app = Starlette(
            routes=self._routes(),
            lifespan=self._lifespan,
            exception_handlers={HTTPException: _http_error},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.post.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def begin_drain(self) -> None:
        """/readyz answers 503 from now on (in-flight requests still finish)."""
        self.draining = True
        for handler in self.handlers:  # protocols with their own readiness route (V2)
            drain = getattr(handler, "begin_drain", None)
            if drain is not None:
                drain()

    @property
    def failed(self) -> str | None:
        return self.registry.failed

    # -- routes off the hot path -----------------------------------------------------------------

    def _routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route(path, _Raw(handler), methods=["POST"]) for path, handler in self.post.items()
        ]
        for handler in self.handlers:
            routes.extend(handler.routes())
        return [
            *routes,
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_route, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/schema", self.schema, methods=["GET"]),
            *docs_routes("/openapi.json", title=f"torchshelf: {title_of(self.registry)}"),
        ]

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(self, request: Request) -> Response:
        if self.draining:
            return json_response({"status": "draining"}, 503)
        if self.registry.ready:
            details = self.ready_details() if self.ready_details is not None else {}
            return json_response({"status": "ready", **details})
        status = "failed" if self.registry.failed else "loading"
        return json_response({"status": status, "error": self.registry.failed}, 503)

    async def metrics_route(self, request: Request) -> Response:
        if self.options.metrics_auth and not self.auth.allows_request(request):
            return json_response(
                {"error": "missing or wrong API token"}, 401, {"WWW-Authenticate": "Bearer"}
            )
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        for batcher in self.registry.batchers.values():  # the gauge is exact even between batches
            for queue in batcher.queues:
                self.metrics.queue_depth(queue, batcher.depth(queue))
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        if "openapi" not in self._docs:
            extra: dict[str, Any] = {}
            for handler in self.handlers:
                extra.update(handler.openapi_paths())
            doc = openapi_document(self.registry, self.options, extra)
            self._docs["openapi"] = encode_json(doc)
        return json_response(self._docs["openapi"])

    async def schema(self, request: Request) -> Response:
        return json_response(schema_document(self.registry, self.options))

    # -- lifespan --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        task = asyncio.ensure_future(self._start())
        try:
            yield
        finally:
            await self.registry.drain()
            self.registry.close()
            task.cancel()

    async def _start(self) -> None:
        try:
            await self.registry.start()
        except asyncio.CancelledError:
            return
        except BaseException as exc:
            message = str(exc)
            self.registry.failed = message or f"loading failed: {type(exc).__name__}"
            if self.on_failure is not None:
                self.on_failure(self.registry.failed)
            return
        if self.on_ready is not None:
            self.on_ready()


class _Raw:
    """Wraps a raw ASGI callable so that starlette's `Route` does not wrap it in a Request
    (reached only when the fast path did not match, e.g. a HEAD or a trailing-slash redirect)."""

    def __init__(self, app: AsgiApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.url.path}; see /openapi.json"}.get(
        exc.status_code, str(exc.detail)
    )
    return json_response({"error": message}, exc.status_code, dict(exc.headers or {}))


def _metrics_for(registry: ModelRegistry) -> ServeMetrics:
    """Metrics labelled by `api` with one model, by `model` and `api` with several."""
    many = len(registry.slots) > 1

    def live() -> list[tuple[str, str]]:
        live = [(s.name, s.loaded.version) for s in registry.slots.values() if s.loaded]
        canaries = [(s.name, s.canary.version) for s in registry.slots.values() if s.canary]
        return sorted(set(live + canaries))

    metrics = ServeMetrics(labels=("model", "api") if many else ("api",), live_versions=live)
    for slot in registry.slots.values():
        for api, queue in slot.queues.items():
            metrics.add_series(queue, (slot.name, api) if many else (api,), slot.devices)
    return metrics


def build_app(
    targets: Served | Sequence[Served] | ModelRegistry,
    options: ServeOptions,
    *,
    protocols: Sequence[HandlerFactory] = (),
    on_ready: Callable[[], None] | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> ServeApp:
    """The app for one target, several, or a registry built by the caller; the models load in
    the background once the server starts (/readyz says when)."""
    if isinstance(targets, ModelRegistry):
        registry = targets
    else:
        registry = ModelRegistry([targets] if isinstance(targets, Served) else targets, options)
    return ServeApp(
        registry, options, protocols=protocols, on_ready=on_ready, on_failure=on_failure
    )
