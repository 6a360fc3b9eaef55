"""Zero-downtime swaps of `shelf serve NAME --label stage=production --watch`, measured.

Saves two versions of a SIZE-MiB model (square 4096-wide layers, so every request reads all of
its weights, as a real forward does), starts the server as a real process, and runs
CLIENTS closed-loop clients against it. First STEADY seconds without swaps (the baseline), then
SWAPS promotions (an in-process label move plus SIGHUP, so the figure is the swap itself, not
the watch interval; with --watch-interval S a promotion waits up to S more). For each swap:

    swap time   promotion -> the first response whose X-Model-Version is the new version
    during      latencies of the requests sent from the promotion until 0.5 s after that
                first new response (covers the load, warm-up, switch and release)

and prints p50/p99 during swaps next to steady state (the ratio is the figure to read), the
swap times, the errors (must be 0) and the load average. Nothing leaves 127.0.0.1.

    python benchmarks/swap_bench.py --size-mib 1024 --swaps 5
    python benchmarks/swap_bench.py --size-mib 64 --swaps 10 --clients 8 --swap drain
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def save_versions(store: Path, size_mib: int) -> list[str]:
    """Two versions of a model of about `size_mib` MiB; the first labelled production.

    `Linear(64, 4096)`, then `size_mib // 64` square `Linear(4096, 4096)` layers (64 MiB each),
    then `Linear(4096, 4)`: every forward reads all weights, activations stay small (a model
    with one huge hidden layer would make the batch-32 warm-up allocate hundreds of MiB).
    """
    import torch

    import torchshelf

    width, layers = 4096, max(1, size_mib // 64)
    sig = {"__call__": {"batchable": True, "input_spec": {"shape": [-1, 64], "dtype": "float32"}}}
    versions = []
    for k in (1, 2):
        mods = [torch.nn.Linear(64, width, bias=False)]
        mods += [torch.nn.Linear(width, width, bias=False) for _ in range(layers)]
        model = torch.nn.Sequential(*mods, torch.nn.Linear(width, 4, bias=False))
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(k * 1e-4)
        labels = {"stage": "production"} if k == 1 else {"stage": "staging"}
        tag = torchshelf.save_model("bench", model, signatures=sig, labels=labels, store=store)
        versions.append(tag.version)
        del model
    return versions


class Clients:
    """Closed-loop clients; every answer recorded as (sent, latency, status, version)."""

    def __init__(self, url: str, n: int) -> None:
        self.url = url
        self.records: list[tuple[float, float, int, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        body = {"inputs": [[0.5] * 64]}
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post(self.url + "/predict", json=body)
                    status, version = r.status_code, r.headers.get("x-model-version", "")
                except httpx.HTTPError:
                    status, version = 0, ""
                with self._lock:
                    self.records.append((sent, time.monotonic() - sent, status, version))

    def first_of(self, version: str, since: float) -> float | None:
        with self._lock:
            times = [s + lat for s, lat, _, v in self.records if v == version and s >= since]
        return min(times) if times else None

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(180)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from torchshelf.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="swap-bench-"))
    store = Store(tmp / "store")
    t = time.perf_counter()
    a, b = save_versions(store.root, args.size_mib)
    print(f"saved 2 x {args.size_mib} MiB in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TORCHSHELF_HOME": str(store.root)}
    cmd = [sys.executable, "-m", "torchshelf", "serve", "bench", "--label", "stage=production"]
    cmd += ["--watch", "--watch-interval", "3600", "--swap", args.swap, "--port", str(port)]
    log = open(tmp / "serve.log", "w+")  # noqa: SIM115 - read at the end
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        clients = Clients(url, args.clients)
        time.sleep(args.steady)
        steady_end = time.monotonic()
        windows, swap_times = [], []
        current, other = a, b
        for _ in range(args.swaps):
            store.set_labels(f"bench:{other}", {"stage": "production"})
            store.set_labels(f"bench:{current}", {"stage": "staging"})
            promoted = time.monotonic()
            server.send_signal(signal.SIGHUP)
            while (first := clients.first_of(other, promoted)) is None:
                time.sleep(0.005)
            swap_times.append(first - promoted)
            time.sleep(0.5)
            windows.append((promoted, first + 0.5))
            current, other = other, current
            time.sleep(args.gap)
        clients.stop()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    out = report(args, clients.records, steady_end, windows, swap_times, log, tmp)
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def report(
    args: argparse.Namespace,
    records: list[tuple[float, float, int, str]],
    steady_end: float,
    windows: list[tuple[float, float]],
    swap_times: list[float],
    log: Any,
    tmp: Path,
) -> dict[str, Any]:
    steady = [lat for s, lat, st, _ in records if s < steady_end and st == 200]
    during = [lat for s, lat, st, _ in records if any(lo <= s < hi for lo, hi in windows)]
    errors: dict[int, int] = {}
    for *_, st, _ in records:
        if st != 200:
            errors[st] = errors.get(st, 0) + 1
    log.seek(0)
    out = {
        "size_mib": args.size_mib,
        "clients": args.clients,
        "swap_mode": args.swap,
        "requests": len(records),
        "errors": errors,
        "steady": {"n": len(steady), "p50_ms": pct(steady, 0.5), "p99_ms": pct(steady, 0.99)},
        "during_swaps": {"n": len(during), "p50_ms": pct(during, 0.5), "p99_ms": pct(during, 0.99)},
        "p99_ratio": pct(during, 0.99) / pct(steady, 0.99),
        "swap_time_s": {
            "each": [round(x, 3) for x in swap_times],
            "median": statistics.median(swap_times),
            "max": max(swap_times),
        },
        "server_swap_lines": [ln for ln in log.read().splitlines() if " is live " in ln],
        "load_average": os.getloadavg(),
        "scratch": str(tmp),
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--steady", type=float, default=5.0, help="seconds of steady state first")
    p.add_argument("--swaps", type=int, default=5)
    p.add_argument("--gap", type=float, default=1.0, help="seconds between swaps")
    p.add_argument("--swap", choices=["live", "drain"], default="live")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the scratch store")
    args = p.parse_args()
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    s, d = out["steady"], out["during_swaps"]
    print(f"model {args.size_mib} MiB, {args.clients} clients, --swap {args.swap}")
    print(f"steady        n={s['n']:6d}  p50 {s['p50_ms']:8.1f} ms  p99 {s['p99_ms']:8.1f} ms")
    print(f"during swaps  n={d['n']:6d}  p50 {d['p50_ms']:8.1f} ms  p99 {d['p99_ms']:8.1f} ms")
    print(f"p99 during / steady: {out['p99_ratio']:.2f}x   errors: {out['errors'] or 0}")
    sw = out["swap_time_s"]
    print(
        f"swap time (promotion -> first new answer): median {sw['median']:.2f} s, max {sw['max']:.2f} s"
    )
    print(f"  each: {sw['each']}")
    for line in out["server_swap_lines"]:
        print(f"  server: {line}")
    print("load average: " + " ".join(f"{x:.2f}" for x in out["load_average"]))


if __name__ == "__main__":
    main()
