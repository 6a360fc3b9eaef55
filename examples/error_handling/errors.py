"""Error handling in Python: a missing model, a bad name and a wrong input shape.

Every error torchshelf raises on purpose is a `torchshelf.ShelfError` subclass with a one-line
message that says what to do, so callers catch exactly what they can handle.

Run: TORCHSHELF_HOME=/tmp/shelf python examples/error_handling/errors.py
"""

from __future__ import annotations

import torch

import torchshelf


def main() -> None:
    try:
        torchshelf.load_model("no_such_model:latest")
    except torchshelf.NotFound as exc:
        print(f"not found: {exc}")

    try:
        torchshelf.get("Bad Name!")
    except torchshelf.InvalidName as exc:
        print(f"invalid name: {exc}")

    tag = torchshelf.save_model("robust_model", torch.nn.Linear(8, 2))
    model = torchshelf.load_model(tag)
    x = torch.randn(3, 5)  # the model takes 8 features
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError as exc:  # shape errors come from torch itself
        print(f"wrong input shape {list(x.shape)}: {str(exc).splitlines()[0]}")

    try:
        torchshelf.load_model(tag, device_id="cuda:7")
    except torchshelf.DeviceError as exc:
        print(f"device: {exc}")
    except torchshelf.ShelfError as exc:  # the base class catches everything else we raise
        print(f"other: {exc}")
    else:
        print("device: cuda:7 exists here")


if __name__ == "__main__":
    main()
