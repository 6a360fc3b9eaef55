"""uvicorn's httptools protocol, writing each response's head and body in one syscall.

uvicorn writes the status line and headers of a response with one `transport.write` and the
body with another: two `send()` syscalls per small answer, and on loopback each one also runs
the receiver's TCP processing. Holding the head until the body's write (or the end of the
event-loop turn, whichever comes first) makes it one. Nothing else about the protocol changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["http_protocol"]


class _HeadHoldingTransport:
    """Forwards everything to the real transport, except that a response head (a 2xx-5xx
    status line and headers, ending in a blank line) waits for the next write, a close, or the
    end of this loop turn."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= 65536:
                self._transport.write(held + bytes(data))
            else:
                self._transport.writelines([held, data])
            return
        if (
            isinstance(data, bytes)
            and data.endswith(b"\r\n\r\n")
            and data.startswith(b"HTTP/1.1 ")
            and data[9:10] != b"1"  # never hold "100 Continue": the client waits for it
        ):
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def writelines(self, chunks: Any) -> None:
        self.flush()
        self._transport.writelines(chunks)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def http_protocol() -> Any:
    """The protocol class for uvicorn's `http=` setting, or "h11" without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "h11"

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            wrapped: Any = _HeadHoldingTransport(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
            super().connection_made(wrapped)

    return CoalescingHttpToolsProtocol
