"""10,000 save/delete cycles on one store: does anything leak? (issue 15, long runs)

Each cycle saves a small model through the public API (`torchshelf.save_model`, the real
staging + fsync + rename path) and deletes it again (`Store.delete`). Every `--sample` cycles it
records the store's disk usage. At the end it runs `gc()` and checks: disk usage back to the
baseline taken after the first cycle's gc, no staging or trash entries left, one lock file per
name and none of them held. Prints a JSON summary (and a table).

    python benchmarks/store_cycles.py --cycles 10000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def disk_usage(root: Path) -> int:
    """Bytes allocated (st_blocks), as `du` counts, so directories count too."""
    total = 0
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(base, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def held_locks(locks: Path) -> list[str]:
    from filelock import FileLock, Timeout

    held = []
    for path in sorted(locks.glob("*.lock")):
        try:
            with FileLock(str(path), timeout=0):
                pass
        except Timeout:
            held.append(path.name)
    return held


def run(cycles: int, sample: int, root: Path) -> dict[str, Any]:
    import torch

    import torchshelf
    from torchshelf.store import Store

    store = Store(root)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))

    def cycle() -> None:
        tag = torchshelf.save_model("cycled", model, store=store, labels={"stage": "dev"})
        store.delete(str(tag))

    cycle()
    store.gc()
    baseline = disk_usage(root)
    samples: list[tuple[int, int]] = [(1, baseline)]
    started = time.perf_counter()
    for i in range(2, cycles + 1):
        cycle()
        if i % sample == 0:
            samples.append((i, disk_usage(root)))
    elapsed = time.perf_counter() - started
    before_gc = disk_usage(root)
    report = store.gc()
    after = disk_usage(root)
    return {
        "cycles": cycles,
        "seconds": round(elapsed, 1),
        "ms_per_cycle": round(1000 * elapsed / max(cycles - 1, 1), 2),
        "baseline_bytes": baseline,
        "max_bytes_during": max(b for _, b in samples),
        "bytes_before_gc": before_gc,
        "bytes_after_gc": after,
        "gc_removed": len(report.removed),
        "gc_bytes_freed": report.bytes_freed,
        "staging_left": sorted(os.listdir(root / ".tmp")) if (root / ".tmp").exists() else [],
        "trash_left": sorted(os.listdir(root / ".trash")) if (root / ".trash").exists() else [],
        "lock_files": sorted(p.name for p in (root / ".locks").glob("*")),
        "locks_held": held_locks(root / ".locks"),
        "versions_left": [m.tag for m in store.list()],
        "samples": samples,
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=500, help="cycles between disk samples")
    parser.add_argument("--store", type=Path, default=None, help="default: a scratch directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="store-cycles-") as scratch:
        result = run(args.cycles, args.sample, args.store or Path(scratch) / "store")
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    short = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(short, indent=2, default=str))
    ok = (
        result["bytes_after_gc"] <= result["baseline_bytes"]
        and not result["staging_left"]
        and not result["trash_left"]
        and not result["locks_held"]
        and not result["versions_left"]
    )
    print("PASS: back to baseline, nothing leaked" if ok else "FAIL: something leaked")


if __name__ == "__main__":
    main()
