"""Soak `shelf serve`: 200,000+ requests, JSON and binary, 1% malformed; RSS over time.

A small MLP (64 -> 256 -> 256 -> 10) is saved into a scratch store and served by a real
`shelf serve` process on 127.0.0.1. `--workers` client processes each keep one HTTP/1.1
connection (raw sockets: a cheap client, see shared/MEASURING.md) and send their share of the
requests: every 100th is malformed (broken JSON, wrong shape, wrong dtype, truncated safetensors),
the rest alternate JSON and safetensors bodies drawn from a pool of 64 rows. Every answer is
checked: a valid request must get 200 and outputs within 1e-4 of the model run directly on that
row; a malformed one a 4xx with a JSON `{"error"}`. The parent samples the server's VmRSS
twice a second. Prints a JSON summary and writes benchmarks/soak_rss.png.

    python benchmarks/soak.py --requests 200000 --workers 4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
POOL = 64
FEATURES = 64


def build_requests() -> tuple[list[bytes], list[bytes], list[np.ndarray], list[bytes]]:
    """(JSON requests, binary requests, expected outputs, malformed requests), raw HTTP."""
    import torch
    from safetensors.torch import save as st_save

    torch.manual_seed(15)
    rows = torch.randn(POOL, FEATURES)
    model = _model()
    with torch.no_grad():
        expected = [model(rows[i : i + 1]).numpy()[0] for i in range(POOL)]

    def http(body: bytes, ctype: str, accept: str = "application/json") -> bytes:
        head = (
            f"POST /predict HTTP/1.1\r\nHost: soak\r\nContent-Type: {ctype}\r\n"
            f"Accept: {accept}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    js = [
        http(json.dumps({"inputs": rows[i : i + 1].tolist()}).encode(), "application/json")
        for i in range(POOL)
    ]
    st = "application/vnd.safetensors"
    binary = [http(st_save({"inputs": rows[i : i + 1].contiguous()}), st, st) for i in range(POOL)]
    good_st = st_save({"inputs": rows[0:1].contiguous()})
    malformed = [
        http(b'{"inputs": [[1.0, 2.0', "application/json"),
        http(json.dumps({"inputs": [[1.0] * (FEATURES - 1)]}).encode(), "application/json"),
        http(json.dumps({"inputs": [["a"] * FEATURES]}).encode(), "application/json"),
        http(good_st[: len(good_st) // 2], st, st),
    ]
    return js, binary, expected, malformed


def _model() -> Any:
    import torch

    torch.manual_seed(6)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    ).eval()


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    size = int(headers.get("content-length", "0"))
    body = bytearray(rest)
    while len(body) < size:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    buf[:] = body[size:]
    return status, headers, bytes(body[:size])


def decode_outputs(headers: dict[str, str], body: bytes) -> np.ndarray:
    if headers.get("content-type", "").startswith("application/vnd.safetensors"):
        (n,) = struct.unpack("<Q", body[:8])
        meta = json.loads(body[8 : 8 + n])["outputs"]
        start, end = meta["data_offsets"]
        return np.frombuffer(body[8 + n + start : 8 + n + end], dtype=np.float32).reshape(
            meta["shape"]
        )[0]
    return np.asarray(json.loads(body)["outputs"][0], dtype=np.float32)


def client(port: int, share: int, offset: int, data: Any, done: Any, wrong: Any) -> None:
    js, binary, expected, malformed = data
    sock = socket.create_connection(("127.0.0.1", port))
    buf = bytearray()
    for n in range(offset, offset + share):
        bad = n % 100 == 0
        if bad:
            sock.sendall(malformed[(n // 100) % len(malformed)])
        else:
            pool = binary if n % 2 else js
            sock.sendall(pool[n % POOL])
        try:
            status, headers, body = read_response(sock, buf)
        except ConnectionError:
            with wrong.get_lock():
                wrong.value += 1
            sock = socket.create_connection(("127.0.0.1", port))
            buf = bytearray()
            continue
        if bad:
            ok = 400 <= status < 500 and "error" in json.loads(body or b"{}")
        else:
            ok = status == 200 and np.allclose(
                decode_outputs(headers, body), expected[n % POOL], atol=1e-4
            )
        if not ok:
            with wrong.get_lock():
                wrong.value += 1
        if headers.get("connection", "").lower() == "close":
            sock.close()
            sock = socket.create_connection(("127.0.0.1", port))
            buf = bytearray()
        with done.get_lock():
            done.value += 1
    sock.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    import torchshelf

    spec = {"shape": [-1, FEATURES], "dtype": "float32"}
    tag = torchshelf.save_model(
        "soaked",
        _model(),
        store=root,
        signatures={"__call__": {"batchable": True, "batch_dim": 0, "input_spec": spec}},
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchshelf", "serve", str(tag), "--port", str(port)],
        env={**os.environ, "TORCHSHELF_HOME": str(root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, port
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def plot(samples: list[tuple[float, int, int]], warm: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([s[1] for s in samples], [s[2] / 1024 for s in samples], lw=1.2)
    ax.axvline(warm, color="grey", ls="--", lw=0.8, label="end of warm-up")
    ax.set_xlabel("requests answered")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title("shelf serve soak: RSS over time (JSON + binary, 1% malformed)")
    ax.set_ylim(0, max(s[2] for s in samples) / 1024 * 1.15)  # the line, not on the frame
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction counted as warm-up")
    parser.add_argument("--png", type=Path, default=HERE / "soak_rss.png")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data = build_requests()
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        proc, port = start_server(Path(scratch) / "store")
        try:
            summary = soak(proc, port, data, args)
        finally:
            proc.terminate()
            proc.wait(60)
    samples = summary.pop("samples_full")
    plot(samples, summary["warmup_requests"], args.png)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({**summary, "rss_samples": samples}, indent=2) + "\n")


def soak(proc: subprocess.Popen[bytes], port: int, data: Any, args: Any) -> dict[str, Any]:
    done, wrong = mp.Value("q", 0), mp.Value("q", 0)
    share = args.requests // args.workers
    ctx = mp.get_context("fork")
    workers = [
        ctx.Process(target=client, args=(port, share, i * share, data, done, wrong))
        for i in range(args.workers)
    ]
    start_rss = rss_kib(proc.pid)
    started = time.monotonic()
    for w in workers:
        w.start()
    samples: list[tuple[float, int, int]] = []
    while any(w.is_alive() for w in workers):
        samples.append((time.monotonic() - started, done.value, rss_kib(proc.pid)))
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    samples.append((elapsed, done.value, rss_kib(proc.pid)))
    warm = int(args.warmup * share * args.workers)
    after = [s[2] for s in samples if s[1] >= warm]
    warm_rss = after[0]
    return {
        "requests": done.value,
        "malformed_sent": sum(1 for n in range(share * args.workers) if n % 100 == 0),
        "wrong_answers": wrong.value,
        "seconds": round(elapsed, 1),
        "req_per_s": round(done.value / elapsed),
        "rss_start_kib": start_rss,
        "rss_after_warmup_kib": warm_rss,
        "rss_end_kib": after[-1],
        "rss_max_after_warmup_kib": max(after),
        "rss_min_after_warmup_kib": min(after),
        "rss_spread_after_warmup_pct": round(100 * (max(after) - min(after)) / warm_rss, 2),
        "server_alive": proc.poll() is None,
        "warmup_requests": warm,
        "load_average": os.getloadavg(),
        "samples_full": samples,
    }


if __name__ == "__main__":
    main()
