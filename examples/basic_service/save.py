"""Put the basic service's model in the store: `classifier`, with its input normalisation
(tensors, stored without pickle) and class names (JSON) as custom objects."""

from __future__ import annotations

import torch

import torchshelf

CLASS_NAMES = ["negative", "neutral", "positive"]


def main() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    transform = {
        "mean": torch.tensor([0.5, 1.0, 1.5, 2.0]),
        "std": torch.tensor([1.0, 2.0, 3.0, 4.0]),
    }
    tag = torchshelf.save_model(
        "classifier", model, custom_objects={"transform": transform, "class_names": CLASS_NAMES}
    )
    print(tag)


if __name__ == "__main__":
    main()
