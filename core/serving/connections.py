"""Connection guards for `shelf serve`: a header-read deadline and a bound on open connections.

uvicorn has no header timeout: a client that opens a connection and sends its request headers a
byte at a time (slow-loris) holds that connection, and its file descriptor, forever; a few
thousand such clients exhaust the process. `guarded_protocol` wraps uvicorn's HTTP protocol
class (httptools or h11) with two checks, both costing nothing on a request that arrives whole:

- **header deadline**: from the moment a connection opens, or the first byte of a new request on
  a kept-alive connection arrives, its request headers must be complete within
  `header_timeout` seconds; otherwise the server answers 408 and closes the connection. The body
  has its own deadline (`--timeout`, in the app), and an idle kept-alive connection is closed by
  uvicorn's keep-alive timeout.
- **max connections**: a connection opened while `max_connections` are already open gets a 503
  (JSON `{"error"}`, `Retry-After`) once its headers arrive, and is closed; the others are served
  as usual. Stalled connections count until their deadline closes them.

The guard watches uvicorn's `cycle` attribute (a new request/response cycle begins when a
request's headers are complete), which both protocol classes share.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

__all__ = ["ConnectionStats", "guarded_protocol", "STATS"]

_MAX_HEADER_BYTES = 64 * 1024  # what an over-limit connection may send before it is answered


class ConnectionStats:
    """Counters of what the guards did in this process."""

    def __init__(self) -> None:
        self.header_timeouts = 0
        self.over_limit = 0


STATS = ConnectionStats()


def _response(status: int, reason: str, error: str, extra: str = "") -> bytes:
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + body


class _Guard:
    """The guards, mixed in before uvicorn's protocol class (see `guarded_protocol`)."""

    # set per subclass by guarded_protocol
    header_timeout: float | None = None
    max_connections: int | None = None
    timeout_reply = b""
    busy_reply = b""
    # uvicorn's protocol attributes that the guards read
    cycle: Any
    transport: Any
    connections: set[Any]
    loop: asyncio.AbstractEventLoop

    _header_timer: asyncio.TimerHandle | None = None
    _over_limit = False
    _pending = b""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self._over_limit = True
            STATS.over_limit += 1
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._over_limit:
            self._refuse(data)
            return
        cycle = self.cycle
        waiting = cycle is None or cycle.response_complete
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not cycle:
            self._disarm()  # a new cycle: this request's headers are complete
        elif waiting and self._header_timer is None:
            self._arm()  # the first bytes of a request on a kept-alive connection

    def _refuse(self, data: bytes) -> None:
        """Answer 503 once the request's headers are in (so the client reads it), then close."""
        self._pending += data
        if b"\r\n\r\n" in self._pending or len(self._pending) > _MAX_HEADER_BYTES:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(self.busy_reply)
                self.transport.close()

    def _arm(self) -> None:
        if self.header_timeout and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or not (cycle is None or cycle.response_complete):
            return
        STATS.header_timeouts += 1
        self.transport.write(self.timeout_reply)
        self.transport.close()


def guarded_protocol(
    base: type[asyncio.Protocol], header_timeout: float | None, max_connections: int | None
) -> type[asyncio.Protocol]:
    """A subclass of uvicorn's protocol class `base` with the two guards above."""
    late = f"request headers not complete within {header_timeout or 0:g} s; connection closed"
    busy = f"too many open connections (--max-connections {max_connections}); retry shortly"
    attrs = {
        "header_timeout": header_timeout,
        "max_connections": max_connections,
        "timeout_reply": _response(408, "Request Timeout", late),
        "busy_reply": _response(503, "Service Unavailable", busy, "retry-after: 1\r\n"),
    }
    return type(f"Guarded{base.__name__}", (_Guard, base), attrs)


def http_protocol_class(name: str) -> type[asyncio.Protocol]:
    """uvicorn's protocol class for `http="httptools"` or `"h11"`."""
    if name == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return H11Protocol
