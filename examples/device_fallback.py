"""Loading to a device, with graceful CPU fallback.

Weights go straight onto the device asked for. A device this machine lacks is a
`torchshelf.DeviceError` naming the devices it has, so falling back is one `except` away.

Run: TORCHSHELF_HOME=/tmp/shelf python examples/device_fallback.py [DEVICE]   (default: cuda:0)
"""

from __future__ import annotations

import sys

import torch

import torchshelf


def best_device() -> str:
    """The device to prefer on this machine: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return "cuda:0"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def load_with_fallback(tag: str, device: str) -> torch.nn.Module:
    """Load onto `device`, or onto the CPU (with a note) when this machine does not have it."""
    try:
        return torchshelf.load_model(tag, device_id=device)
    except torchshelf.DeviceError as exc:
        print(f"note: {exc}; falling back to cpu", file=sys.stderr)
        return torchshelf.load_model(tag, device_id="cpu")


def main() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    tag = torchshelf.save_model("model_name", model)

    cpu_model = torchshelf.load_model(tag, device_id="cpu")
    auto_model = torchshelf.load_model(tag, device_id=best_device())
    wanted = sys.argv[1] if len(sys.argv) > 1 else "cuda:0"
    chosen = load_with_fallback(str(tag), wanted)

    device = next(chosen.parameters()).device
    x = torch.randn(2, 16)
    with torch.no_grad():
        out = chosen(x.to(device)).cpu()  # inputs go to the model's device; results come back
        assert torch.allclose(out, cpu_model(x), atol=1e-5)
    print(f"best device here: {best_device()} (model on {next(auto_model.parameters()).device})")
    print(f"asked for {wanted}, running on {device}")


if __name__ == "__main__":
    main()
