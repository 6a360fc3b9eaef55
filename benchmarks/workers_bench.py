"""`shelf serve --workers 1` vs `--workers 2` on the small MLP, with wrk as the client.

wrk (Debian) is the cheap client (about 30 µs of CPU a request), so on a small machine it
leaves the most CPU to the servers. The configurations alternate for `--rounds` rounds and the
script prints each run's req/s, the medians and the ratio workers=2 / workers=1 taken in the
same run, with the load average before and after.

    python benchmarks/workers_bench.py --duration 10 --connections 64 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SMALL = (
    "import torch, torchshelf\n"
    "torch.manual_seed(0)\n"
    "m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),\n"
    "    torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))\n"
    "torchshelf.save_model('small', m, signatures={'__call__': {'batchable': True}}, version='v1')\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("server not ready")


def _wrk(port: int, connections: int, seconds: float, script: str) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", script,
         f"http://127.0.0.1:{port}/predict"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    errors = [x for x in out.splitlines() if "Non-2xx" in x or "Socket errors" in x]
    if errors:
        print("  wrk:", "; ".join(errors))
    return float(next(x for x in out.splitlines() if x.startswith("Requests/sec:")).split()[1])


def run_one(store: Path, workers: int, args: argparse.Namespace, script: str) -> float:
    port = _free_port()
    env = dict(os.environ, TORCHSHELF_HOME=str(store))
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchshelf", "serve", "small", "--port", str(port),
         "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _ready(port, proc)
        _wrk(port, args.connections, 2, script)  # warm-up
        return _wrk(port, args.connections, args.duration, script)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        env = dict(os.environ, TORCHSHELF_HOME=str(store))
        subprocess.run([sys.executable, "-c", SMALL], env=env, check=True)
        script = Path(tmp) / "post.lua"
        body = json.dumps({"inputs": [[0.25] * 64]})
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        print(f"load average before: {os.getloadavg()}; cores: {os.cpu_count()}")
        rates: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.rounds):
            for workers in (1, 2):
                rate = run_one(store, workers, args, str(script))
                rates[workers].append(rate)
                print(f"--workers {workers}: {rate:,.0f} req/s  (load {os.getloadavg()[0]:.2f})")
        one, two = (statistics.median(rates[w]) for w in (1, 2))
        print(f"median: workers=1 {one:,.0f} req/s, workers=2 {two:,.0f} req/s, "
              f"ratio {two / one:.2f}x")  # fmt: skip
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
