"""Serving: the @service/@api decorators, the batching loop, codecs, the HTTP app and client.

`service` and `api` cost nothing to import; `Client` (httpx) is imported on first use.
"""

from __future__ import annotations

from typing import Any

from .decorators import api, service

__all__ = ["Client", "RequestError", "api", "service"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "RequestError"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
