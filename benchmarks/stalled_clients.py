"""Normal clients beside 500 slow-loris connections: p50/p99, and when the stalled ones close.

A real `shelf serve` (small MLP, `--header-timeout`) on 127.0.0.1. Phase 1: one normal client
sends `--requests` JSON requests alone (baseline latencies). Phase 2: `--stalled` connections
open and trickle header bytes (one byte per connection every 0.25 s, never finishing the
headers) while the same client sends the same requests again. Reports p50/p99 of both phases,
how many stalled connections got the 408 and when each was closed, relative to the deadline.
The slow-loris clients are tests/test_faults_connections.py's.

    python benchmarks/stalled_clients.py --stalled 500 --header-timeout 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def latencies(url: str, n: int) -> list[float]:
    import httpx

    body = {"inputs": [[0.5] * 8]}
    out = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(n):
            started = time.perf_counter()
            r = client.post("/predict", json=body)
            out.append(time.perf_counter() - started)
            assert r.status_code == 200, r.text
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stalled", type=int, default=500)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--header-timeout", type=float, default=20.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from test_faults_connections import Serve, SlowLoris

    import torchshelf

    with tempfile.TemporaryDirectory(prefix="stalled-") as scratch:
        import torch

        torchshelf.save_model("lin", torch.nn.Linear(8, 3), store=Path(scratch))
        serve = Serve(Path(scratch), "--header-timeout", str(args.header_timeout))
        try:
            alone = latencies(serve.url, args.requests)
            loris = SlowLoris(serve.port, args.stalled)
            beside = latencies(serve.url, args.requests)
            loris.thread.join(args.header_timeout + 60)
            closed = sorted(loris.closed_at.values())
            got_408 = sum(r.startswith(b"HTTP/1.1 408") for r in loris.replies.values())
            loris.close()
            alive = serve.proc.poll() is None
        finally:
            serve.stop()
    ms = 1000.0
    result: dict[str, Any] = {
        "stalled": args.stalled,
        "header_timeout_s": args.header_timeout,
        "requests_per_phase": args.requests,
        "alone_p50_ms": round(statistics.median(alone) * ms, 2),
        "alone_p99_ms": round(pct(alone, 0.99) * ms, 2),
        "beside_stalled_p50_ms": round(statistics.median(beside) * ms, 2),
        "beside_stalled_p99_ms": round(pct(beside, 0.99) * ms, 2),
        "stalled_closed": len(closed),
        "stalled_got_408": got_408,
        "closed_after_s": {
            "first": round(closed[0], 2) if closed else None,
            "median": round(statistics.median(closed), 2) if closed else None,
            "last": round(closed[-1], 2) if closed else None,
        },
        "server_alive": alive,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
