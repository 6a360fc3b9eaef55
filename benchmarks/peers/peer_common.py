"""What every peer server shares: the two benchmark models and the command line.

Why one module: every server (torchshelf, BentoML, LitServe, echo, naive) must serve exactly the
same weights and take the same flags, or the comparison is meaningless. It imports only torch, so
it works inside the peer venvs as well as in our own environment.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

# in_features of each model: the width of one request item (a 1 x D nested list).
INPUT_DIM = {"small": 64, "big": 1024}
OUTPUT_DIM = {"small": 10, "big": 1024}


def build_model(name: str) -> nn.Module:
    """Build the named benchmark MLP deterministically (seed 0), float32, eval mode."""
    torch.manual_seed(0)
    if name == "small":
        model = nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
    elif name == "big":
        model = nn.Sequential(
            nn.Linear(1024, 4096),
            nn.ReLU(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, 1024),
        )
    else:
        raise ValueError(f"unknown model {name!r}; choose small or big")
    return model.float().eval()


def warm_up(model: nn.Module, name: str, batch_sizes: tuple[int, ...] = (1, 32)) -> None:
    """Run a few forwards so first-allocation costs don't land on the first measured requests."""
    with torch.inference_mode():
        for bs in batch_sizes:
            for _ in range(2):
                model(torch.zeros(bs, INPUT_DIM[name]))


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The flags every peer server accepts (batching flags are ignored by unbatched ones)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", choices=sorted(INPUT_DIM), default="small")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--host", default="127.0.0.1", help="kept on loopback for benchmarks")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-latency-ms", type=float, default=10.0)
    return p.parse_args(argv)
