"""Store benchmarks: save, load and CLI start-up, as ratios to baselines from the same run.

    python benchmarks/store_bench.py [--size-mib 1024] [--repeats 3] [--versions 1000]

* save: `torchshelf.save_model` (durable: hashed, fsynced, renamed) vs `safetensors.torch.save_file`
  followed by fsync, on the same float32 MLP.
* load: `torchshelf.load_model` + one read of every weight vs the floor, a safetensors mmap load
  + the same read (warm page cache, both).
* CLI: `shelf list` with N versions in the store and `shelf get TAG --output json`, as whole
  processes, vs `python -c pass`.

Prints medians and ratios; absolute times drift on a shared machine, ratios much less.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def mlp(size_mib: int):  # noqa: ANN201 - torch imported lazily
    import torch

    torch.manual_seed(0)
    width = 4096
    layers = max(1, round(size_mib * (1 << 20) / (width * width * 4)))
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]).eval()


def touch_all(tensors) -> float:  # noqa: ANN001
    """One read of every weight (a reduction forces every page in)."""
    total = 0.0
    for t in tensors:
        total += float(t.float().sum()) if t.dtype != t.float().dtype else float(t.sum())
    return total


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bench_save_load(size_mib: int, repeats: int, work: Path) -> dict[str, float]:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    import torchshelf

    model = mlp(size_mib)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    store = torchshelf.Store(work / "store")
    raw_save, shelf_save, raw_load, shelf_load = [], [], [], []
    # Warm-up: the first large allocation and first write on a VM are much slower.
    save_file(state, str(work / "warm.safetensors"))
    (work / "warm.safetensors").unlink()
    tags = []
    for _ in range(repeats):
        path = work / "raw.safetensors"
        t0 = time.perf_counter()
        save_file(state, str(path))
        fsync_path(path)
        raw_save.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        tag = torchshelf.save_model("bench-mlp", model, store=store)
        shelf_save.append(time.perf_counter() - t0)
        tags.append(tag)

        t0 = time.perf_counter()
        with safe_open(str(path), framework="pt") as fh:
            tensors = [fh.get_tensor(k) for k in fh.keys()]  # noqa: SIM118
        touch_all(tensors)
        raw_load.append(time.perf_counter() - t0)
        del tensors

        t0 = time.perf_counter()
        loaded = torchshelf.load_model(tag, store=store)
        touch_all(list(loaded.state_dict().values()))
        shelf_load.append(time.perf_counter() - t0)
        del loaded
        path.unlink()
    with torch.inference_mode():
        pass
    for tag in tags:
        store.delete(tag)
    return {
        "bytes": nbytes,
        "raw_save": statistics.median(raw_save),
        "shelf_save": statistics.median(shelf_save),
        "raw_load": statistics.median(raw_load),
        "shelf_load": statistics.median(shelf_load),
    }


def time_process(cmd: list[str], env: dict[str, str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_cli(versions: int, repeats: int, work: Path) -> dict[str, float]:
    import torch

    import torchshelf

    home = work / "cli-store"
    store = torchshelf.Store(home)
    tiny = torch.nn.Linear(4, 2)
    tag = None
    for i in range(versions):
        tag = torchshelf.save_model(f"model-{i % 10}", tiny, labels={"stage": "dev" if i % 3 else "production"}, store=store)
    env = {**os.environ, "TORCHSHELF_HOME": str(home)}
    shelf = [sys.executable, "-m", "torchshelf"]
    base = time_process([sys.executable, "-c", "pass"], env, repeats)
    listing = time_process([*shelf, "list"], env, repeats)
    listing_json = time_process([*shelf, "list", "--label", "stage=production", "--output", "json"], env, repeats)
    get = time_process([*shelf, "get", str(tag), "--output", "json"], env, repeats)
    importing_torch = time_process([sys.executable, "-c", "import torch"], env, max(3, repeats // 3))
    return {"python": base, "list": listing, "list_json": listing_json, "get": get, "import_torch": importing_torch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--cli-repeats", type=int, default=11)
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-io", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="torchshelf-bench-"))
    try:
        if not args.skip_io:
            r = bench_save_load(args.size_mib, args.repeats, work)
            gib = r["bytes"] / (1 << 30)
            print(f"model: {r['bytes']:,} bytes ({gib:.2f} GiB) float32 MLP, median of {args.repeats}")
            print(f"save  raw safetensors+fsync {r['raw_save']:.3f} s | torchshelf.save_model {r['shelf_save']:.3f} s"
                  f" | ratio {r['shelf_save'] / r['raw_save']:.2f}x (target <= 1.30x)")
            print(f"load  safetensors mmap+read  {r['raw_load']:.3f} s | torchshelf.load_model+read {r['shelf_load']:.3f} s"
                  f" | ratio {r['shelf_load'] / r['raw_load']:.2f}x (target <= 1.15x)")
        if not args.skip_cli:
            c = bench_cli(args.versions, args.cli_repeats, work)
            print(f"cli   ({args.versions} versions, median of {args.cli_repeats} processes)")
            print(f"      python -c pass         {c['python'] * 1000:7.1f} ms")
            print(f"      shelf list             {c['list'] * 1000:7.1f} ms  ({c['list'] / c['python']:.1f}x python)")
            print(f"      shelf list -l .. -o json {c['list_json'] * 1000:5.1f} ms")
            print(f"      shelf get TAG -o json  {c['get'] * 1000:7.1f} ms")
            print(f"      python -c 'import torch' {c['import_torch'] * 1000:5.1f} ms (for scale)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
