"""Streamed answers: an api written as a generator (or async generator) sends items as they come.

Wire formats (chosen by the request's `Accept`):
- Server-Sent Events (`text/event-stream`, the default): one `data:` frame per item, its value as
  JSON; a failure after the first item ends the stream with an `event: error` frame whose data is
  `{"error": message, "status": code}`.
- NDJSON (`Accept: application/x-ndjson`): one JSON value per line; a failure ends the stream
  with the line `{"error": message, "status": code}`.

A failure before the first item is an ordinary JSON error response (the status line has not
been sent yet), so input checks at the top of a generator answer 422 like any other api.

`send_stream` is the ASGI side. It pulls one item at a time (a sync generator's `next()` runs on
a thread, never on the event loop; an async generator's steps run on the loop), so a slow client
holds the generator back instead of filling memory, and it listens for `http.disconnect` while
it waits: a client that goes away stops the generator, whose `finally` runs (`close()` or
`aclose()`). A sync generator is only closed once its current `next()` has returned: a thread
cannot be interrupted, so a step that never returns keeps its thread.

`SSEDecoder` and `NDJSONDecoder` are the client side (`torchshelf.Client` and the tests); they
split lines only on CR, LF and CRLF, as the SSE specification says, so a JSON string holding
U+2028 or a form feed stays one item.

This module imports only the standard library at import time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

from .hints import is_stream_function, stream_item_hint

__all__ = [
    "NDJSON",
    "SSE",
    "GeneratorStream",
    "NDJSONDecoder",
    "SSEDecoder",
    "ServerEvent",
    "StreamOutcome",
    "error_payload",
    "is_stream_function",
    "ndjson_line",
    "send_stream",
    "sse_event",
    "stream_content",
    "stream_format",
    "stream_item_hint",
]

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"

_log = logging.getLogger("torchshelf.serving")

# The ASGI callables, typed as starlette.types types them (without importing starlette).
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ErrorMapper = Callable[[Exception], tuple[int, str]]


# -- what streams ---------------------------------------------------------------------------------


def stream_format(accept: str) -> str:
    """The wire format for an `Accept` header: NDJSON when asked for, else Server-Sent Events."""
    return NDJSON if NDJSON in accept.lower() else SSE


def stream_content(item_schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI `content` of a streaming api's 200 answer: both wire formats, each with the
    JSON schema of one item under `x-item-schema` (OpenAPI 3.2 calls this `itemSchema`; the
    document is 3.1, whose validators refuse unknown fixed fields)."""
    return {
        SSE: {
            "schema": {
                "type": "string",
                "description": "Server-Sent Events, the default: one `data:` frame per item, "
                "its value as JSON; a failure after the first item sends `event: error` with "
                'data `{"error": ..., "status": ...}` and ends the stream',
            },
            "x-item-schema": item_schema,
        },
        NDJSON: {
            "schema": {
                "type": "string",
                "description": "sent for `Accept: application/x-ndjson`: one JSON value per "
                'line; a failure after the first item ends it with `{"error": ..., '
                '"status": ...}`',
            },
            "x-item-schema": item_schema,
        },
    }


# -- framing --------------------------------------------------------------------------------------

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def sse_event(data: bytes, event: str | None = None) -> bytes:
    """One Server-Sent Event: a `data:` line per line of `data` (so a multi-line value survives),
    an optional `event:` line, and the blank line that ends the event."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    lines = _LINE_BREAK.split(data)
    return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def ndjson_line(data: bytes) -> bytes:
    """One NDJSON line. Compact JSON never holds a raw CR or LF (JSON escapes them in strings),
    so a value with one is refused rather than silently split into two items."""
    if b"\n" in data or b"\r" in data:
        raise ValueError("an NDJSON item must be compact JSON with no raw line break")
    return data + b"\n"


def error_payload(message: str, status: int) -> dict[str, Any]:
    """What an error frame (SSE `event: error`) or error line (NDJSON) carries."""
    return {"error": message, "status": status}


# -- decoding (client side) -----------------------------------------------------------------------


@dataclass(frozen=True)
class ServerEvent:
    """One decoded Server-Sent Event: `event` is "message" unless the server named it."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Incremental Server-Sent Events parser: `feed(bytes)` returns the events completed so far.

    Follows the HTML specification's rules: lines end at CRLF, LF or CR; `data` lines of one
    event are joined with LF; a single space after the colon is dropped; lines starting with a
    colon are comments; an event with no data line is not dispatched.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        """Add received bytes; return every event they complete."""
        self._buffer += chunk
        events: list[ServerEvent] = []
        while True:
            match = _LINE_BREAK.search(self._buffer)
            # A CR at the very end may be the first half of a CRLF: wait for the next byte.
            if match is None or (match.group() == b"\r" and match.end() == len(self._buffer)):
                return events
            line = self._buffer[: match.start()].decode("utf-8", errors="replace")
            self._buffer = self._buffer[match.end() :]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> ServerEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> ServerEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerEvent("\n".join(data), event or "message", self._id)


class NDJSONDecoder:
    """Incremental NDJSON splitter: `feed(bytes)` returns the complete, non-empty lines."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add received bytes; return every complete line (without its line break)."""
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.rstrip(b"\r") for line in lines if line.strip()]

    def flush(self) -> list[bytes]:
        """The last line, when the stream ended without a final line break."""
        rest, self._buffer = self._buffer.strip(), b""
        return [rest] if rest else []


# -- the generator, one item at a time ------------------------------------------------------------

_DONE = object()
_shared_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _default_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _shared_executor
    if _shared_executor is None:
        _shared_executor = concurrent.futures.ThreadPoolExecutor(
            32, thread_name_prefix="torchshelf-stream"
        )
    return _shared_executor


def _advance(gen: Iterator[Any]) -> Any:
    """One `next()` on a worker thread, under `torch.inference_mode` when torch is in use (as
    batch apis run); the end of the generator comes back as `_DONE`, since StopIteration cannot
    cross a future."""
    torch = sys.modules.get("torch")
    mode = torch.inference_mode() if torch is not None else contextlib.nullcontext()
    with mode:
        try:
            return next(gen)
        except StopIteration:
            return _DONE


class GeneratorStream:
    """Pulls the items of a sync or async generator (any iterator works) from the event loop.

    `await stream.next()` returns the next item or raises `StopAsyncIteration`; `await
    stream.close()` stops the generator so its `finally` runs. Sync steps run on `executor`
    (a shared pool of stream threads by default), one at a time.
    """

    def __init__(
        self,
        source: Iterator[Any] | AsyncIterator[Any],
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self._source = source
        self._is_async = hasattr(source, "__anext__")
        self._executor = executor
        self._step: concurrent.futures.Future[Any] | None = None
        self._closed = False

    @property
    def is_async(self) -> bool:
        """True for an async generator, whose steps run on the event loop."""
        return self._is_async

    async def next(self) -> Any:
        """The next item; `StopAsyncIteration` at the end; the generator's own exception if it
        raised."""
        if self._closed:
            raise StopAsyncIteration
        if self._is_async:
            return await self._source.__anext__()  # type: ignore[union-attr]
        executor = self._executor or _default_executor()
        self._step = executor.submit(_advance, self._source)  # type: ignore[arg-type]
        item = await asyncio.wrap_future(self._step)
        if item is _DONE:
            raise StopAsyncIteration
        return item

    async def close(self) -> None:
        """Stop the generator (its `finally` runs); safe to call twice or after the end."""
        if self._closed:
            return
        self._closed = True
        if self._is_async:
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception as exc:
                    _log.warning("closing a streaming api raised %s: %s", type(exc).__name__, exc)
            return
        step = self._step
        if step is None or step.done():
            executor = self._executor or _default_executor()
            await asyncio.wrap_future(executor.submit(self._close_sync))
            return
        # A step is still running on its thread: close right after it returns, on that thread.
        closed: concurrent.futures.Future[None] = concurrent.futures.Future()

        def close_after(_: concurrent.futures.Future[Any]) -> None:
            self._close_sync()
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                closed.set_result(None)

        step.add_done_callback(close_after)
        # Shielded: if this wait is cancelled, the close still happens on the step's thread.
        await asyncio.shield(asyncio.wrap_future(closed))

    def _close_sync(self) -> None:
        close = getattr(self._source, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception as exc:  # e.g. a generator that yields from its finally
            _log.warning("closing a streaming api raised %s: %s", type(exc).__name__, exc)


# -- the ASGI responder --------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamOutcome:
    """How a streamed answer ended, for metrics and logs.

    `status` is the HTTP status sent (499 when the client left before the first item);
    `items` how many items were sent; `error` the message of a failure and `error_status` its
    status (sent in an error frame once the stream had started); `disconnected` whether the
    client went away first.
    """

    status: int
    items: int = 0
    error: str | None = None
    error_status: int | None = None
    disconnected: bool = False

    @property
    def metric_status(self) -> int:
        """The status to count the request under: 499 when the client left, the failure's
        status when the api failed mid-stream, else the status sent."""
        if self.disconnected:
            return 499
        return self.error_status or self.status


class _Disconnect(Exception):
    """The client went away."""


class _Watch:
    """Listens for `http.disconnect` beside the request's task and cancels that task when it
    comes: the pump awaits each step directly (no task per item), and an async generator sees
    CancelledError at the await it is stopped at. (uvicorn's `send()` just returns once the
    client is gone, so `receive()` is the only sign.)"""

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._task = asyncio.current_task()
        self._future = asyncio.ensure_future(self._listen(receive))

    async def _listen(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def claim(self) -> bool:
        """After a CancelledError: True (and the cancellation undone) if it was ours."""
        if not self.gone:
            return False
        uncancel = getattr(self._task, "uncancel", None)  # Python >= 3.11
        if uncancel is not None:
            uncancel()
        return True

    def stop(self) -> None:
        self._future.cancel()


class _Responder:
    """The response side of one stream: the status line and headers once, then frames."""

    def __init__(
        self,
        send: Send,
        fmt: str,
        headers: list[tuple[bytes, bytes]],
        encode: Callable[[Any], bytes],
    ) -> None:
        self.send = send
        self.fmt = fmt
        self.headers = headers
        self.encode = encode
        self.started = False
        self.items = 0
        self.watch: _Watch | None = None  # stopped before the response completes

    async def start(self) -> None:
        media = b"text/event-stream; charset=utf-8" if self.fmt == SSE else NDJSON.encode()
        headers = [
            (b"content-type", media),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # proxies such as nginx must not buffer the stream
            *self.headers,
        ]
        self.started = True
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def item(self, value: Any) -> None:
        data = self.encode(value)
        frame = sse_event(data) if self.fmt == SSE else ndjson_line(data)
        await self.send({"type": "http.response.body", "body": frame, "more_body": True})
        self.items += 1

    def _unwatch(self) -> None:
        # Once the response is complete, uvicorn's receive() reports a disconnect at once,
        # which must not cancel the request's own tail (closing the generator).
        if self.watch is not None:
            self.watch.stop()

    async def end(self) -> None:
        self._unwatch()
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def fail(self, status: int, message: str) -> StreamOutcome:
        """Answer a failure: a plain JSON error before the stream started, else an error frame
        that ends it. A client already gone is not an error here."""
        self._unwatch()
        with contextlib.suppress(OSError):
            if not self.started:
                body = self.encode({"error": message})
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *self.headers,
                ]
                start = {"type": "http.response.start", "status": status, "headers": headers}
                await self.send(start)
                await self.send({"type": "http.response.body", "body": body})
            else:
                data = self.encode(error_payload(message, status))
                frame = sse_event(data, "error") if self.fmt == SSE else ndjson_line(data)
                await self.send({"type": "http.response.body", "body": frame, "more_body": True})
                await self.end()
        sent = 200 if self.started else status
        return StreamOutcome(sent, self.items, error=message, error_status=status)


async def _pump(
    responder: _Responder, stream: GeneratorStream, watch: _Watch, on_error: ErrorMapper
) -> StreamOutcome:
    """Pull items and send them until the end, a failure or the client leaving."""
    while True:
        try:
            item = await stream.next()
        except StopAsyncIteration:
            break
        except Exception as exc:
            return await responder.fail(*on_error(exc))
        if watch.gone:  # a generator that swallowed the CancelledError
            raise _Disconnect
        try:
            if not responder.started:
                await responder.start()  # only now: a failure at once gets a real status
            await responder.item(item)
        except OSError as exc:  # a server whose send() raises once the client is gone
            raise _Disconnect from exc
        except Exception as exc:  # an item that does not encode
            return await responder.fail(*on_error(exc))
    if not responder.started:
        await responder.start()
    await responder.end()
    return StreamOutcome(200, responder.items)


async def send_stream(
    send: Send,
    receive: Receive,
    stream: GeneratorStream,
    *,
    fmt: str = SSE,
    headers: list[tuple[bytes, bytes]] | None = None,
    on_error: ErrorMapper,
    encode: Callable[[Any], bytes] | None = None,
) -> StreamOutcome:
    """Answer one request with the items of `stream`, framed as `fmt` (`SSE` or `NDJSON`).

    Call it after the request body has been read. The first item is awaited before the status
    line goes out, so a generator that fails at once gets a plain JSON error with the status
    `on_error(exc)` gives. `headers` are added to the response (e.g. `x-model-version`).
    If the server cancels the request (a shutdown past its grace period), the stream ends with
    a 503 error frame. The generator is closed however the answer ends.
    """
    from .codecs import encode_json

    responder = _Responder(send, fmt, headers or [], encode or encode_json)
    watch = responder.watch = _Watch(receive)
    try:
        return await _pump(responder, stream, watch, on_error)
    except _Disconnect:
        watch.claim()
    except asyncio.CancelledError:
        if not watch.claim():
            message = "the server is shutting down; the stream was cut short"
            return await responder.fail(503, message)
    finally:
        watch.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await stream.close()
    sent = 200 if responder.started else 499
    return StreamOutcome(sent, responder.items, disconnected=True)
