"""What a protocol handler is (native, V2, ...) and what it is built from.

A handler class takes a `ServeContext` and offers three things to the app: exact POST paths
answered as raw ASGI (the hot path), starlette routes for the rest, and its OpenAPI paths. Each
handler turns its own bodies into the one call `ctx.registry.infer(model, api, kwargs, rows)`
and the `Inference` back into its own body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.routing import BaseRoute

from .asgi import AsgiApp, Authorizer
from .metrics import ServeMetrics
from .options import ServeOptions
from .registry import ModelRegistry

__all__ = ["HandlerFactory", "ProtocolHandler", "ServeContext"]


@dataclass(frozen=True)
class ServeContext:
    """Everything a protocol handler needs: the models, the settings, metrics and auth."""

    registry: ModelRegistry
    options: ServeOptions
    metrics: ServeMetrics
    auth: Authorizer


class ProtocolHandler(Protocol):
    """One protocol's routes. `post_routes()` are exact POST paths served as raw ASGI (the hot
    path); `routes()` are starlette routes for the rest (GETs, path parameters);
    `openapi_paths()` documents them in /openapi.json and /docs."""

    def post_routes(self) -> dict[str, AsgiApp]: ...

    def routes(self) -> list[BaseRoute]: ...

    def openapi_paths(self) -> dict[str, Any]: ...


HandlerFactory = Callable[[ServeContext], ProtocolHandler]
"""A handler class (or any callable) taking a `ServeContext`: `build_app(protocols=[V2Handler])`."""
