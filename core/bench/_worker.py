"""A load worker process for `shelf bench --url`: stdlib only, started as a script.

It is run as `python _worker.py FD` rather than through multiprocessing so that starting it never
re-imports the caller's `__main__` (spawn/forkserver do) nor forks a process with live threads,
and never imports torch: it costs tens of milliseconds and a few MB.

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
from typing import NamedTuple


class _Target(NamedTuple):
    scheme: str
    host: str
    port: int


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; return (status, connection may be reused)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    keep_alive = b"\r\nconnection: close" not in lower
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        length = int(head[at + 17 : end])
        if length:
            await reader.readexactly(length)
    elif b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                break
            await reader.readexactly(size + 2)
    elif status >= 200 and status not in (204, 304):
        await reader.read()  # body delimited by the server closing the connection
        keep_alive = False
    return status, keep_alive


# Status recorded for a request that failed below HTTP (reset, refused, bad framing).
CONNECTION_ERROR = 0


async def _connection_loop(
    endpoint: _Target,
    sslctx: _ssl.SSLContext | None,
    request: bytes,
    latencies: list[int],
    statuses: list[int],
    running: list[bool],
    first: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
) -> None:
    """One closed-loop client: send, wait for the whole answer, record, repeat."""
    clock = time.perf_counter_ns
    lat_append = latencies.append
    st_append = statuses.append
    reader, writer = first if first else (None, None)
    while running[0]:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(
                    endpoint.host, endpoint.port, ssl=sslctx
                )
            except OSError:
                st_append(CONNECTION_ERROR)
                lat_append(0)
                await asyncio.sleep(0.05)  # don't spin on a server that is gone
                continue
        t0 = clock()
        try:
            writer.write(request)
            status, keep_alive = await _read_response(reader)  # type: ignore[arg-type]
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            lat_append(clock() - t0)
            st_append(CONNECTION_ERROR)
            writer.close()
            writer = None
            continue
        lat_append(clock() - t0)
        st_append(status)
        if not keep_alive:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def _worker_async(conn: Connection) -> None:
    """Open the connections, wait for the common start, then report window after window."""
    job = conn.recv()
    endpoint = _Target(job["scheme"], job["host"], job["port"])
    request: bytes = job["request"]
    connections: int = job["connections"]
    warmup_ns: int = job["warmup_ns"]
    window_ns: int = job["window_ns"]
    max_windows: int = job["max_windows"]
    sslctx = _ssl.create_default_context() if endpoint.scheme == "https" else None
    opened = []
    try:
        for _ in range(connections):
            opened.append(await asyncio.open_connection(endpoint.host, endpoint.port, ssl=sslctx))
    except OSError as exc:
        conn.send(
            ("error", f"cannot connect to {endpoint.host}:{endpoint.port}: {exc.strerror or exc}")
        )
        return
    conn.send(("ready",))
    message = conn.recv()  # the parent's common start time, so every worker's windows align
    if message[0] != "go":
        for _, writer in opened:
            writer.close()
        return
    start_ns = message[1]
    await asyncio.sleep(max(0.0, (start_ns - time.perf_counter_ns()) / 1e9))

    latencies: list[int] = []
    statuses: list[int] = []
    running = [True]
    tasks = [
        asyncio.create_task(
            _connection_loop(endpoint, sslctx, request, latencies, statuses, running, pair)
        )
        for pair in opened
    ]
    # The parent says "stop" on the pipe once it has stable windows; watching the pipe's file
    # descriptor lets a window end early instead of running on after the decision.
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[None] = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: stopped.done() or stopped.set_result(None))
    boundary = start_ns + warmup_ns
    await asyncio.wait({stopped}, timeout=max(0.0, (boundary - time.perf_counter_ns()) / 1e9))
    mark = len(latencies)
    cpu_mark = time.process_time_ns()
    wall_mark = time.perf_counter_ns()
    for index in range(max_windows):
        if stopped.done():
            break
        boundary += window_ns
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
    running[0] = False
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main(fd: int) -> None:
    """Entry point: `python _worker.py FD`, FD being this end of a socketpair to the parent."""
    conn = Connection(fd)
    try:
        asyncio.run(_worker_async(conn))
    except (KeyboardInterrupt, BrokenPipeError, ConnectionResetError, EOFError):
        pass
    finally:
        conn.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
