"""Streaming throughput: items/s of `shelf serve` streaming apis against a naive starlette app.

    python benchmarks/stream_bench.py [--items N] [--rounds R]

Both servers stream the same small dict per item as Server-Sent Events, from a sync generator
(`count`) and from an async generator (`acount`). The naive app is starlette's
`StreamingResponse` (sync generators iterated on its thread pool, as ours are; no disconnect
watching per item, no first-item priming). One client reads each stream to its end with httpx;
the figure is items received per second, best of R rounds, and the ratio of the two in the same
run (this shared machine drifts between runs; say `uptime` beside the figures).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

SERVICE = textwrap.dedent(
    """
    from collections.abc import AsyncIterator, Iterator

    import torchshelf


    @torchshelf.service
    class Streams:
        @torchshelf.api
        def count(self, n: int) -> Iterator[dict]:
            for i in range(n):
                yield {"i": i, "text": "token"}

        @torchshelf.api
        async def acount(self, n: int) -> AsyncIterator[dict]:
            for i in range(n):
                yield {"i": i, "text": "token"}
    """
)

NAIVE = textwrap.dedent(
    """
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route


    def frames(n):
        for i in range(n):
            yield b"data: " + orjson.dumps({"i": i, "text": "token"}) + b"\\n\\n"


    async def aframes(n):
        for i in range(n):
            yield b"data: " + orjson.dumps({"i": i, "text": "token"}) + b"\\n\\n"


    async def count(request: Request) -> StreamingResponse:
        n = (await request.json())["n"]
        return StreamingResponse(frames(n), media_type="text/event-stream")


    async def acount(request: Request) -> StreamingResponse:
        n = (await request.json())["n"]
        return StreamingResponse(aframes(n), media_type="text/event-stream")


    app = Starlette(routes=[Route("/count", count, methods=["POST"]),
                            Route("/acount", acount, methods=["POST"])])
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(cmd: list[str], url: str, cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TORCHSHELF_HOME": str(cwd / "store")}
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            r = httpx.post(url + "/count", json={"n": 1}, timeout=1)
            if r.status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd} did not start")


def _rate(url: str, api: str, items: int, rounds: int) -> float:
    best = 0.0
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(rounds):
            start = time.perf_counter()
            newlines = 0  # two per event; a single byte is never split between chunks
            with client.stream("POST", f"/{api}", json={"n": items}) as r:
                for chunk in r.iter_bytes():
                    newlines += chunk.count(b"\n")
            got = newlines // 2
            elapsed = time.perf_counter() - start
            if got != items:
                raise RuntimeError(f"{url}/{api}: {got} items of {items}")
            best = max(best, items / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "streams.py").write_text(SERVICE)
        (root / "naive.py").write_text(NAIVE)
        results: dict[str, dict[str, float]] = {}
        servers = {
            "shelf serve": [sys.executable, "-m", "torchshelf", "serve", "streams.py:Streams",
                            "--threads", "1", "--port"],
            "naive starlette": [sys.executable, "-m", "uvicorn", "naive:app", "--log-level",
                                "warning", "--port"],
        }  # fmt: skip
        for name, cmd in servers.items():
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            proc = _start([*cmd, str(port)], url, root)
            try:
                results[name] = {
                    api: _rate(url, api, args.items, args.rounds) for api in ("count", "acount")
                }
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    load = os.getloadavg()
    print(f"items per stream {args.items}, best of {args.rounds}; load average {load[0]:.2f}")
    print(f"{'server':<16} {'sync items/s':>14} {'async items/s':>14}")
    for name, rates in results.items():
        print(f"{name:<16} {rates['count']:>14,.0f} {rates['acount']:>14,.0f}")
    ours, naive = results["shelf serve"], results["naive starlette"]
    print(
        f"ratio shelf/naive: sync {ours['count'] / naive['count']:.2f}, "
        f"async {ours['acount'] / naive['acount']:.2f}"
    )


if __name__ == "__main__":
    main()
