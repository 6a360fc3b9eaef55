"""A minimal closed-loop HTTP load generator for checking the peers by hand.

Why not `shelf bench --url`: this exists to investigate peer behaviour (BentoML's 503s, LitServe's
batch timeout) before our own bench client lands, and it counts every status code separately.
Each worker owns its own `httpx.AsyncClient` with a single connection: one shared client with
many connections scans its whole pool per request and becomes the bottleneck (MEASURING.md).

    python benchmarks/peers/loadgen.py http://127.0.0.1:3000/predict --dim 64 -c 1,8,64 -d 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections import Counter
from typing import Any

import httpx


def body_for(dim: int, seed: int = 0) -> bytes:
    """One request body: {"inputs": [[dim floats]]}."""
    rng = random.Random(seed)
    return json.dumps({"inputs": [[rng.uniform(-1, 1) for _ in range(dim)]]}).encode()


async def _worker(
    url: str, body: bytes, stop: float, lat_ok: list[float], codes: Counter[int | str]
) -> None:
    """Send requests back to back until `stop`, recording status and latency of each."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                r = await client.post(url, content=body, headers=headers)
                codes[r.status_code] += 1
                if r.status_code == 200:
                    lat_ok.append(time.perf_counter() - t0)
            except httpx.HTTPError as exc:
                codes[type(exc).__name__] += 1


def _pct(values: list[float], q: float) -> float:
    """Percentile q (0..100) of values, in milliseconds (nan if empty)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return 1000 * s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


async def run_level(url: str, body: bytes, concurrency: int, duration: float) -> dict[str, Any]:
    """Run one closed-loop level and summarise it (req/s counts only 200 answers)."""
    lat_ok: list[float] = []
    codes: Counter[int | str] = Counter()
    t0 = time.perf_counter()
    stop = t0 + duration
    await asyncio.gather(*(_worker(url, body, stop, lat_ok, codes) for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    total = sum(codes.values())
    return {
        "concurrency": concurrency,
        "duration_s": round(elapsed, 2),
        "ok_per_s": round(len(lat_ok) / elapsed, 1),
        "attempts_per_s": round(total / elapsed, 1),
        "codes": {str(k): v for k, v in sorted(codes.items(), key=str)},
        "p50_ms": round(_pct(lat_ok, 50), 2),
        "p99_ms": round(_pct(lat_ok, 99), 2),
        "mean_ms": round(1000 * statistics.fmean(lat_ok), 2) if lat_ok else float("nan"),
    }


async def run_levels(
    url: str, dim: int, levels: list[int], duration: float, warmup: float = 1.0
) -> list[dict[str, Any]]:
    """Warm up briefly at concurrency 1, then run each level in turn."""
    body = body_for(dim)
    if warmup > 0:
        await run_level(url, body, 1, warmup)
    return [await run_level(url, body, c, duration) for c in levels]


def main(argv: list[str] | None = None) -> None:
    """Command line: print one JSON line per concurrency level."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--dim", type=int, default=64, help="floats per request row")
    p.add_argument("-c", "--concurrency", default="1,8,64")
    p.add_argument("-d", "--duration", type=float, default=5.0, help="seconds per level")
    p.add_argument("--warmup", type=float, default=1.0)
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    for row in asyncio.run(run_levels(args.url, args.dim, levels, args.duration, args.warmup)):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
