"""Short closed-loop probes of one peer across batching settings (for README findings).

Why: the BentoML 503 investigation and the LitServe timeout check need the same loop: start the
peer with a setting, run a few seconds per concurrency level, stop it, next setting. Numbers from
this are indicative only (a few seconds per level on a shared 2-core machine).

    python benchmarks/peers/probe.py bentoml --model small --latencies 10,100,1000 -c 1,8,64
"""

from __future__ import annotations

import argparse
import asyncio
import json

from launch import INPUT_DIM, launch
from loadgen import run_levels


def main(argv: list[str] | None = None) -> None:
    """Print one JSON line per (setting, concurrency level)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("peer")
    p.add_argument("--model", default="small", choices=sorted(INPUT_DIM))
    p.add_argument("--latencies", default="10", help="max latency / batch timeout values, ms")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("-c", "--concurrency", default="1,8,64")
    p.add_argument("-d", "--duration", type=float, default=4.0)
    p.add_argument("--trace", action="store_true", help="BentoML: print dispatcher trace lines")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    env = {"TORCHSHELF_PEER_TRACE": "1"} if args.trace else None
    for lat in (float(v) for v in args.latencies.split(",")):
        with launch(args.peer, args.model, max_batch_size=args.max_batch_size,
                    max_latency_ms=lat, env=env) as peer:  # fmt: skip
            rows = asyncio.run(run_levels(peer.url, INPUT_DIM[args.model], levels, args.duration))
            trace = [
                ln for ln in peer.log_tail(200_000).splitlines() if ln.startswith("bentoml-trace")
            ]
        for row in rows:
            print(json.dumps({"peer": args.peer, "model": args.model, "latency_ms": lat, **row}))
        if args.trace:
            print("\n".join(trace))


if __name__ == "__main__":
    main()
