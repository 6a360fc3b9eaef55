"""Put the multi-model service's three models in the store: a classifier, a detector (four box
coordinates and a score per anchor) and a generator (noise -> a 3x8x8 image)."""

from __future__ import annotations

import torch
from torch import nn

import torchshelf


def main() -> None:
    torch.manual_seed(0)
    classifier = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    detector = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 4 * 5),
        nn.Unflatten(1, (4, 5)),
    )
    generator = nn.Sequential(nn.Linear(16, 3 * 8 * 8), nn.Tanh(), nn.Unflatten(1, (3, 8, 8)))
    for name, model in [
        ("classifier", classifier),
        ("detector", detector),
        ("generator", generator),
    ]:
        print(torchshelf.save_model(name, model, labels={"service": "multi"}))


if __name__ == "__main__":
    main()
