"""How long a remote operation may take: timeouts, retries and the stall watchdog.

A dead or hung S3 endpoint must end a push or pull with a `RemoteError` in bounded time, never
an endless wait. Three limits do it:

- per request: connect within `CONNECT_TIMEOUT_S`, and no more than `READ_TIMEOUT_S` between
  two reads of a response (botocore's `connect_timeout` / `read_timeout`);
- retries: botocore tries a request `REQUEST_ATTEMPTS` times ("standard" mode, jittered backoff)
  and s3fs retries its transient errors `S3FS_RETRIES` times on top of that;
- per transfer: a push or pull that moves no byte for `stall_timeout` seconds is cancelled. An
  upload whose peer stopped reading blocks in a socket write, which no read timeout covers;
  this catches it. Set with `[remote] stall_timeout` or `TORCHSHELF_REMOTE_STALL_TIMEOUT`.

Worst cases: a refused connection fails in well under a second per attempt; a request to a
server that accepts and then says nothing fails after attempts x retries x `READ_TIMEOUT_S`
(about 80 s), and a transfer stalled mid-body after `stall_timeout` (120 s by default).

Progress is seen per multipart part on upload (s3fs reports a part when it is done): with 8
parts of 50 MiB in flight, a link slower than about 8 x 50 MiB / `stall_timeout` (3.3 MiB/s at
120 s) looks stalled. Raise `stall_timeout` for such links.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = [
    "CONNECT_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "REQUEST_ATTEMPTS",
    "S3FS_RETRIES",
    "STALL_TIMEOUT_S",
    "Stalled",
    "Watchdog",
    "client_config",
    "is_transport_error",
    "quiet_transport_noise",
]

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 20.0
REQUEST_ATTEMPTS = 2
S3FS_RETRIES = 2
STALL_TIMEOUT_S = 120.0

T = TypeVar("T")

# Exception classes (by name, anywhere in the MRO) that mean "the connection failed or hung",
# from botocore, aiohttp, urllib3 and fsspec. Names, so that none of them is imported here.
_TRANSPORT_ERRORS = frozenset(
    {
        "HTTPClientError",  # botocore: ConnectionClosedError, ReadTimeoutError, ProxyConnectionError…
        "ConnectionError",  # botocore's and the builtin: EndpointConnectionError, ConnectTimeoutError…
        "ClientConnectionError",  # aiohttp: ServerDisconnectedError, ClientConnectorError…
        "ClientPayloadError",
        "ServerTimeoutError",
        "IncompleteRead",
        "ProtocolError",
        "TimeoutError",
        "FSTimeoutError",
    }
)


def client_config() -> dict[str, Any]:
    """botocore `Config` arguments: the per-request limits above, set explicitly."""
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
        "retries": {"total_max_attempts": REQUEST_ATTEMPTS, "mode": "standard"},
    }


def is_transport_error(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) means the endpoint was unreachable or hung."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if any(cls.__name__ in _TRANSPORT_ERRORS for cls in type(current).__mro__):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


class Stalled(Exception):
    """A transfer moved no byte for `seconds`; raised by `Watchdog.run`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no data moved for {seconds:g} s")
        self.seconds = seconds


class Watchdog:
    """Counts the bytes a transfer moves (as its progress callback) and cancels it on a stall.

    Pass the watchdog itself wherever a `progress(nbytes)` callable goes; it forwards to the
    caller's own progress callback.
    """

    def __init__(self, stall_timeout: float, progress: Callable[[int], Any] | None = None) -> None:
        self.stall_timeout = stall_timeout
        self._progress = progress
        self.moved = 0
        self._last = time.monotonic()

    def __call__(self, nbytes: int) -> None:
        self.moved += nbytes
        self._last = time.monotonic()
        if self._progress is not None:
            self._progress(nbytes)

    def idle(self) -> float:
        return time.monotonic() - self._last

    async def run(self, coro: Awaitable[T]) -> T:
        """Await `coro`; cancel it and raise `Stalled` once it has been idle too long."""
        self._last = time.monotonic()
        task = asyncio.ensure_future(coro)
        tick = min(1.0, self.stall_timeout / 4)
        while True:
            done, _ = await asyncio.wait({task}, timeout=tick)
            if done:
                return task.result()
            if self.idle() > self.stall_timeout:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise Stalled(self.stall_timeout)


def quiet_transport_noise(loop: asyncio.AbstractEventLoop) -> None:
    """Keep aiohttp's abandoned write tasks of a dropped connection off stderr.

    When a connection dies mid-upload, aiohttp leaves a body-writing task whose exception
    nobody retrieves, and asyncio prints it with a traceback at garbage collection. The
    request itself has already failed and is reported as a `RemoteError`; the echo is noise.
    """
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if exc is not None and is_transport_error(exc):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
