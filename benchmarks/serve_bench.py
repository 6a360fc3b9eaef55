"""Benchmark `shelf serve` against its ceilings, in one run on one machine.

For each model (a small MLP and a compute-bound MLP) it measures:
- raw: in-process forward rows/s at the max batch size (the model's ceiling), and one batch-1
  forward (what a lone request cannot beat);
- echo: a bare starlette app that decodes the same JSON body into a tensor and answers a JSON of
  the same size as the model's answer, with no model (the HTTP + codec ceiling);
- naive: an unbatched starlette endpoint that runs the model inside the request;
- shelf serve: batching on, at 1, 8 and 64 closed-loop clients with JSON, and 64 with
  safetensors bodies.

Next to req/s and latency it reports the server's CPU time per request (from /proc) and, for
shelf serve, the mean items per model call (from its /metrics): on a shared machine these move
much less than req/s does.

Client, servers and torch share the machine's cores, so the ceilings add up: the limit is
`1 / (1/echo + 1/raw)`. Ratios taken in the same run are what to compare.

Usage:
    python benchmarks/serve_bench.py                    # both models, 5 s per point
    python benchmarks/serve_bench.py --models small --duration 3 --client wrk
    python benchmarks/serve_bench.py --output json > serve_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS: dict[str, tuple[int, int, int]] = {
    # name: (in, hidden, out)
    "small": (64, 256, 10),
    "big": (1024, 4096, 1024),
}
MAX_BATCH = 32


def build(name: str) -> Any:
    """The benchmark models: Linear-ReLU-Linear-ReLU-Linear, seeded."""
    import torch

    i, h, o = MODELS[name]
    torch.manual_seed(0)
    layers = [torch.nn.Linear(i, h), torch.nn.ReLU(), torch.nn.Linear(h, h), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(h, o)).eval()


# -- the baseline apps (run as child processes) --------------------------------------------------


def run_baseline(kind: str, model_name: str, port: int) -> None:
    """Serve the `echo` or `naive` app on `port` (called in a child process)."""
    import numpy as np
    import orjson
    import torch
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    _, _, out_dim = MODELS[model_name]
    model = build(model_name) if kind == "naive" else None
    answer = torch.randn(1, out_dim)
    opts = orjson.OPT_SERIALIZE_NUMPY

    async def predict(request: Request) -> Response:
        data = orjson.loads(await request.body())
        x = torch.from_numpy(np.array(data["inputs"], dtype=np.float32))
        if model is None:
            y = answer
        else:
            with torch.inference_mode():
                y = model(x)
        return Response(
            orjson.dumps({"outputs": y.numpy()}, option=opts), media_type="application/json"
        )

    async def ready(request: Request) -> Response:
        return Response(b"{}")

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", ready)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- load generation ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


async def _httpx_load(
    url: str, body: bytes, headers: dict[str, str], clients: int, duration: float
) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop_at = 0.0

    # One client with one connection per worker (a shared pool is pathologically slow), created
    # once: client creation (an SSL context each) must not fall inside the measured window.
    import ssl

    ctx = ssl.create_default_context()  # shared: one per client costs ~30 ms each
    pool = [
        httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=60, verify=ctx)
        for _ in range(clients)
    ]

    async def worker(c: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            r = await c.post(url, content=body, headers=headers)
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1

    # warm-up: connections, allocator, first batches
    stop_at = time.perf_counter() + min(1.0, duration / 3)
    await asyncio.gather(*(worker(c) for c in pool))
    latencies.clear()
    errors.clear()
    start = time.perf_counter()
    stop_at = start + duration
    await asyncio.gather(*(worker(c) for c in pool))
    elapsed = time.perf_counter() - start
    for c in pool:
        await c.aclose()
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 50) * 1e3,
        "p99_ms": _percentile(latencies, 99) * 1e3,
        "errors": errors,
    }


def _wrk_load(
    url: str, body: bytes, headers: dict[str, str], clients: int, duration: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(body)
        script = Path(tmp) / "post.lua"
        hdrs = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
        script.write_text(
            f'wrk.method = "POST"\nlocal f = io.open("{body_file}", "rb")\n'
            f'wrk.body = f:read("*a")\nf:close()\n{hdrs}'
            "done = function(summary, latency, requests)\n"
            '  io.write(string.format("JSON {\\"n\\": %d, \\"s\\": %f, \\"p50\\": %f, \\"p99\\": %f, \\"err\\": %d}\\n",'
            " summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,"
            " latency:percentile(99) / 1e3, summary.errors.status + summary.errors.connect"
            " + summary.errors.read + summary.errors.write + summary.errors.timeout))\n"
            "end\n"
        )
        run = ["wrk", "-t1", f"-c{clients}", "-s", str(script), url]
        subprocess.run([*run[:1], "-d1s", *run[1:]], capture_output=True, check=False)
        seconds = max(1, round(duration))  # wrk takes whole seconds
        out = subprocess.run(
            [*run[:1], f"-d{seconds}s", *run[1:]], capture_output=True, text=True, check=False
        )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}{out.stderr}")
    data = json.loads(line[5:])
    return {
        "requests_per_s": (data["n"] - data["err"]) / data["s"],
        "p50_ms": data["p50"],
        "p99_ms": data["p99"],
        "errors": {"non-2xx": data["err"]} if data["err"] else {},
    }


def load(
    client: str, url: str, body: bytes, headers: dict[str, str], clients: int, duration: float
) -> dict[str, Any]:
    """Closed-loop load: `clients` concurrent callers for `duration` seconds."""
    if client == "wrk":
        return _wrk_load(url, body, headers, clients, duration)
    return asyncio.run(_httpx_load(url, body, headers, clients, duration))


# -- servers ------------------------------------------------------------------------------------


class Child:
    """A server child process, ready once GET /readyz answers."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str] | None = None) -> None:
        import httpx

        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv} exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{argv} did not become ready")

    def batch_totals(self) -> tuple[float, float]:
        """(items, model calls) so far, from the server's batch-size histogram."""
        import httpx

        try:
            text = httpx.get(self.url + "/metrics", timeout=5).text
        except httpx.TransportError:
            return 0.0, 0.0
        total = count = 0.0
        for ln in text.splitlines():
            if ln.startswith("torchshelf_batch_size_sum"):
                total += float(ln.rsplit(" ", 1)[1])
            elif ln.startswith("torchshelf_batch_size_count"):
                count += float(ln.rsplit(" ", 1)[1])
        return total, count

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used (Linux; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def measure(
        self, client: str, body: bytes, headers: dict[str, str], clients: int, duration: float
    ) -> dict[str, Any]:
        """`load()` plus what the server spent: CPU ms per request and items per model call."""
        items0, calls0 = self.batch_totals()
        cpu0 = self.cpu_seconds()
        res = load(client, self.url + "/predict", body, headers, clients, duration)
        cpu = self.cpu_seconds() - cpu0
        items1, calls1 = self.batch_totals()
        # the warm-up inside load() is counted in both; it is a small, equal share for all
        served = max(
            1.0, res["requests_per_s"] * duration * (1 + min(1.0, duration / 3) / duration)
        )
        res["server_cpu_ms_per_request"] = cpu / served * 1e3
        if calls1 > calls0:
            res["batch_size_mean"] = (items1 - items0) / (calls1 - calls0)
        return res

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _time_forward(model: Any, x: Any, seconds: float) -> list[float]:
    import torch

    with torch.inference_mode():
        for _ in range(5):
            model(x)
        times = []
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return times


def raw_forward(name: str, seconds: float) -> dict[str, float]:
    """In-process forward: rows/s at MAX_BATCH (torch's default threads, the issue's `raw`),
    the same with the threads `shelf serve` gives torch on CPU (all cores but one), and the
    median batch-1 forward time."""
    import torch

    from torchshelf.serving.app import default_threads

    model = build(name)
    i = MODELS[name][0]
    big, one = torch.randn(MAX_BATCH, i), torch.randn(1, i)
    default = torch.get_num_threads()
    times = _time_forward(model, big, seconds)
    out = {"rows_per_s": MAX_BATCH * len(times) / sum(times), "threads": float(default)}
    torch.set_num_threads(default_threads())
    times = _time_forward(model, big, seconds)
    out["rows_per_s_serve_threads"] = MAX_BATCH * len(times) / sum(times)
    torch.set_num_threads(default)
    out["batch1_ms"] = statistics.median(_time_forward(model, one, seconds)) * 1e3
    return out


def bench_model(name: str, args: argparse.Namespace, store: str) -> dict[str, Any]:
    import torch
    from safetensors.torch import save as st_save

    import torchshelf

    os.environ["TORCHSHELF_HOME"] = store
    in_dim = MODELS[name][0]
    tag = torchshelf.save_model(
        f"bench-{name}",
        build(name),
        signatures={
            "__call__": {
                "batchable": True,
                "input_spec": {"shape": [-1, in_dim], "dtype": "float32"},
            }
        },
    )
    x = torch.randn(1, in_dim)
    json_body = json.dumps({"inputs": x.tolist()}).encode()
    bin_body = st_save({"inputs": x})
    jh = {"Content-Type": "application/json"}
    bh = {"Content-Type": "application/vnd.safetensors", "Accept": "application/vnd.safetensors"}
    res: dict[str, Any] = {"model": name, "raw": raw_forward(name, min(args.duration, 3.0))}
    me = [sys.executable, os.path.abspath(__file__)]
    for kind in ("echo", "naive"):
        port = _free_port()
        child = Child([*me, "--_baseline", kind, "--models", name, "--port", str(port)], port)
        try:
            res[kind] = child.measure(args.client, json_body, jh, 64, args.duration)
        finally:
            child.stop()
        _say(args, f"{name} {kind}: {res[kind]['requests_per_s']:.0f} req/s")
    port = _free_port()
    child = Child(
        [
            sys.executable,
            "-m",
            "torchshelf",
            "serve",
            str(tag),
            "--port",
            str(port),
            "--max-batch-size",
            str(MAX_BATCH),
        ],
        port,
        env={"TORCHSHELF_HOME": store},
    )
    try:
        serve: dict[str, Any] = {}
        for clients in args.clients:
            serve[f"json@{clients}"] = child.measure(
                args.client, json_body, jh, clients, args.duration
            )
            _say(
                args,
                f"{name} serve json@{clients}: {serve[f'json@{clients}']['requests_per_s']:.0f} req/s",
            )
        top = max(args.clients)
        serve[f"binary@{top}"] = child.measure(args.client, bin_body, bh, top, args.duration)
        _say(
            args, f"{name} serve binary@{top}: {serve[f'binary@{top}']['requests_per_s']:.0f} req/s"
        )
    finally:
        child.stop()
    res["serve"] = serve
    echo = res["echo"]["requests_per_s"]
    # The stricter ceiling: the better of torch's default threads and serve's thread count (on a
    # shared 2-core machine, 2 OpenMP threads can be many times slower than 1).
    raw = max(res["raw"]["rows_per_s"], res["raw"]["rows_per_s_serve_threads"])
    limit = 1 / (1 / echo + 1 / raw)
    top = max(args.clients)
    res["limit_req_per_s"] = limit
    res["ratios"] = {
        f"serve_json@{top} / limit": serve[f"json@{top}"]["requests_per_s"] / limit,
        f"serve_binary@{top} / limit": serve[f"binary@{top}"]["requests_per_s"] / limit,
        f"serve_json@{top} / echo": serve[f"json@{top}"]["requests_per_s"] / echo,
        "naive@64 / limit": res["naive"]["requests_per_s"] / limit,
    }
    if "json@1" in serve:
        res["ratios"]["lone p99 - batch-1 forward (ms)"] = (
            serve["json@1"]["p99_ms"] - res["raw"]["batch1_ms"]
        )
    return res


def _say(args: argparse.Namespace, text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Print a table per model."""
    for res in results:
        raw = res["raw"]
        print(
            f"\n== {res['model']} {MODELS[res['model']]} ({args.client} client, {args.duration:g} s per point)"
        )
        print(
            f"raw forward @ batch {MAX_BATCH}: {raw['rows_per_s']:,.0f} rows/s with {raw['threads']:.0f} torch "
            f"threads ({raw['rows_per_s_serve_threads']:,.0f} with serve's thread count); "
            f"batch-1 forward: {raw['batch1_ms']:.2f} ms"
        )
        print(
            f"limit = 1/(1/echo + 1/raw) = {res['limit_req_per_s']:,.0f} req/s (raw: the better of the two)"
        )
        print(
            f"{'server':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'/limit':>9}{'cpu ms/req':>12}{'batch':>7}  errors"
        )
        rows = [("echo (no model) @64", res["echo"]), ("naive unbatched @64", res["naive"])]
        rows += [(f"shelf serve {k}", v) for k, v in res["serve"].items()]
        for label, r in rows:
            print(
                f"{label:<22}{r['requests_per_s']:>10,.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
                f"{r['requests_per_s'] / res['limit_req_per_s']:>9.2f}"
                f"{r.get('server_cpu_ms_per_request', float('nan')):>12.3f}"
                f"{r.get('batch_size_mean', float('nan')):>7.1f}  {r['errors'] or ''}"
            )
        for k, v in res["ratios"].items():
            print(f"  {k}: {v:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="small,big")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--client", choices=["httpx", "wrk"], default="httpx")
    parser.add_argument("--output", choices=["table", "json"], default="table")
    parser.add_argument("--_baseline", dest="baseline", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        run_baseline(args.baseline, args.models, args.port)
        return
    args.clients = [int(c) for c in args.clients.split(",")]
    if args.client == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed")
    store = tempfile.mkdtemp(prefix="serve-bench-")
    try:
        results = [bench_model(m, args, store) for m in args.models.split(",")]
    finally:
        shutil.rmtree(store, ignore_errors=True)
    if args.output == "json":
        print(
            json.dumps(
                {"client": args.client, "duration_s": args.duration, "results": results}, indent=2
            )
        )
    else:
        render(results, args)


if __name__ == "__main__":
    main()
