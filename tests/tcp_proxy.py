"""A TCP proxy on 127.0.0.1 that makes a network slow, stalled or dead, for fault tests.

Run as its own process, so a test can SIGKILL it (the remote vanishes mid-transfer) and start it
again on the same port (the remote comes back with its data, which the server behind it kept)::

    python tests/tcp_proxy.py --target 127.0.0.1:9000 [--port 0] [--delay-ms 20]
        [--stall-after BYTES]

It prints `PORT <n>` on stdout once listening. `--delay-ms` sleeps before forwarding each chunk,
in both directions (a slow link). `--stall-after` forwards that many bytes client -> server in
total, then stops forwarding anything while keeping every socket open (a link that hangs
without a reset: only timeouts get a client out).
"""

from __future__ import annotations

import argparse
import asyncio
import sys


class Proxy:
    def __init__(self, target: tuple[str, int], delay_s: float, stall_after: int | None) -> None:
        self.target = target
        self.delay_s = delay_s
        self.stall_after = stall_after
        self.upstream_bytes = 0
        self.stalled = asyncio.Event()

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            self.pipe(client_r, server_w, upstream=True),
            self.pipe(server_r, client_w, upstream=False),
            return_exceptions=True,
        )
        for w in (client_w, server_w):
            w.close()

    async def pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, upstream: bool) -> None:
        while True:
            if self.stalled.is_set():
                await asyncio.Event().wait()  # hold the socket open, forward nothing, forever
            data = await r.read(65536)
            if not data:
                if w.can_write_eof():
                    w.write_eof()
                return
            if upstream and self.stall_after is not None:
                room = self.stall_after - self.upstream_bytes
                if len(data) >= room:
                    data = data[: max(room, 0)]
                    self.stalled.set()
                self.upstream_bytes += len(data)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            w.write(data)
            await w.drain()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--stall-after", type=int, default=None)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    proxy = Proxy((host, int(port)), args.delay_ms / 1000, args.stall_after)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.port, reuse_address=True)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
