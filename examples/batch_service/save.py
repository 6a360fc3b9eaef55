"""Put the batch service's model in the store as `batch_model` (16 features -> 4 classes)."""

from __future__ import annotations

import torch

import torchshelf


def main() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    print(torchshelf.save_model("batch_model", model, signatures={"__call__": {"batchable": True}}))


if __name__ == "__main__":
    main()
