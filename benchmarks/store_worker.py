"""One store operation timed in its own process; prints one JSON line. Used by compare_store.py.

    python store_worker.py METHOD ACTION WORKDIR [--size-mib N] [--repeats R]

METHOD: torchshelf | safetensors | torch | bentoml (run bentoml with the BentoML venv's python).
ACTION: save (R saves, durable where the method is) | load (R warm loads, each followed by one
read of every weight) | first (one load + read in this fresh process: first touch).
The model is the same seeded float32 MLP in every process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

WIDTH = 4096


def build_model(size_mib: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = max(1, round(size_mib * (1 << 20) / (WIDTH * WIDTH * 4)))
    return torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers)]).eval()


def read_all(module_or_tensors: Any) -> float:
    """One read of every weight: a reduction over each tensor touches every page."""
    tensors = (
        module_or_tensors.values()
        if isinstance(module_or_tensors, dict)
        else module_or_tensors.state_dict().values()
    )
    return sum(float(t.sum()) for t in tensors)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Method:
    def __init__(self, work: Path) -> None:
        self.work = work

    def save(self, model: torch.nn.Module, i: int) -> None: ...
    def load(self) -> Any: ...


class TorchShelf(Method):
    def __init__(self, work: Path) -> None:
        super().__init__(work)
        import torchshelf

        self.ts = torchshelf
        self.store = torchshelf.Store(work / "torchshelf")

    def save(self, model: torch.nn.Module, i: int) -> None:
        self.ts.save_model("mlp", model, version=f"v{i}-{os.getpid()}", store=self.store)

    def load(self) -> Any:
        return self.ts.load_model("mlp:latest", store=self.store)


def _new_path(work: Path, stem: str, suffix: str) -> Path:
    """A file name no earlier save used: like a store, every save writes a new file.

    Overwriting one path lets the kernel reuse the old file's page-cache pages, which made raw
    saves look 2-5x faster than saves into fresh files (measured: 0.47 s vs 2.75 s for 1 GiB).
    """
    n = len(list(work.glob(f"{stem}-*{suffix}")))
    return work / f"{stem}-{n:04d}-{os.getpid()}{suffix}"


def _newest(work: Path, pattern: str) -> Path:
    return max(work.glob(pattern), key=lambda p: p.stat().st_mtime_ns)


class Safetensors(Method):
    def save(self, model: torch.nn.Module, i: int) -> None:
        from safetensors.torch import save_file

        path = _new_path(self.work, "raw", ".safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        fsync(path)

    def load(self) -> Any:
        from safetensors.torch import load_file

        return load_file(str(_newest(self.work, "raw-*.safetensors")))


class TorchSave(Method):
    def save(self, model: torch.nn.Module, i: int) -> None:
        path = _new_path(self.work, "model", ".pt")
        torch.save(model, path)
        fsync(path)

    def load(self) -> Any:
        return torch.load(_newest(self.work, "model-*.pt"), weights_only=False)


class BentoML(Method):
    def __init__(self, work: Path) -> None:
        super().__init__(work)
        os.environ["BENTOML_HOME"] = str(work / "bentoml")
        import bentoml

        self.bentoml = bentoml

    def save(self, model: torch.nn.Module, i: int) -> None:
        self.bentoml.pytorch.save_model("mlp", model)

    def load(self) -> Any:
        # BentoML 1.4 stores a pickled whole module; torch >= 2.6 refuses it unless told
        # weights_only=False (its default load raises).
        return self.bentoml.pytorch.load_model("mlp:latest", weights_only=False)


METHODS = {
    "torchshelf": TorchShelf,
    "safetensors": Safetensors,
    "torch": TorchSave,
    "bentoml": BentoML,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=sorted(METHODS))
    parser.add_argument("action", choices=["save", "load", "first"])
    parser.add_argument("work", type=Path)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    method = METHODS[args.method](args.work)
    times: list[float] = []
    if args.action == "save":
        model = build_model(args.size_mib)
        read_all(model)  # warm the model's own pages
        # One untimed save of a tiny model first: the method's lazy imports and first-call set-up
        # are start-up costs, not what a save of 1 GiB costs.
        method.save(torch.nn.Linear(4, 4), -1)
        for i in range(args.repeats):
            # Start every save with no dirty pages left by the previous one (or by another
            # method): otherwise write-back throttling from earlier saves lands in this one's time.
            os.sync()
            t0 = time.perf_counter()
            method.save(model, i)
            times.append(time.perf_counter() - t0)
    else:
        for _ in range(1 if args.action == "first" else args.repeats):
            t0 = time.perf_counter()
            loaded = method.load()
            read_all(loaded)
            times.append(time.perf_counter() - t0)
            del loaded
    print(
        json.dumps(
            {
                "method": args.method,
                "action": args.action,
                "times": times,
                "median": statistics.median(times),
            }
        )
    )


if __name__ == "__main__":
    main()
