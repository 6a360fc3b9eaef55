"""Script a model with TorchScript and store it (as `model.ts`, which loads without pickle and
without the Python class)."""

from __future__ import annotations

import torch

import torchshelf


class Scaler(torch.nn.Module):
    """Linear layer with a clamp: control flow that TorchScript keeps."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if bool(y.abs().max() > 10):
            y = y.clamp(-10, 10)
        return y


def main() -> None:
    torch.manual_seed(0)
    scripted_model = torch.jit.script(Scaler().eval())
    tag = torchshelf.save_model("scripted_model", scripted_model)
    assert torchshelf.get(tag).info.format == "torchscript"
    print(tag)


if __name__ == "__main__":
    main()
