"""Open Inference Protocol (V2) vs the native routes of one `shelf serve`, in the same run.

One server, one model (benchmarks/run.py's "small" or "big" MLP), four transports of the same
random row: native JSON, native safetensors, V2 JSON and V2 binary (the binary tensor data
extension). Each round measures every transport once with `shelf bench --url`, in rotated order,
so the neighbours' load hits them alike; the report gives each transport's median req/s over the
rounds and its ratio to native JSON.

    python benchmarks/v2_bench.py [--model small|big] [--clients 1,8,64] [--rounds 3] [--duration 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TRANSPORTS = ("native-json", "native-st", "v2-json", "v2-binary")


def write_bodies(model: str, work: Path) -> dict[str, tuple[str, Path, list[str]]]:
    """transport -> (route, body file, extra headers); the same float32 row in each."""
    import torch
    from run import MODELS
    from safetensors.torch import save_file

    torch.manual_seed(1)
    x = torch.randn(1, MODELS[model][0])
    name = f"compare-{model}"
    (work / "n.json").write_text(json.dumps({"inputs": x.tolist()}))
    save_file({"inputs": x}, str(work / "n.safetensors"))
    tensor = {"name": "inputs", "shape": list(x.shape), "datatype": "FP32"}
    (work / "v.json").write_text(json.dumps({"inputs": [{**tensor, "data": x.flatten().tolist()}]}))
    raw = x.numpy().tobytes()
    head = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "outputs", "parameters": {"binary_data": True}}],
        }
    ).encode()
    # `shelf bench` sends a .safetensors body as-is (a .json one is parsed); V2 ignores the type
    (work / "v.safetensors").write_bytes(head + raw)
    return {
        "native-json": ("/predict", work / "n.json", []),
        "native-st": ("/predict", work / "n.safetensors", ["Accept: application/vnd.safetensors"]),
        "v2-json": (f"/v2/models/{name}/infer", work / "v.json", []),
        "v2-binary": (
            f"/v2/models/{name}/infer",
            work / "v.safetensors",
            [f"Inference-Header-Content-Length: {len(head)}"],
        ),
    }


def serve(model: str, work: Path) -> tuple[subprocess.Popen[str], str]:
    from run import save_serving_model

    tag = save_serving_model(model, work / "store")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TORCHSHELF_HOME": str(work / "store")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchshelf", "serve", tag, "--port", str(port)],
        env=env,
        text=True,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("shelf serve did not become ready")


def bench(url: str, clients: int, body: Path, headers: list[str], duration: float) -> float:
    cmd = [sys.executable, "-m", "torchshelf", "bench", "--url", url, "--concurrency", str(clients),
           "--duration", str(duration), "--max-windows", "3", "--warmup-duration", "1",
           "--body", str(body), "--output", "json"]  # fmt: skip
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)["results"][0]
    if result.get("errors"):
        raise RuntimeError(f"{url}: errors {result['errors']}")
    return float(result["requests_per_s"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=("small", "big"))
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    opts = parser.parse_args(argv)
    levels = [int(c) for c in opts.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="torchshelf-v2-bench-"))
    bodies = write_bodies(opts.model, work)
    proc, url = serve(opts.model, work)
    rates: dict[tuple[str, int], list[float]] = {}
    try:
        for r in range(opts.rounds):
            order = TRANSPORTS[r % 4 :] + TRANSPORTS[: r % 4]
            for clients in levels:
                for t in order:
                    route, body, headers = bodies[t]
                    rate = bench(url + route, clients, body, headers, opts.duration)
                    rates.setdefault((t, clients), []).append(rate)
    finally:
        proc.terminate()
        proc.wait(30)
    load = os.getloadavg()
    print(f"model {opts.model}, {opts.rounds} rounds, load average {load[0]:.1f} {load[1]:.1f}")
    print("| transport | clients | median req/s | / native JSON |")
    print("|---|---|---|---|")
    report: dict[str, Any] = {}
    for clients in levels:
        base = statistics.median(rates[("native-json", clients)])
        for t in TRANSPORTS:
            med = statistics.median(rates[(t, clients)])
            report[f"{t}@{clients}"] = {"req_s": med, "ratio": med / base}
            print(f"| {t} | {clients} | {med:,.0f} | {med / base:.2f} |")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
