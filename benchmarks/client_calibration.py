"""Load-generator calibration: is `shelf bench --url` measuring the server or itself?

    python benchmarks/client_calibration.py [--connections 8] [--seconds 2] [--rounds 3]

Starts the echo server from tests/bench_echo_server.py on a free 127.0.0.1 port and drives it,
in interleaved rounds, with:

* wrk (Debian's `wrk`, C + epoll), the lower bound on client cost, when installed;
* torchshelf's load generator (`bench_server`, one worker process);
* a plain httpx client done right (one AsyncClient with one connection per closed-loop client,
  as MEASURING.md recommends), which is what the issue's 1,300 req/s ceiling refers to.

For each it prints the best req/s over the rounds and the client's CPU per request (user + sys
of the client process, from getrusage). The echo server is the bottleneck when req/s are close
and the client's CPU per request is small next to the server's (1 / req/s per server core).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HTTPX_CLIENT = r"""
import asyncio, json, resource, sys, time
import httpx

url, body, connections, seconds = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), float(sys.argv[4])

async def one(done, stop):
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as client:
        while time.perf_counter() < stop:
            r = await client.post(url, content=body, headers={"Content-Type": "application/json"})
            done.append(r.status_code)

async def main():
    done = []
    stop = time.perf_counter() + seconds
    await asyncio.gather(*(one(done, stop) for _ in range(connections)))
    return done

t0 = time.perf_counter(); r0 = resource.getrusage(resource.RUSAGE_SELF)
done = asyncio.run(main())
t1 = time.perf_counter(); r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(json.dumps({"rate": len(done) / (t1 - t0), "cpu_us": cpu / max(1, len(done)) * 1e6}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_echo() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "bench_echo_server.py"), str(port)]
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}/predict"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("echo server did not start")


def run_wrk(url: str, body: bytes, connections: int, seconds: float) -> tuple[float, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write('wrk.method = "POST"\n')
        fh.write(f"wrk.body = {json.dumps(body.decode())}\n")
        fh.write('wrk.headers["Content-Type"] = "application/json"\n')
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", fh.name, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(fh.name).unlink()
    total = int(next(x for x in out.splitlines() if "requests in" in x).split()[0])
    rate = float(next(x for x in out.splitlines() if x.startswith("Requests/sec:")).split()[1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return rate, cpu / max(1, total) * 1e6


def run_httpx(url: str, body: bytes, connections: int, seconds: float) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", HTTPX_CLIENT, url, body.decode(), str(connections), str(seconds)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    doc = json.loads(out)
    return doc["rate"], doc["cpu_us"]


def run_ours(url: str, body, connections: int, seconds: float) -> tuple[float, float]:  # noqa: ANN001
    from torchshelf.bench.load import LoadSettings, bench_server

    settings = LoadSettings(
        concurrency=(connections,), warmup_s=0.3, duration_s=seconds / 3, max_windows=3
    )
    (r,) = bench_server(url, body, settings).results
    return r.requests_per_s, r.client_cpu_us_per_request or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from torchshelf.bench.load import body_from_shape

    body = body_from_shape((4,))
    clients = {"torchshelf": run_ours, "httpx (1 conn per client)": run_httpx}
    if shutil.which("wrk"):
        clients = {"wrk": run_wrk, **clients}
    else:
        print("wrk not installed (apt-get install wrk): skipping the lower bound")
    best: dict[str, tuple[float, float]] = {}
    server, url = start_echo()
    try:
        for _ in range(args.rounds):
            for name, fn in clients.items():
                data = body if name == "torchshelf" else body.data
                rate, cpu_us = fn(url, data, args.connections, args.seconds)
                if name not in best or rate > best[name][0]:
                    best[name] = (rate, cpu_us)
    finally:
        server.terminate()
        server.wait(10)
    reference = best.get("wrk", best["torchshelf"])[0]
    print(f"echo server, {args.connections} closed-loop connections, best of {args.rounds} rounds")
    print(f"{'client':<28}{'req/s':>10}{'vs ref':>9}{'client CPU us/req':>20}")
    for name, (rate, cpu_us) in best.items():
        print(f"{name:<28}{rate:>10,.0f}{rate / reference:>9.2f}{cpu_us:>20.1f}")


if __name__ == "__main__":
    main()
