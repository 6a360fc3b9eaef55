"""A load worker process for `shelf bench --url`: stdlib only, started as a script.

It is run as `python _worker.py FD` rather than through multiprocessing so that starting it never
re-imports the caller's `__main__` (spawn/forkserver do) nor forks a process with live threads,
and never imports torch: it costs tens of milliseconds and a few MB.

Each connection is an `asyncio.Protocol` that drives its own closed loop from callbacks: when a
response is complete it records two integers and writes the next (pre-encoded) request. No task,
future or coroutine is created per request, which is what keeps the client's CPU per request low
(streams + a coroutine per connection cost about three times as much here).

Protocol on the socketpair (pickled `multiprocessing.connection` messages):
parent -> worker: a job dict; ("go", start_ns); later ("stop",).
worker -> parent: ("ready",) or ("error", text); then ("window", i, latencies_ns bytes (array q),
statuses bytes (array h), cpu_ns, wall_ns) per measurement window. Status 0 = connection error.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
import sys
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any

# Statuses recorded for requests that failed below HTTP: reset, refused or bad framing; or no
# complete answer within the job's timeout (the connection is then closed and replaced).
CONNECTION_ERROR = 0
TIMEOUT = -1

_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _UNTIL_CLOSE = range(6)


class _ClosedLoop(asyncio.Protocol):
    """One client: send, read the whole HTTP/1.1 response, record, send again."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = _HEAD
        self.remaining = 0
        self.status = 0
        self.keep_alive = True
        self.t0 = 0
        self.in_flight = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        """Start the next request (the clock starts just before the write)."""
        self.in_flight = True
        self.state = _HEAD
        self.t0 = time.perf_counter_ns()
        self.transport.write(self.pool.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            state = self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[: end + 4]).lower()
                del buf[: end + 4]
                try:
                    self.status = int(head[9:12])
                except ValueError:
                    self._fail()
                    return
                self.keep_alive = b"\r\nconnection: close" not in head
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    self.remaining = int(head[at + 17 : head.index(b"\r\n", at + 2)])
                    self.state = _BODY
                elif b"\r\ntransfer-encoding: chunked" in head:
                    self.state = _CHUNK_SIZE
                elif self.status in (204, 304) or self.status < 200:
                    self.remaining = 0
                    self.state = _BODY
                else:
                    self.keep_alive = False
                    self.state = _UNTIL_CLOSE
            elif state == _BODY:
                if len(buf) < self.remaining:
                    return
                del buf[: self.remaining]
                self._complete()
                return
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
                del buf[: end + 2]
                if size == 0:
                    self.state = _TRAILERS
                else:
                    self.remaining = size + 2
                    self.state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                if len(buf) < self.remaining:
                    return
                del buf[: self.remaining]
                self.state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._complete()
                    return
            else:  # _UNTIL_CLOSE: the body ends when the server closes the connection
                buf.clear()
                return

    def _complete(self) -> None:
        now = time.perf_counter_ns()
        pool = self.pool
        pool.latencies.append(now - self.t0)
        pool.statuses.append(self.status)
        self.in_flight = False
        if not self.keep_alive:
            self.transport.close()  # type: ignore[union-attr]  # connection_lost reconnects
        elif pool.running:
            self.in_flight = True
            self.state = _HEAD
            self.t0 = now
            self.transport.write(pool.request)  # type: ignore[union-attr]

    def _fail(self) -> None:
        self.transport.close()  # type: ignore[union-attr]

    def expire(self) -> None:
        """Give up on a request that has taken longer than the timeout."""
        if self.in_flight:
            self.pool.latencies.append(time.perf_counter_ns() - self.t0)
            self.pool.statuses.append(TIMEOUT)
            self.in_flight = False
            self.transport.abort()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight:
            if self.state == _UNTIL_CLOSE and exc is None:
                self.pool.latencies.append(time.perf_counter_ns() - self.t0)
                self.pool.statuses.append(self.status)
            else:
                self.pool.latencies.append(time.perf_counter_ns() - self.t0)
                self.pool.statuses.append(CONNECTION_ERROR)
            self.in_flight = False
        self.pool.replace(self)


class _Pool:
    """The worker's connections and the two lists every completed request is appended to."""

    def __init__(
        self, host: str, port: int, sslctx: _ssl.SSLContext | None, request: bytes
    ) -> None:
        self.host, self.port, self.sslctx, self.request = host, port, sslctx, request
        self.latencies: list[int] = []
        self.statuses: list[int] = []
        self.running = False
        self.clients: set[_ClosedLoop] = set()
        self.pending: set[asyncio.Task[None]] = set()

    async def open(self) -> _ClosedLoop:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(
            lambda: _ClosedLoop(self), self.host, self.port, ssl=self.sslctx,
            server_hostname=self.host if self.sslctx else None,
        )  # fmt: skip
        self.clients.add(client)
        return client

    def start(self) -> None:
        self.running = True
        for client in list(self.clients):
            client.send()

    def replace(self, client: _ClosedLoop) -> None:
        """A connection closed (by the server or an error): open another while running."""
        self.clients.discard(client)
        if self.running:
            task = asyncio.get_running_loop().create_task(self._reconnect())
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def _reconnect(self) -> None:
        while self.running:
            try:
                client = await self.open()
            except OSError:
                self.latencies.append(0)
                self.statuses.append(CONNECTION_ERROR)
                await asyncio.sleep(0.05)  # don't spin on a server that is gone
                continue
            if self.running:
                client.send()
            return

    async def watchdog(self, timeout_ns: int) -> None:
        """Expire requests older than `timeout_ns`: a scan per second, off the request path."""
        while self.running:
            await asyncio.sleep(min(1.0, timeout_ns / 2e9))
            oldest = time.perf_counter_ns() - timeout_ns
            for client in list(self.clients):
                if client.in_flight and client.t0 < oldest:
                    client.expire()

    def close(self) -> None:
        self.running = False
        for task in self.pending:
            task.cancel()
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.close()


async def _worker_async(conn: Connection) -> None:
    """Open the connections, wait for the common start, then report window after window."""
    job = conn.recv()
    sslctx = _ssl.create_default_context() if job["scheme"] == "https" else None
    pool = _Pool(job["host"], job["port"], sslctx, job["request"])
    try:
        for _ in range(job["connections"]):
            await pool.open()
    except OSError as exc:
        conn.send(
            ("error", f"cannot connect to {job['host']}:{job['port']}: {exc.strerror or exc}")
        )
        return
    conn.send(("ready",))
    message = conn.recv()  # the parent's common start time, so every worker's windows align
    if message[0] != "go":
        pool.close()
        return
    start_ns: int = message[1]
    await asyncio.sleep(max(0.0, (start_ns - time.perf_counter_ns()) / 1e9))
    pool.start()
    watchdog = asyncio.get_running_loop().create_task(pool.watchdog(job["timeout_ns"]))

    # The parent says "stop" on the pipe once it has stable windows; watching the pipe's file
    # descriptor lets a window end early instead of running on after the decision.
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[None] = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: None if stopped.done() else stopped.set_result(None))
    boundary = start_ns + job["warmup_ns"]
    await asyncio.wait({stopped}, timeout=max(0.0, (boundary - time.perf_counter_ns()) / 1e9))
    latencies, statuses = pool.latencies, pool.statuses
    mark = len(latencies)
    cpu_mark = time.process_time_ns()
    wall_mark = time.perf_counter_ns()
    for index in range(job["max_windows"]):
        if stopped.done():
            break
        boundary += job["window_ns"]
        await asyncio.wait({stopped}, timeout=max(0.0, (boundary - time.perf_counter_ns()) / 1e9))
        if stopped.done():
            break
        end = len(latencies)
        cpu_now, wall_now = time.process_time_ns(), time.perf_counter_ns()
        conn.send(
            (
                "window",
                index,
                array("q", latencies[mark:end]).tobytes(),
                array("h", statuses[mark:end]).tobytes(),
                cpu_now - cpu_mark,
                wall_now - wall_mark,
            )
        )
        mark, cpu_mark, wall_mark = end, cpu_now, wall_now
    loop.remove_reader(conn.fileno())
    pool.close()
    watchdog.cancel()
    await asyncio.sleep(0)  # let the transports' close callbacks run


def _run(main_coro: Any) -> None:
    """Run on uvloop when it is installed (the `fast` extra): it halves the client's cost."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coro)
        return
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main_coro)
    finally:
        loop.close()


def main(fd: int) -> None:
    """Entry point: `python _worker.py FD`, FD being this end of a socketpair to the parent."""
    conn = Connection(fd)
    try:
        _run(_worker_async(conn))
    except (KeyboardInterrupt, BrokenPipeError, ConnectionResetError, EOFError):
        pass
    finally:
        conn.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
