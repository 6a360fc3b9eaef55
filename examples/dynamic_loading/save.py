"""Put two models the dynamic service can pick from in the store: `sentiment` and `topic`."""

from __future__ import annotations

import torch

import torchshelf


def main() -> None:
    torch.manual_seed(0)
    print(torchshelf.save_model("sentiment", torch.nn.Linear(8, 2)))
    print(torchshelf.save_model("topic", torch.nn.Linear(8, 5)))


if __name__ == "__main__":
    main()
