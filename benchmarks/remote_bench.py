"""Push/pull throughput of a large model to a local S3 server, next to raw s3fs put/get.

Starts moto's S3 server in its own process on 127.0.0.1 (so client and server do not share a
GIL), writes one version holding a single SIZE-byte weights file into a scratch store, then
alternates, ROUNDS times:

    raw put / push   s3fs.put_file of the file (s3fs defaults) / `Remote.push` of the version
    raw get / pull   s3fs.get_file to a scratch file / `Remote.pull` (sha256 of every byte while
                     writing, fsync, rename)

(the pair order alternates between rounds) and prints the median MiB/s (and every round) as a table, or JSON with --json. What the raw
numbers leave out and torchshelf does: push HEADs each object first and sends its sha256 as
metadata; pull hashes and fsyncs. Nothing leaves the loopback interface.

    python benchmarks/remote_bench.py --size-mib 1024 --rounds 3
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
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from moto.server import main; main()",
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def make_version(store: Any, size: int) -> Any:
    """One version whose only file is SIZE random bytes, written and hashed like a save."""
    from torchshelf.manifest import HashingWriter, Manifest
    from torchshelf.store import now_iso

    staging = store.stage()
    writer = HashingWriter(staging / "weights.safetensors")
    block = os.urandom(64 * MIB)
    for start in range(0, size, len(block)):
        writer.write(memoryview(block)[: min(len(block), size - start)])
    record = writer.close()
    manifest = Manifest(
        name="big",
        version="1",
        creation_time=now_iso(),
        format="safetensors",
        torch_version="0",
        module_class=None,
        files={"weights.safetensors": record},
    )
    return store.commit(staging, manifest, auto_version=False)


def timed_pair(times: dict[str, list[float]], i: int, *ops: tuple[str, Callable[[], Any]]) -> None:
    """Time both operations, in reversed order on odd rounds."""
    for label, op in ops if i % 2 == 0 else ops[::-1]:
        t = time.perf_counter()
        op()
        times[label].append(time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    import s3fs

    from torchshelf.remote import Remote
    from torchshelf.store import Store

    size = args.size_mib * MIB
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = start_moto(port)
    try:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
        fs.mkdir("bench")
        with tempfile.TemporaryDirectory(prefix="remote-bench-") as tmp:
            tmpdir = Path(tmp)
            src = Store(tmpdir / "src")
            make_version(src, size)
            path = src.version_dir("big", "1") / "weights.safetensors"
            times: dict[str, list[float]] = {"raw put": [], "push": [], "raw get": [], "pull": []}
            for i in range(args.rounds):
                prefix = f"bench/r{i}"
                remote = Remote(f"s3://{prefix}", endpoint_url=endpoint)

                out = tmpdir / f"raw-{i}"
                dst = Store(tmpdir / f"dst-{i}")
                raw = f"{prefix}/raw/weights.safetensors"
                # Alternate which goes first: the first transfer of a round warms the server.
                timed_pair(
                    times,
                    i,
                    ("raw put", partial(fs.put_file, str(path), raw)),
                    ("push", partial(remote.push, src, "big:1")),
                )
                timed_pair(
                    times,
                    i,
                    ("raw get", partial(fs.get_file, raw, str(out))),
                    ("pull", partial(remote.pull, dst, "big:1")),
                )
                out.unlink()
                dst.delete("big")
                fs.rm(prefix, recursive=True)  # moto keeps objects in memory
    finally:
        server.terminate()
        server.wait()

    import fsspec
    import moto

    rates = {k: [size / MIB / s for s in v] for k, v in times.items()}
    result = {
        "size_bytes": size,
        "rounds": args.rounds,
        "server": f"moto {moto.__version__} server on 127.0.0.1 (own process)",
        "s3fs": s3fs.__version__,
        "fsspec": fsspec.__version__,
        "cpus": os.cpu_count(),
        "results": {
            k: {
                "median_mib_per_s": round(statistics.median(r), 1),
                "rounds_mib_per_s": [round(x, 1) for x in r],
                "median_seconds": round(statistics.median(times[k]), 2),
            }
            for k, r in rates.items()
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{args.size_mib} MiB, {args.rounds} rounds, {result['server']}, s3fs {result['s3fs']}, {result['cpus']} CPUs"
    )
    print(f"{'operation':<10}{'median MiB/s':>14}{'median s':>10}   rounds (MiB/s)")
    for k, r in result["results"].items():
        print(
            f"{k:<10}{r['median_mib_per_s']:>14}{r['median_seconds']:>10}   {r['rounds_mib_per_s']}"
        )


if __name__ == "__main__":
    main()
