"""Raw ASGI plumbing every protocol handler shares: headers, auth, the body, the answer.

Api POSTs skip starlette's Request/Response objects (a sixth of a small model's request CPU), so
these helpers work on the ASGI scope and messages directly.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .batching import Overloaded
from .codecs import JSON, InputError, encode_json
from .registry import NotLoaded

__all__ = [
    "JSON_BYTES",
    "AsgiApp",
    "Authorizer",
    "Disconnected",
    "RequestHead",
    "error_answer",
    "json_response",
    "read_body",
    "send_answer",
]

AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
JSON_BYTES = JSON.encode()
Headers = list[tuple[bytes, bytes]]


class Disconnected(Exception):
    """The client closed the connection before sending its whole body."""


class RequestHead:
    """The four request headers the hot path reads, found in one pass over the scope."""

    __slots__ = ("accept", "auth", "ctype", "length")

    def __init__(self, scope: Scope) -> None:
        self.auth = self.ctype = self.accept = self.length = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                self.ctype = value
            elif key == b"content-length":
                self.length = value
            elif key == b"accept":
                self.accept = value
            elif key == b"authorization":
                self.auth = value

    @property
    def content_type(self) -> str:
        return self.ctype.decode("latin-1") if self.ctype else ""

    @property
    def accepts(self) -> str:
        return self.accept.decode("latin-1") if self.accept else ""


class Authorizer:
    """The `--api-token` check (constant-time); with no token every request passes."""

    def __init__(self, token: str | None) -> None:
        self.token = token.encode() if token else None

    def allows(self, header: bytes | str | None) -> bool:
        if self.token is None:
            return True
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        scheme, _, value = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), self.token
        )

    def allows_request(self, request: Request) -> bool:
        return self.allows(request.headers.get("authorization", ""))

    def refuse(self) -> InputError:
        """The 401 to raise (answer it with `WWW-Authenticate: Bearer`)."""
        return InputError("missing or wrong API token: send 'Authorization: Bearer <token>'", 401)


async def read_body(receive: Receive, length: bytes | None, limit: int, timeout: float) -> bytes:
    """The whole body, 413 past `limit` bytes, 408 if it has not all arrived within `timeout`.

    One deadline for the whole body, so a slow-loris client that trickles bytes (or sends part
    of a body and stalls) is answered instead of holding a task forever. A timer that cancels
    this task costs a heap push, not the task that `wait_for` would create.
    """
    if length is not None:
        try:
            if int(length) > limit:
                raise InputError(f"request body is larger than the {limit}-byte limit", 413)
        except ValueError:
            raise InputError("invalid Content-Length header", 400) from None
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await _receive_body(receive, limit)
    except asyncio.CancelledError:
        if not expired:
            raise
        uncancel = getattr(task, "uncancel", None)  # Python >= 3.11
        if uncancel is not None:
            uncancel()
        raise InputError(
            f"the request body did not arrive within {timeout:g} s; send the whole body at once",
            408,
        ) from None
    finally:
        timer.cancel()


async def _receive_body(receive: Receive, limit: int) -> bytes:
    """Collect the ASGI body messages, refusing (413) once more than `limit` bytes arrived."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise InputError(f"request body is larger than the {limit}-byte limit", 413)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_answer(
    send: Send, status: int, content: bytes, media: bytes, extra: Sequence[tuple[bytes, bytes]]
) -> None:
    """Send a whole response: status, content type and length, `extra` headers, the body."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media),
                (b"content-length", str(len(content)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


def error_answer(exc: Exception, extra: Headers) -> tuple[int, str]:
    """The status and message for an exception raised while answering an api request; adds
    `Retry-After` / `WWW-Authenticate` to `extra` where the status calls for one."""
    if isinstance(exc, InputError):
        if exc.status == 401:
            extra.append((b"www-authenticate", b"Bearer"))
        elif exc.status == 503:
            extra.append((b"retry-after", b"1"))
        return exc.status, str(exc)
    if isinstance(exc, Overloaded):
        extra.append((b"retry-after", str(int(exc.retry_after)).encode()))
        return 503, str(exc)
    if isinstance(exc, NotLoaded):
        extra.append((b"retry-after", b"1"))
        return 503, str(exc)
    return model_error(exc)


def model_error(exc: BaseException) -> tuple[int, str]:
    """Map an exception raised by the model or the api to a status and a message.

    The batch was bisected before we got here, so an error that reaches one caller belongs to
    that caller's input: value/shape errors are the input's fault (422); anything else is 500.
    """
    kind = type(exc).__name__
    if kind == "OutOfMemoryError":
        return 503, f"the device ran out of memory: {exc}"
    if isinstance(exc, (ValueError, TypeError, IndexError, KeyError, RuntimeError)):
        return 422, f"the model rejected this input: {kind}: {exc}"
    return 500, f"the api raised {kind}: {exc}"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A starlette JSON response (orjson), for the routes off the hot path."""
    content = body if isinstance(body, bytes) else encode_json(body)
    return Response(content, status, headers, media_type=JSON)
