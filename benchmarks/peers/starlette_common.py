"""Shared plumbing for the two starlette reference servers (echo and naive).

Why: the echo ceiling and the naive endpoint must parse and encode JSON exactly the same way, so
the only difference between them is the model call. orjson is used when installed (it is in our
main environment), because a ceiling should not be lowered by a slow encoder.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        """Encode to JSON bytes (orjson)."""
        return orjson.dumps(obj)

    loads: Callable[[bytes], Any] = orjson.loads
    JSON_LIB = "orjson"
except ImportError:  # pragma: no cover - depends on the environment

    def dumps(obj: Any) -> bytes:
        """Encode to JSON bytes (stdlib)."""
        return json.dumps(obj, separators=(",", ":")).encode()

    loads = json.loads
    JSON_LIB = "json"


def error(status: int, message: str) -> Response:
    """A JSON error body, as our own server answers bad input."""
    return Response(dumps({"error": message}), status_code=status, media_type="application/json")


async def read_inputs(request: Request, dim: int) -> torch.Tensor | Response:
    """Decode {"inputs": [[...]]} into a float32 tensor of shape (n, dim), or an error response."""
    try:
        body = loads(await request.body())
        x = torch.tensor(body["inputs"], dtype=torch.float32)
    except (ValueError, KeyError, TypeError) as exc:
        return error(400, f"bad request body: {exc}")
    if x.dim() != 2 or x.shape[1] != dim:
        return error(422, f"inputs must have shape (n, {dim}), got {tuple(x.shape)}")
    return x


def app_for(handler: Callable[[Request], Awaitable[Response]]) -> Starlette:
    """A one-route app: POST /predict."""
    return Starlette(routes=[Route("/predict", handler, methods=["POST"])])


def serve(app: Starlette, host: str, port: int) -> None:
    """Run uvicorn with access logs off (they cost real CPU) on one worker."""
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
