"""Basic save and load: store a small model, load it back by `name:latest` and by exact version.

Run: TORCHSHELF_HOME=/tmp/shelf python examples/basic_save_load.py
"""

from __future__ import annotations

import torch

import torchshelf


class SimpleModel(torch.nn.Module):
    """Ten features in, one score out."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def main() -> None:
    torch.manual_seed(0)
    model = SimpleModel()  # ... training code would go here ...

    tag = torchshelf.save_model("simple_model", model)
    print(f"Model saved: {tag}")
    pinned = torchshelf.save_model("simple_model", model, version="v1.2.0")

    latest = torchshelf.load_model("simple_model:latest")  # the newest version, in eval mode
    exact = torchshelf.load_model(f"simple_model:{pinned.version}")
    x = torch.randn(4, 10)
    assert torch.equal(latest(x), model(x)) and torch.equal(exact(x), model(x))

    ref = torchshelf.get("simple_model:latest")  # reads the manifest only: no weights loaded
    print(
        f"{ref.tag} at {ref.path}, saved {ref.creation_time:%Y-%m-%d %H:%M:%S} UTC, "
        f"{ref.info.size} bytes, format {ref.info.format}"
    )
    print("loaded outputs match the original")


if __name__ == "__main__":
    main()
